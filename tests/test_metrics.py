"""Tests for raykd.metrics: known values, monotonicity, the 3D-SSIM trap, validation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from sewar.full_ref import vifp as sewar_vifp
from skimage.metrics import structural_similarity

from raykd.errors import DataError
from raykd.metrics import (
    METRICS,
    evaluate_volume,
    slice_metrics,
    summarise,
    volume_metrics,
)


def phantom(n: int = 4, size: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth blobby magnitude 'volume' in [0, 1] with structure at several scales."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    vol = np.zeros((n, size, size))
    for i in range(n):
        for _ in range(8):
            cx, cy, r, a = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.03, 0.2), 1
            vol[i] += a * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r**2))
        vol[i] += 0.3 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.1)
    return vol / vol.max()


def test_identical_inputs_give_perfect_scores() -> None:
    x = phantom()
    res = evaluate_volume(x, x.copy())
    v = res.volume
    assert v["psnr"] == math.inf  # skimage's value is kept on purpose (no cap)
    assert all(p == math.inf for p in res.slices["psnr"])
    assert v["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert v["nmse"] == 0.0
    assert v["hfn"] == 0.0
    assert v["hfen"] == 0.0
    assert v["vif"] == pytest.approx(1.0, abs=1e-6)


def test_noise_degrades_every_metric_monotonically() -> None:
    x = phantom()
    noise = np.random.default_rng(1).standard_normal(x.shape)
    rows = [volume_metrics(x, x + s * noise) for s in (0.005, 0.02, 0.05, 0.15)]
    for better, worse in zip(rows, rows[1:], strict=False):
        assert worse["psnr"] < better["psnr"]
        assert worse["ssim"] < better["ssim"]
        assert worse["vif"] < better["vif"]
        assert worse["nmse"] > better["nmse"]
        assert worse["hfn"] > better["hfn"]
        assert worse["hfen"] > better["hfen"]
    assert 0 < rows[-1]["vif"] < rows[0]["vif"] < 1


def test_constant_error_hand_checked() -> None:
    # Slice maxima 2 and 1, error 0.1 everywhere: MSE = 0.01.
    x = np.stack([np.full((48, 48), 2.0), np.full((48, 48), 1.0)])
    x[:, 10:20, 10:20] *= 0.5  # some structure so the Laplacian of x is not zero
    y = x + 0.1
    v = volume_metrics(x, y)
    assert v["psnr"] == pytest.approx(10 * math.log10(2.0**2 / 0.01))  # volume max = 2
    assert v["nmse"] == pytest.approx(0.1**2 * x.size / (x**2).sum())
    assert v["hfn"] == pytest.approx(0.0, abs=1e-20)  # an offset has no Laplacian
    per = slice_metrics(x, y)
    np.testing.assert_allclose(per["psnr"], [10 * math.log10(4 / 0.01), 10 * math.log10(1 / 0.01)])
    np.testing.assert_allclose(per["nmse"], 0.01 * 48 * 48 / (x**2).sum(axis=(1, 2)))


def test_hfn_and_hfen_definitions() -> None:
    x = phantom(n=1)[0]
    y = x + 0.05 * np.random.default_rng(2).standard_normal(x.shape)
    per = slice_metrics(x, y)
    lx, ly = ndimage.laplace(x), ndimage.laplace(y)
    assert per["hfn"][0] == pytest.approx(((lx - ly) ** 2).sum() / (lx**2).sum())  # no sqrt
    gx = ndimage.gaussian_laplace(x, 1.5, truncate=7 / 1.5)
    gy = ndimage.gaussian_laplace(y, 1.5, truncate=7 / 1.5)
    assert per["hfen"][0] == pytest.approx(np.linalg.norm(gx - gy) / np.linalg.norm(gx))  # sqrt


def test_vif_matches_sewar_on_8bit_scale() -> None:
    x = phantom(n=2)
    y = x + 0.03 * np.random.default_rng(3).standard_normal(x.shape)
    per = slice_metrics(x, y)
    scale = 255 / x.max()
    expected = [sewar_vifp(x[i] * scale, y[i] * scale) for i in range(2)]
    np.testing.assert_allclose(per["vif"], expected, rtol=1e-8)


def test_ssim_is_mean_of_2d_slices_not_3d() -> None:
    # Slices are shifted copies of one image: across slices the stack is not smooth, so a 3D
    # window (what skimage >= 0.19 computes for a stack) sees different statistics.
    base = phantom(n=1, size=64)[0]
    x = np.stack([np.roll(base, 5 * k, axis=1) for k in range(9)])
    x = x[np.random.default_rng(4).permutation(9)]
    y = x + 0.04 * np.random.default_rng(5).standard_normal(x.shape)
    dr = x.max()
    mean_2d = np.mean(
        [structural_similarity(x[i], y[i], win_size=7, data_range=dr) for i in range(9)]
    )
    ssim_3d = structural_similarity(x, y, win_size=7, data_range=dr)
    got = volume_metrics(x, y)["ssim"]
    assert got == pytest.approx(mean_2d, abs=1e-12)
    assert abs(got - ssim_3d) > 1e-3


def test_per_slice_lengths_json_and_2d_input() -> None:
    x = phantom(n=5)
    y = x + 0.01
    per = slice_metrics(x, y)
    assert set(per) == set(METRICS)
    assert all(len(per[m]) == 5 for m in METRICS)
    res = evaluate_volume(x, y)
    assert list(res.volume) == list(METRICS)
    assert all(len(res.slices[m]) == 5 for m in METRICS)
    json.dumps(res.to_dict())
    one = volume_metrics(x[2], y[2])  # a 2D array is one slice
    sub = slice_metrics(x[2:3], y[2:3])
    assert all(one[m] == pytest.approx(sub[m][0]) for m in METRICS)


def test_torch_tensors_accepted() -> None:
    x = phantom(n=2)
    y = x + 0.02 * np.random.default_rng(7).standard_normal(x.shape)
    ref = volume_metrics(x, y)
    got = volume_metrics(torch.from_numpy(x).float(), torch.from_numpy(y).float())
    for m in METRICS:
        assert got[m] == pytest.approx(ref[m], rel=1e-4)


def test_empty_slice_is_nan_and_skipped_in_means() -> None:
    x = phantom(n=3)
    x[1] = 0.0
    y = x + 0.01 * np.random.default_rng(6).standard_normal(x.shape)
    per = slice_metrics(x, y)
    for m in ("psnr", "nmse", "hfn", "hfen", "vif"):
        assert math.isnan(per[m][1]) and not np.isnan(per[m][[0, 2]]).any()
    v = volume_metrics(x, y)
    assert all(math.isfinite(v[m]) for m in METRICS)
    assert v["hfn"] == pytest.approx(per["hfn"][[0, 2]].mean())


@pytest.mark.parametrize(
    ("target", "pred", "match"),
    [
        (np.ones((2, 64, 64)), np.ones((2, 64, 63)), "same shape"),
        (np.ones((1, 2, 64, 64)), np.ones((1, 2, 64, 64)), r"\[N, H, W\]"),
        (np.ones(64), np.ones(64), r"\[N, H, W\]"),
        (np.ones((0, 64, 64)), np.ones((0, 64, 64)), "at least one slice"),
        (np.ones((2, 4, 64)), np.ones((2, 4, 64)), "at least 8x8"),
        (np.zeros((2, 64, 64)), np.zeros((2, 64, 64)), "positive maximum"),
        (np.ones((2, 64, 64)) * (1 + 1j), np.ones((2, 64, 64)), "real-valued"),
    ],
)
def test_bad_inputs_raise_data_error(target: np.ndarray, pred: np.ndarray, match: str) -> None:
    with pytest.raises(DataError, match=match):
        evaluate_volume(target, pred)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_raises_data_error(bad: float) -> None:
    x = phantom(n=2)
    y = x.copy()
    y[1, 3, 3] = bad
    with pytest.raises(DataError, match="pred contains NaN or infinite"):
        slice_metrics(x, y)
    with pytest.raises(DataError, match="target contains NaN or infinite"):
        volume_metrics(y, x)


def test_summarise() -> None:
    rows = [{"psnr": 30.0, "ssim": 0.9}, {"psnr": 32.0, "ssim": 0.8}]
    s = summarise(rows)
    assert s["psnr"] == pytest.approx((31.0, math.sqrt(2.0)))  # sample std (ddof=1)
    assert s["ssim"] == pytest.approx((0.85, np.std([0.9, 0.8], ddof=1)))
    assert summarise(rows[:1])["psnr"] == (30.0, 0.0)
    with pytest.raises(DataError, match="at least one"):
        summarise([])
    with pytest.raises(DataError, match="expected"):
        summarise([{"psnr": 1.0}, {"ssim": 1.0}])


def test_vif_undefined_below_41_pixels_other_metrics_defined() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((2, 32, 32))
    y = x + 0.05 * rng.standard_normal(x.shape)
    vol = volume_metrics(x, y)
    assert np.isnan(vol["vif"])
    assert np.isfinite(vol["psnr"]) and 0 < vol["ssim"] < 1


def test_validation_psnr_is_the_final_volume_psnr(tiny_config):
    """Per-epoch ``val/psnr`` equals the final evaluation's volume PSNR on the same model.

    Two validation volumes, so both the per-volume PSNR and the mean over volumes matter; the
    old definition (mean of per-slice PSNRs) is computed too and must differ measurably.
    """
    from raykd.train.evaluate import evaluate_model
    from raykd.train.loop import train_stage
    from raykd.train.stages import load_model

    cfg = tiny_config(
        "teacher",
        **{
            "data.train": "[vol0, vol1]",
            "data.val": "[vol2, vol3]",
            "optim.epochs": "1",
            "precision": "fp32",
            "data.batch_size": "4",  # a batch spans both volumes: the per-volume split is tested
        },
    )
    result = train_stage(cfg)
    val_psnr = result.history[-1]["val/psnr"]
    from raykd.data.sources import build_datasets

    dataset = build_datasets(cfg.data)["val"]
    report = evaluate_model(load_model(result.best_checkpoint), dataset, progress=False)
    final = report["summary"]["psnr"][0]
    per_volume = [v["metrics"]["psnr"] for v in report["volumes"]]
    assert len(per_volume) == 2 and abs(per_volume[0] - per_volume[1]) > 1e-3
    assert val_psnr == pytest.approx(final, abs=1e-4, rel=1e-6)
    slice_mean = float(np.mean([p for v in report["volumes"] for p in v["per_slice"]["psnr"]]))
    assert abs(slice_mean - final) > 1e-3  # the two definitions are not the same number
