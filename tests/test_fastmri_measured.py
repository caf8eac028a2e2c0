"""Measured-k-space mode (``data.kspace: measured``): fastMRI single-coil files trained and
scored on their own k-space, full phase-encode width, fastMRI's masks, metrics on the centre
320x320 crop exactly as ``fastmri.evaluate`` computes them. Files: ``tests/fastmri_files.py``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from raykd.cli import main as raykd_main
from raykd.data.complex_readers import convert_fastmri_complex
from raykd.data.dataset import SliceDataset, check_one_grid
from raykd.data.fastmri_masks import FastMRIMask
from raykd.errors import DataError
from raykd.train.evaluate import evaluate_model
from raykd.train.validation import validate_stage
from tests.conftest import tiny_overrides
from tests.fastmri_files import RECON, knee_like, write_fastmri
from tests.test_fastmri_reference import _fastmri_evaluate

fastmri = pytest.importorskip("fastmri", reason="the fastmri package (pip install --no-deps)")
from fastmri.data import subsample  # noqa: E402
from fastmri.data import transforms as T  # noqa: E402

H, W = 352, 336


def _their_zero_filled(path, acc=4, cf=0.08) -> tuple[np.ndarray, np.ndarray]:
    """fastMRI's (target volume, zero-filled volume) of a file: masked k-space → ifft2c →
    320x320 centre crop → |.|, the target ``reconstruction_esc``, as its evaluation sees them."""
    import h5py

    with h5py.File(path) as f:
        kspace, target = f["kspace"][()], f["reconstruction_esc"][()]
    seed = tuple(map(ord, path.name))
    out = []
    for k in kspace:
        masked, _, _ = T.apply_mask(
            T.to_tensor(k), subsample.RandomMaskFunc([cf], [acc]), seed=seed
        )
        image = T.complex_center_crop(fastmri.ifft2c(masked), (RECON, RECON))
        out.append(fastmri.complex_abs(image).numpy())
    return target.astype(np.float64), np.stack(out).astype(np.float64)


class _ZeroFilled(torch.nn.Module):
    """A stage whose reconstruction is its input (the zero-filled image)."""

    def predict(self, x, y, mask):
        return x


def test_validation_and_evaluation_metrics_are_fastmri_evaluate_on_the_same_volume(tmp_path):
    ev = _fastmri_evaluate()
    (tmp_path / "raw").mkdir()
    src = write_fastmri(tmp_path / "raw" / "file1001.h5", knee_like(3, H, W, 7))
    out = convert_fastmri_complex(src, tmp_path / "file1001.h5", crop=None)
    ds = SliceDataset(
        out, (RECON, RECON), FastMRIMask("random", 4, 0.08), complex=True, kspace="measured"
    )
    gt, zf = _their_zero_filled(src)
    report = evaluate_model(None, ds, progress=False)
    assert report["kspace"] == "measured"
    metrics = report["volumes"][0]["metrics"]
    assert metrics["psnr"] == pytest.approx(float(ev.psnr(gt, zf)), abs=1e-4)
    assert metrics["ssim"] == pytest.approx(float(ev.ssim(gt, zf)[0]), abs=1e-6)
    assert metrics["nmse"] == pytest.approx(float(ev.nmse(gt, zf)), rel=1e-5)
    # The per-epoch validation PSNR is the same number.
    from raykd.data.transforms import undersample

    def prepare(sample):
        zero_filled, y = undersample(sample.target, sample.mask)
        return zero_filled, y, sample.mask, sample.target

    def loader(subset):
        return torch.utils.data.DataLoader(subset, batch_size=2)

    val = validate_stage(_ZeroFilled(), ds, loader, prepare, torch.device("cpu"), "fp32")
    assert val["val/psnr"] == pytest.approx(float(ev.psnr(gt, zf)), abs=1e-4)
    # The simulated mode on the same file scores another problem: a 320x320 re-simulation.
    cropped = convert_fastmri_complex(src, tmp_path / "c" / "file1001.h5")
    sim = SliceDataset(cropped, (RECON, RECON), FastMRIMask("random", 4, 0.08), complex=True)
    assert sim.mask_shapes == [(RECON, RECON)] and ds.mask_shapes == [(W, H)]


def test_measured_mode_refusals(tmp_path):
    (tmp_path / "raw").mkdir()
    src = write_fastmri(tmp_path / "raw" / "file1.h5", knee_like(1, H, W, 1))
    cropped = convert_fastmri_complex(src, tmp_path / "a" / "file1.h5")
    mask = FastMRIMask("random", 4)
    with pytest.raises(DataError, match=r"file1\.h5: not on its measured k-space grid"):
        SliceDataset(cropped, (RECON, RECON), mask, complex=True, kspace="measured")
    full = convert_fastmri_complex(src, tmp_path / "b" / "file1.h5", crop=None)
    import h5py

    test_split = write_fastmri(tmp_path / "raw" / "file9.h5", knee_like(1, H, W, 9))
    with h5py.File(test_split, "a") as f:  # fastMRI's test files: undersampled, with 'mask'
        f["mask"] = (np.arange(W) % 4 == 0).astype(bool)
    with pytest.raises(DataError, match=r"file9\.h5: 'kspace' is undersampled"):
        convert_fastmri_complex(test_split, tmp_path / "t.h5", crop=None)
    with pytest.raises(DataError, match="measured k-space needs complex volumes"):
        SliceDataset(full, (RECON, RECON), mask, kspace="measured")
    src2 = write_fastmri(tmp_path / "raw" / "file2.h5", knee_like(1, H, W + 4, 2))
    other = convert_fastmri_complex(src2, tmp_path / "b" / "file2.h5", crop=None)
    mixed = SliceDataset([full, other], (RECON, RECON), mask, complex=True, kspace="measured")
    assert mixed.mask_shapes == [(W, H), (W + 4, H)]  # each file's own phase-encode width
    assert mixed[0].mask.shape[-2:] == (W, H) and mixed[1].mask.shape[-2:] == (W + 4, H)
    check_one_grid(mixed, batch_size=1)  # one slice per batch: any grids
    with pytest.raises(DataError, match="volumes on different grids") as err:
        check_one_grid(mixed, batch_size=2)
    assert "\n" not in str(err.value)
    from raykd.errors import ConfigError
    from raykd.train.config import load_config

    with pytest.raises(ConfigError, match="kspace 'measured' needs complex: true"):
        load_config(None, ["data.kspace=measured", "data.complex=true"])


def test_fastmri_knee_style_smoke_run_in_measured_mode_trains_and_reports_it(tmp_path, capsys):
    raw = tmp_path / "raw"
    for split, names in (("train", ["file1000", "file1001"]), ("val", ["file1002"])):
        (raw / split).mkdir(parents=True)
        for i, name in enumerate(names):
            write_fastmri(raw / split / f"{name}.h5", knee_like(2, H, W, 10 + i + len(split)))
        prepared = tmp_path / "fastmri_knee" / split
        assert (
            raykd_main(
                ["prepare", "fastmri", str(raw / split), str(prepared), "--kspace", "measured"]
            )
            == 0
        )
    out = tmp_path / "run"
    overrides = tiny_overrides(
        tmp_path / "fastmri_knee",
        out,
        "teacher",
        **{
            "data.train": "null",
            "data.val": "null",
            "data.size": "[320, 320]",
            "data.complex": "true",
            "data.kspace": "measured",
            "data.mask.kind": "fastmri_random",
            "data.mask.acceleration": "4",
            "data.max_slices_per_volume": "1",
            "optim.epochs": "1",
            "optim.max_steps_per_epoch": "1",
        },
    )
    args = ["train"] + [a for o in overrides for a in ("--set", o)]
    assert raykd_main(args) == 0
    printed = capsys.readouterr().out
    assert (
        f"data: measured k-space ({W}x{H} grid, phase encoding along rows; scored on 320x320)"
        in printed
    )
    report = json.loads((out / "eval_val.json").read_text())
    assert report["kspace"] == "measured" and np.isfinite(report["summary"]["psnr"][0])
    assert "kspace: measured" in (out / "config.yaml").read_text()
    # Default: re-simulated k-space, and the mode stays out of the stage identity.
    from raykd.plan.identity import stage_identity
    from raykd.train.config import load_config

    cfg = load_config(None, overrides)
    simulated = cfg.model_copy(update={"data": cfg.data.model_copy(update={"kspace": "simulated"})})
    assert stage_identity(cfg) != stage_identity(simulated)


def test_presets_plan_their_mode_and_resimulation_stays_the_default():
    from raykd.plan.presets import load_preset
    from raykd.plan.rows import grid_rows
    from raykd.plan.stages import row_requests

    for name, mode, batch in (
        ("fastmri_knee_measured", "measured", 1),
        ("fastmri_knee", "simulated", 4),
    ):
        spec = load_preset(name)
        requests = [q for r in grid_rows(spec)[:3] for q in row_requests(spec, r)]
        assert requests and {q.cfg.data.kspace for q in requests} == {mode}
        assert {q.cfg.data.batch_size for q in requests} == {batch}
        assert {q.cfg.data.mask.kind for q in requests} == {"fastmri_random"}
    for name in ("smoke", "cpu", "paper"):
        spec = load_preset(name)
        row = grid_rows(spec)[0]
        assert all(q.cfg.data.kspace == "simulated" for q in row_requests(spec, row))


def _prepared_knee(tmp_path) -> Path:
    """Synthetic fastMRI single-coil files prepared on their measured grid into train/ val/."""
    root = tmp_path / "fastmri_knee_measured"
    for split, names in (("train", ["file1000", "file1001"]), ("val", ["file1002"])):
        raw = tmp_path / "raw" / split
        raw.mkdir(parents=True)
        for i, name in enumerate(names):
            write_fastmri(raw / f"{name}.h5", knee_like(2, H, W, 20 + i + len(split)))
        args = ["prepare", "fastmri", str(raw), str(root / split), "--kspace", "measured"]
        assert raykd_main(args) == 0
    return root


@pytest.mark.ray
def test_fastmri_knee_measured_style_grid_trains_and_logs_its_mode(
    ray_session, tmp_path, monkeypatch
):
    """``fastmri_knee_measured`` reduced to a smoke grid (a preset file of the same form) on
    synthetic fastMRI files: real Ray, MLflow; every stage's params say ``data.kspace``."""
    import mlflow
    import yaml

    from raykd.orchestration.grid import run_grid
    from raykd.orchestration.job import finish_job, start_job
    from raykd.plan.presets import load_preset

    root = _prepared_knee(tmp_path)
    preset = {
        "datasets": {"knee": {"source": str(root), "size": [320, 320], "complex": True}},
        "presets": {
            "knee_measured_smoke": {
                "datasets": ["knee"],
                "kspace": "measured",
                "mask_kind": "fastmri_random",
                "accelerations": [4],
                "rows": ["teacher", "student", "std_kd"],
                "methods": ["at"],
                "teacher_depth": 3,
                "student_depths": [2],
                "cascades": 2,
                "channels": 4,
                "max_slices_per_volume": 1,
                "epochs": {"teacher": 1, "sft": 1, "student": 1, "kd": 1},
                "batch_size": 1,
                "precision": "fp32",
                "trial_unit": "seed",
            }
        },
    }
    path = tmp_path / "knee.yaml"
    path.write_text(yaml.safe_dump(preset))
    spec = load_preset(str(path))
    job = start_job("knee-measured", {}, root=tmp_path / "job", experiment="km", local_train=True)
    rows = run_grid(spec, job)
    finish_job(job, rows)
    assert len(rows) == 3 and all(r.ok and np.isfinite(r.psnr) for r in rows)
    # set_tracking_uri also exports $MLFLOW_TRACKING_URI: monkeypatch puts it back after the
    # test, or every later job of this process would log to this store.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", job.tracking.uri)
    mlflow.set_tracking_uri(job.tracking.uri)
    runs = mlflow.search_runs(experiment_names=["km"], filter_string="params.kind != ''")
    assert len(runs) >= 3 and set(runs["params.data.kspace"]) == {"measured"}
