"""The CLI end to end, and every bad input giving one clear error and exit status 2."""

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import yaml

from raykd.cli import main
from raykd.data.volumes import write_volume
from tests.conftest import phantom_volume, tiny_overrides


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """A teacher trained through the CLI from a YAML config file."""
    out = tmp_path_factory.mktemp("cli_teacher")
    cfg = {}
    for item in tiny_overrides(tiny_data, out, "teacher"):
        key, value = item.split("=", 1)
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = yaml.safe_load(value)
    path = out / "teacher.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    return out


def test_train_writes_checkpoints_and_eval(trained):
    assert (trained / "best.pt").is_file()
    report = json.loads((trained / "eval_val.json").read_text())
    assert report["volumes"][0]["volume"] == "vol3"
    assert len(report["volumes"][0]["per_slice"]["ssim"]) == 6
    assert set(report["summary"]) == {"psnr", "ssim", "nmse", "hfn", "hfen", "vif"}


def test_evaluate_and_reconstruct(trained, tiny_data, tmp_path, capsys):
    out = tmp_path / "m.json"
    rc = main(
        [
            "evaluate",
            str(trained / "best.pt"),
            "--data",
            str(tiny_data),
            "--out",
            str(out),
            "--zero-filled",
        ]
    )
    assert rc == 0
    report = json.loads(out.read_text())
    assert len(report["volumes"]) == 4 and "zero_filled" in report
    recon = tmp_path / "r.h5"
    assert (
        main(
            [
                "reconstruct",
                str(trained / "best.pt"),
                "--input",
                str(tiny_data / "vol3.h5"),
                "--out",
                str(recon),
            ]
        )
        == 0
    )
    with h5py.File(recon) as f:
        assert f["image"].shape == (6, 32, 32)
        assert {"zero_filled", "target"} <= set(f)


def _fails(args, capsys, *needles):
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def test_bad_inputs_give_clear_errors(trained, tiny_data, tmp_path, capsys):
    ckpt = str(trained / "best.pt")
    out = tmp_path / "keep.json"
    # A previous metrics file: its kind may be overwritten, so each case below fails for the
    # reason it tests, not because of the output guard.
    out.write_text('{"summary": {}, "volumes": [], "old": 1}')
    # Missing file.
    _fails(
        ["evaluate", ckpt, "--data", str(tmp_path / "none.h5"), "--out", str(out)],
        capsys,
        "none.h5",
        "not found",
    )
    # Corrupt / truncated h5.
    bad = tmp_path / "trunc.h5"
    data = (tiny_data / "vol0.h5").read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    _fails(
        ["evaluate", ckpt, "--data", str(bad), "--out", str(out)],
        capsys,
        "trunc.h5",
        "cannot be opened as HDF5",
    )
    # Missing key.
    nokey = tmp_path / "nokey.h5"
    with h5py.File(nokey, "w") as f:
        f["kspace"] = np.zeros((2, 32, 32))
    _fails(
        ["evaluate", ckpt, "--data", str(nokey), "--out", str(out)],
        capsys,
        "missing key 'image'",
        "kspace",
    )
    # Wrong mask shape, and a mask of all zeros.
    np.save(tmp_path / "m64.npy", np.ones((64, 64)))
    _fails(
        [
            "evaluate",
            ckpt,
            "--data",
            str(tiny_data),
            "--out",
            str(out),
            "--mask",
            str(tmp_path / "m64.npy"),
        ],
        capsys,
        "m64.npy",
        "(64, 64)",
        "(32, 32)",
    )
    np.save(tmp_path / "m0.npy", np.zeros((32, 32)))
    _fails(
        [
            "evaluate",
            ckpt,
            "--data",
            str(tiny_data),
            "--out",
            str(out),
            "--mask",
            str(tmp_path / "m0.npy"),
        ],
        capsys,
        "m0.npy",
        "all zeros",
    )
    # NaN / Inf in data.
    vol = phantom_volume(3, 32, seed=9)
    vol[1, 4, 4] = np.nan
    nan_path = tmp_path / "nan.h5"
    with h5py.File(nan_path, "w") as f:
        f["image"] = vol
    _fails(
        ["evaluate", ckpt, "--data", str(nan_path), "--out", str(out)],
        capsys,
        "nan.h5",
        "slice 1",
        "contains NaN",
    )
    # Checkpoint from another architecture.
    _fails(
        [
            "train",
            "--set",
            "kind=kd",
            "--set",
            f"teacher_checkpoint={ckpt}",
            "--set",
            f"data.source={tiny_data}",
            "--set",
            "data.size=[32,32]",
            "--set",
            "data.mask.num_low=4",
            "--set",
            "teacher.depth=4",
            "--set",
            f"output_dir={tmp_path / 'kd'}",
        ],
        capsys,
        "teacher checkpoint",
        "depth",
    )
    # Corrupt checkpoint.
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    _fails(
        ["evaluate", str(tmp_path / "junk.pt"), "--data", str(tiny_data), "--out", str(out)],
        capsys,
        "junk.pt",
        "cannot be read",
    )
    # Unknown KD method, depth < 2.
    _fails(
        [
            "train",
            "--set",
            "kind=kd",
            "--set",
            "kd.method=magic",
            "--set",
            f"teacher_checkpoint={ckpt}",
        ],
        capsys,
        "kd.method 'magic' is unknown",
    )
    _fails(
        ["train", "--set", "kind=student", "--set", "student.depth=1"],
        capsys,
        "student.depth",
        "greater than or equal to 2",
    )
    # Nothing already written was touched by any of the failures.
    assert json.loads(out.read_text()) == {"summary": {}, "volumes": [], "old": 1}


def test_nan_mid_training_leaves_checkpoints_intact(trained, tiny_data, tmp_path, capsys):
    """A run that hits bad data fails clearly and keeps its earlier checkpoint readable."""
    root = tmp_path / "data"
    root.mkdir()
    for name in ("vol0", "vol1", "vol3"):
        (root / f"{name}.h5").write_bytes((tiny_data / f"{name}.h5").read_bytes())
    vol = phantom_volume(6, 32, seed=2)
    vol[5] = np.inf
    with h5py.File(root / "vol2.h5", "w") as f:
        f["image"] = vol
    out = tmp_path / "run"
    first = main(
        [
            "train",
            "--set",
            "kind=student",
            "--set",
            f"data.source={root}",
            "--set",
            "data.size=[32,32]",
            "--set",
            "data.train=[vol0,vol1]",
            "--set",
            "data.val=[vol3]",
            "--set",
            "student.channels=4",
            "--set",
            "optim.epochs=1",
            "--set",
            "progress=false",
            "--set",
            f"output_dir={out}",
            "--set",
            "data.mask.num_low=4",
        ]
    )
    assert first == 0
    before = (out / "last.pt").read_bytes()
    _fails(
        [
            "train",
            "--set",
            "kind=student",
            "--set",
            f"data.source={root}",
            "--set",
            "data.size=[32,32]",
            "--set",
            "data.train=[vol0,vol1,vol2]",
            "--set",
            "data.val=[vol3]",
            "--set",
            "student.channels=4",
            "--set",
            "optim.epochs=2",
            "--set",
            "progress=false",
            "--set",
            f"output_dir={out}",
            "--set",
            "data.mask.num_low=4",
            "--restart",  # another config in the same dir: the old run is moved aside first
        ],
        capsys,
        "vol2.h5",
        "slice 5",
        "contains Inf",
    )
    (kept,) = tmp_path.glob("run.replaced-*")
    assert (kept / "last.pt").read_bytes() == before


def test_write_volume_refuses_nan(tmp_path):
    from raykd.errors import DataError

    with pytest.raises(DataError, match="NaN or Inf"):
        write_volume(tmp_path / "x.h5", np.full((1, 4, 4), np.nan))
    assert not (tmp_path / "x.h5").exists()


HEAVY = ("ray", "mlflow", "torch", "pandas", "matplotlib", "optuna")


def _subcommands() -> dict[str, str]:
    """The registered subcommands and their one-line help, from the parser itself."""
    import argparse

    from raykd.cli import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return {choice.dest: choice.help for choice in sub._choices_actions}


def test_help_lists_every_subcommand_on_one_line():
    """`python -m raykd.cli --help` (the console script's module) shows each subcommand once, with
    its non-empty help on the same line, and nothing that is not registered."""
    registered = _subcommands()
    assert {"prepare", "train", "grid", "search", "compare", "export"} <= set(registered)
    proc = subprocess.run(
        [sys.executable, "-m", "raykd.cli", "--help"], capture_output=True, text=True, check=True
    )
    lines = proc.stdout.splitlines()
    start = lines.index("  COMMAND") + 1
    listed = {}
    for line in lines[start:]:
        if not line.startswith("    "):
            break
        name, _, help_text = line.strip().partition(" ")
        listed[name] = help_text.strip()
    assert listed == registered, (listed, registered)
    assert all(listed.values()), listed


def test_help_imports_no_heavy_layer():
    """Building the parser (every `raykd ...` start, `--help` included) imports neither Ray,
    MLflow nor torch: the subcommands import what they run."""
    code = (
        "import sys, json\n"
        "from raykd.cli import build_parser\n"
        "build_parser().format_help()\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout) == []
    proc = subprocess.run(
        [sys.executable, "-m", "raykd.cli", "grid", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "--preset" in proc.stdout, proc.stderr


def test_job_scripts_are_thin_wrappers_of_the_cli():
    """Each job script calls a main of raykd.cli with its own name as the error prefix."""
    from pathlib import Path

    jobs = Path(__file__).resolve().parents[1] / "jobs"
    expected = {
        "full_grid.py": "raykd.cli.grid import grid_main",
        "search_kd_weights.py": "raykd.cli.grid import search_main",
        "compare_runs.py": "raykd.cli.report import compare_main",
    }
    for name, entry in expected.items():
        text = (jobs / name).read_text()
        assert entry in text and "argparse" not in text, name
        proc = subprocess.run(
            [sys.executable, str(jobs / name), "--no-such-flag"], capture_output=True, text=True
        )
        assert proc.returncode == 2
        prog = name.removesuffix(".py") if name == "compare_runs.py" else name
        assert f"{prog}: error: unrecognized arguments: --no-such-flag" in proc.stderr
