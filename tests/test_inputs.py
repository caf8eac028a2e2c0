"""No input loses data or lies (issue 15): output guards, run identity on resume, whole-volume
data checks, masks that sample everything or nothing, strict metrics JSON, disk full.

Real files, real h5, real torch; the grid/search pre-flight is in test_preflight.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from raykd.cli import main
from raykd.data.dataset import SliceDataset
from raykd.data.masks import CartesianMask, FixedMask
from raykd.errors import ConfigError, DataError
from raykd.strict_json import json_safe
from raykd.train.evaluate import write_json
from tests.conftest import tiny_overrides


def _train_args(tiny_data: Path, out: Path, **extra: str) -> list[str]:
    args = ["train"]
    for item in tiny_overrides(tiny_data, out, "teacher", **{"optim.epochs": "1", **extra}):
        args += ["--set", item]
    return args


@pytest.fixture(scope="module")
def ckpt(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("inputs_teacher")
    assert main(_train_args(tiny_data, out)) == 0
    return out / "best.pt"


def _err(capsys, argv: list[str]) -> str:
    capsys.readouterr()  # drop what earlier, successful commands printed
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and "raykd: error: " in err, err
    # After progress lines (if any): one line, or the config format (a header and one
    # '  - key: problem' line per problem).
    lines = err[err.index("raykd: error: ") :].strip().splitlines()
    assert all(ln.startswith("  - ") for ln in lines[1:]), err
    return err


# ---- outputs never clobber inputs --------------------------------------------------------
def test_outputs_never_overwrite_inputs(ckpt, tiny_data, tmp_path, capsys):
    vol = tmp_path / "v.h5"
    vol.write_bytes((tiny_data / "vol0.h5").read_bytes())
    before = vol.read_bytes()
    link = tmp_path / "link.h5"
    link.symlink_to(vol)
    cases = [
        (["reconstruct", str(ckpt), "--input", str(vol), "--out", str(vol)], "--input"),
        (["reconstruct", str(ckpt), "--input", str(vol), "--out", str(link)], "--input"),
        (["reconstruct", str(ckpt), "--input", str(link), "--out", str(vol), "--force"], "input"),
        (["evaluate", str(ckpt), "--data", str(vol), "--out", str(vol)], "--data"),
        (["evaluate", str(ckpt), "--data", str(tmp_path), "--out", str(vol)], "--data"),
        (["evaluate", str(ckpt), "--data", str(vol), "--out", str(ckpt), "--force"], "checkpoint"),
        (["export", str(ckpt), "--out", str(ckpt), "--force"], "checkpoint"),
        (["prepare", "fastmri", str(vol), str(vol), "--force"], "SRC"),
    ]
    ck_before = ckpt.read_bytes()
    for argv, name in cases:
        err = _err(capsys, argv)
        assert "is the input" in err and name in err, err
    assert vol.read_bytes() == before and ckpt.read_bytes() == ck_before


def test_existing_output_of_another_kind_needs_force(ckpt, tiny_data, tmp_path, capsys):
    other = tmp_path / "notes.json"
    other.write_text('{"mine": true}')
    h5 = tmp_path / "data.h5"
    h5.write_bytes((tiny_data / "vol1.h5").read_bytes())
    base = ["evaluate", str(ckpt), "--data", str(tiny_data / "vol0.h5")]
    err = _err(capsys, [*base, "--out", str(h5)])
    assert "data.h5 already exists" in err and "HDF5" in err and "--force" in err
    err = _err(capsys, ["reconstruct", str(ckpt), "--input", str(tiny_data / "vol0.h5"),
                        "--out", str(h5)])  # fmt: skip
    assert "is not a raykd reconstruction" in err
    _err(capsys, [*base, "--out", str(other)])
    assert json.loads(other.read_text()) == {"mine": True}
    # A previous output of the same command is replaced; --force replaces anything else.
    out = tmp_path / "m.json"
    assert main([*base, "--out", str(out)]) == 0
    assert main([*base, "--out", str(out)]) == 0
    assert main([*base, "--out", str(other), "--force"]) == 0
    assert "summary" in json.loads(other.read_text())
    rec = tmp_path / "r.h5"
    argv = ["reconstruct", str(ckpt), "--input", str(tiny_data / "vol0.h5"), "--out", str(rec)]
    assert main(argv) == 0 and main(argv) == 0
    capsys.readouterr()


# ---- metrics JSON is strict JSON ---------------------------------------------------------
def test_metrics_json_has_null_with_reason_not_nan(ckpt, tiny_data, tmp_path):
    out = tmp_path / "m.json"
    assert (
        main(["evaluate", str(ckpt), "--data", str(tiny_data / "vol0.h5"), "--out", str(out)]) == 0
    )

    def no_constants(name):
        raise AssertionError(f"bare {name} in metrics JSON")

    report = json.loads(out.read_text(), parse_constant=no_constants)
    # 32x32 slices are below VIF's smallest valid size: VIF is undefined, written as null.
    assert report["volumes"][0]["metrics"]["vif"] is None
    assert report["null_reasons"]["volumes[0].metrics.vif"].startswith("undefined")
    assert all(v is None for v in report["volumes"][0]["per_slice"]["vif"])
    assert isinstance(report["summary"]["psnr"][0], float)
    clean, reasons = json_safe({"a": [1.0, float("inf")], "b": np.float32("nan")})
    assert clean == {"a": [1.0, None], "b": None} and set(reasons) == {"a[1]", "b"}
    json.dumps(clean, allow_nan=False)  # proves it: raises on any NaN/Infinity left
    write_json({"x": float("-inf")}, tmp_path / "x.json")
    assert json.loads((tmp_path / "x.json").read_text())["x"] is None


# ---- whole-volume data checks ------------------------------------------------------------
def _write(path: Path, image: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        f["image"] = image
    return path


def test_data_checks_name_the_file_and_cause(tiny_data, tmp_path):
    with h5py.File(tiny_data / "vol0.h5") as f:
        base = f["image"][()]
    mask = CartesianMask(3, num_low=4)

    def refused(image: np.ndarray, name: str, *needles: str, **kw) -> None:
        path = _write(tmp_path / name, image)
        with pytest.raises(DataError) as info:
            SliceDataset(path, kw.pop("size", (32, 32)), mask, **kw)
        msg = str(info.value)
        assert name in msg and "\n" not in msg, msg
        for needle in needles:
            assert needle in msg, msg

    refused(np.zeros_like(base), "zero.h5", "constant", "every value 0")
    refused(np.full_like(base, 7.0), "seven.h5", "constant", "every value 7")
    big = base.astype(np.float64)
    big[2, 3, 3] = 1e300
    refused(big, "big.h5", "slice 2", "1e+300", "overflows float32")
    assert "NaN" not in str(pytest.raises(DataError, SliceDataset, tmp_path / "big.h5",
                                          (32, 32), mask).value)  # fmt: skip
    # Inf in a slice the run never samples (max_slices picks 0 and 5) is still found.
    inf = base.copy()
    inf[3, 1, 1] = np.inf
    refused(inf, "inf.h5", "slice 3", "contains Inf", max_slices=2)
    nan = base.copy()
    nan[4, 0, 0] = np.nan
    refused(nan, "nan.h5", "slice 4", "contains NaN")
    refused(base[:, :20, :24], "small.h5", "20x24", "smaller than the crop size 32x32")


def test_constant_slices_are_skipped_and_never_scored(ckpt, tiny_data, tmp_path, capsys):
    with h5py.File(tiny_data / "vol0.h5") as f:
        image = f["image"][()]
    image[1] = 0
    image[4] = 3.0
    path = _write(tmp_path / "holes.h5", image)
    ds = SliceDataset(path, (32, 32), CartesianMask(3, num_low=4))
    assert ds.volumes[0].slice_ids == (0, 2, 3, 5) and len(ds) == 4
    assert "skipping 2 constant slice(s) [1, 4]" in capsys.readouterr().err
    # max_slices picks among the usable slices only.
    ds2 = SliceDataset(path, (32, 32), CartesianMask(3, num_low=4), max_slices=2)
    assert ds2.volumes[0].slice_ids == (0, 5)
    out = tmp_path / "m.json"
    assert main(["evaluate", str(ckpt), "--data", str(path), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["volumes"][0]["slices"] == [0, 2, 3, 5]
    psnr = report["volumes"][0]["per_slice"]["psnr"]
    assert len(psnr) == 4 and all(isinstance(v, float) and 5 < v < 80 for v in psnr)


def test_masks_that_sample_everything_or_nothing(tmp_path):
    with pytest.raises(DataError, match="all ones.*allow_full"):
        CartesianMask(1.0, num_low=4)((32, 32))
    assert CartesianMask(1.0, num_low=4, allow_full=True)((32, 32)).all()
    np.save(tmp_path / "ones.npy", np.ones((32, 32)))
    with pytest.raises(DataError, match="ones.npy: all ones"):
        FixedMask(tmp_path / "ones.npy")((32, 32))
    assert FixedMask(tmp_path / "ones.npy", allow_full=True)((32, 32)).all()
    np.save(tmp_path / "zeros.npy", np.zeros((32, 32)))
    with pytest.raises(DataError, match="zeros.npy: all zeros"):
        FixedMask(tmp_path / "zeros.npy", allow_full=True)((32, 32))


def test_training_refuses_bad_data_and_full_masks_before_any_epoch(tiny_data, tmp_path, capsys):
    root = tmp_path / "data"
    root.mkdir()
    for name in ("vol0", "vol1", "vol2"):
        (root / f"{name}.h5").write_bytes((tiny_data / f"{name}.h5").read_bytes())
    _write(root / "vol3.h5", np.zeros((4, 32, 32), np.float32))  # all-zero validation volume
    out = tmp_path / "run"
    err = _err(capsys, _train_args(root, out))
    assert "vol3.h5" in err and "constant" in err
    assert not (out / "last.pt").exists()
    err = _err(capsys, _train_args(tiny_data, out, **{"data.mask.acceleration": "1"}))
    assert "all ones" in err and "data.mask.allow_full" in err
    assert not (out / "last.pt").exists()


# ---- the run directory remembers what it trains ------------------------------------------
def test_resume_with_changed_config_is_refused_or_restarted(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_train_args(tiny_data, out)) == 0
    last = (out / "last.pt").read_bytes()
    assert json.loads((out / "identity.json").read_text())["optim.lr"] == 1e-3
    err = _err(capsys, _train_args(tiny_data, out, **{"optim.lr": "0.5", "seed": "7"}))
    assert "optim.lr 0.001 -> 0.5" in err and "seed 42 -> 7" in err and "--restart" in err
    assert (out / "last.pt").read_bytes() == last
    # A field added to the config since the run started counts as its default.
    ident = json.loads((out / "identity.json").read_text())
    del ident["data.mask.allow_full"]
    (out / "identity.json").write_text(json.dumps(ident))
    from raykd.train.config import load_config
    from raykd.train.rundir import check_run_dir

    same = load_config(
        None, [a for a in _train_args(tiny_data, out) if a not in ("train", "--set")]
    )
    check_run_dir(same.to_dict(), out)
    # A run from before identity.json existed is identified by its last.pt's config.
    (out / "identity.json").unlink()
    err = _err(capsys, _train_args(tiny_data, out, **{"data.size": "[24, 24]"}))
    assert "data.size" in err and (out / "last.pt").read_bytes() == last
    # resume: false must not overwrite another configuration's run either.
    err = _err(capsys, _train_args(tiny_data, out, **{"seed": "7", "resume": "false"}))
    assert "seed 42 -> 7" in err and "resume: false would overwrite it" in err
    assert (out / "last.pt").read_bytes() == last
    # Same config, more epochs: resumes (epochs may be extended), history continues.
    assert main(_train_args(tiny_data, out, **{"optim.epochs": "2"})) == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    # --restart: the old run is moved aside, the new one starts from scratch with its config.
    stale = out / ".best.pt.abc123.tmp"
    stale.write_bytes(b"partial")
    assert main([*_train_args(tiny_data, out, **{"optim.lr": "0.0005"}), "--restart"]) == 0
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(moved) == 1 and (moved[0] / "last.pt").is_file()
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["epoch"] == 0 and json.loads(ck["config"])["optim"]["lr"] == 0.0005
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    capsys.readouterr()


def test_stale_temp_files_are_cleaned_and_explicit_resume_checked(tiny_config, tmp_path):
    from raykd.train.loop import Trainer, train_stage

    first = train_stage(tiny_config("student", name="a", **{"optim.epochs": "1"}))
    stale = [first.output_dir / ".best.pt.x1.tmp", first.output_dir / ".last.pt.x2.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    train_stage(tiny_config("student", name="a", **{"optim.epochs": "2"}))
    assert not any(p.exists() for p in stale)
    other = tiny_config("student", name="b", **{"optim.lr": "0.1"})
    with pytest.raises(ConfigError, match="trained with another configuration.*optim.lr"):
        Trainer(other, resume_from=first.last_checkpoint)


def test_config_bounds_are_strict(tiny_data, tmp_path, capsys):
    err = _err(capsys, _train_args(tiny_data, tmp_path / "a", **{"optim.epochs": "true"}))
    assert "optim.epochs" in err and "boolean" in err
    err = _err(capsys, _train_args(tiny_data, tmp_path / "b", **{"teacher.depth": "100000"}))
    assert "teacher.depth" in err and "64" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ---- disk full -----------------------------------------------------------------------------
DISK_FULL_SCRIPT = """
import os, resource, signal, sys
import torch
from raykd.errors import CheckpointError
from raykd.train.checkpoint import save_checkpoint
path = sys.argv[1]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))
try:
    save_checkpoint(path, {"model": {"w": torch.randn(100_000)}, "arch": {"type": "x"}})
except CheckpointError as exc:
    print(exc)
    sys.exit(2)
"""


def _tmpfs(path: Path) -> bool:
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(path)], capture_output=True
    )
    return done.returncode == 0


def test_disk_full_is_one_line_naming_path_and_cause(tiny_data, tmp_path, capsys):
    """A real OS error: a 32 KiB tmpfs where we may mount one (root), else RLIMIT_FSIZE."""
    mnt = tmp_path / "small"
    if _tmpfs(mnt):
        try:  # the whole CLI: one line, exit 2, no traceback, no temp file left
            err = _err(capsys, _train_args(tiny_data, mnt / "run"))
            assert "disk full" in err and str(mnt / "run") in err and "ENOSPC" in err, err
            assert "unexpected pos" not in err
            assert not list((mnt / "run").glob(".*.tmp"))
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
        return
    # No tmpfs (not root): a per-process file size limit is an OS error of the same family.
    target = tmp_path / "best.pt"
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": repo}
    done = subprocess.run(
        [sys.executable, "-c", DISK_FULL_SCRIPT, str(target)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    msg = done.stdout.strip()
    assert "\n" not in msg and str(target) in msg, msg
    assert "file too large" in msg and "unexpected pos" not in msg, msg
    assert not list(target.parent.glob(".best.pt.*.tmp"))  # no temp file left
