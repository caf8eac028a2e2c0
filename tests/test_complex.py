"""Complex-valued data end to end: two-channel networks, DC in complex k-space, magnitude metrics.

Real h5 volumes with the synthetic phase of :mod:`raykd.data.complex`, real training (tiny).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from raykd.data.complex import add_synthetic_phase, synthetic_phase
from raykd.data.dataset import SliceDataset
from raykd.data.masks import CartesianMask
from raykd.data.transforms import fft2, ifft2, magnitude, to_complex, undersample
from raykd.data.volumes import write_complex_volume
from raykd.errors import DataError
from raykd.models.dccnn import DCCNN, DataConsistency
from raykd.models.registry import build_model, model_from_arch
from raykd.train.config import load_config
from tests.conftest import phantom_volume, tiny_overrides

COMPLEX = {"data.complex": "true"}


@pytest.fixture(scope="session")
def complex_data(tmp_path_factory) -> Path:
    """Four 6-slice 32x32 complex volumes: phantom magnitudes times the synthetic phase."""
    root = tmp_path_factory.mktemp("complex_data")
    for v in range(4):
        cimage = add_synthetic_phase(phantom_volume(6, 32, seed=v), f"vol{v}")
        write_complex_volume(root / f"vol{v}.h5", cimage)
    return root


def _mask(size=32, seed=0) -> torch.Tensor:
    m = CartesianMask(acceleration=4, seed=seed, num_low=4)((size, size), "v")
    return torch.from_numpy(m).float()[None, None]


def test_complex_dc_leaves_measured_kspace_exactly_as_measured():
    """Noise-free hard DC in complex k-space: at every sampled point the output's k-space is the
    measured y, through every cascade of a (random-weight) complex DC-CNN."""
    torch.manual_seed(0)
    phase = torch.from_numpy(synthetic_phase((32, 32), "v", 0))
    image = torch.rand(2, 1, 32, 32) * torch.exp(1j * phase)
    target = torch.cat([image.real, image.imag], dim=1).float()
    mask = _mask()
    zero_filled, y = undersample(target, mask)
    assert zero_filled.shape == (2, 2, 32, 32)
    net = DCCNN(depth=3, cascades=3, channels=8, complex=True).eval()
    with torch.no_grad():
        out = net(zero_filled, y, mask)
    k = fft2(to_complex(out))
    sampled = mask.expand_as(k.real).bool()
    measured = y[sampled]
    err = (k[sampled] - measured).abs().max().item()
    assert err <= 1e-5 * measured.abs().max().item()
    # The DC step itself replaces the samples bit-for-bit before the inverse FFT.
    k_cnn = fft2(to_complex(torch.randn(2, 2, 32, 32)))
    k_dc = mask * y + (1.0 - mask) * k_cnn
    assert torch.equal(k_dc[sampled], measured)
    # ... and the unsampled points come from the network, not zero.
    assert (k[~sampled].abs() > 0).float().mean() > 0.9
    # The magnitude DC takes the real part: with this non-Hermitian mask and complex data it
    # does NOT keep y (what the complex path fixes).
    real_out = DataConsistency(complex=False)(magnitude(zero_filled), y, mask)
    assert (fft2(real_out)[sampled] - measured).abs().max() > 1e-2


def test_complex_models_are_two_channel_and_magnitude_models_unchanged():
    for arch, depth in (("dccnn", 3), ("vdsr", 6), ("dcunet", 2)):
        mag = build_model(arch, depth, 2, 8)
        cplx = build_model(arch, depth, 2, 8, complex=True)
        assert "complex" not in mag.arch and cplx.arch["complex"] is True
        assert type(model_from_arch(cplx.arch)) is type(cplx) and model_from_arch(cplx.arch).complex
        zf, y = undersample(torch.rand(1, 2, 32, 32), _mask())
        assert cplx(zf, y, _mask()).shape == (1, 2, 32, 32)
        # Only the first and last conv change: one extra input / output channel.
        extra = sum(p.numel() for p in cplx.parameters()) - sum(p.numel() for p in mag.parameters())
        assert 0 < extra < 4 * 9 * 8 * cplx.num_blocks
    assert sum(p.numel() for p in DCCNN(5, 5, 32).parameters()) == 141765  # the paper's count


def test_synthetic_phase_is_smooth_seeded_and_kept_by_the_dataset(complex_data):
    a = synthetic_phase((32, 32), "vol0", 1)
    assert np.array_equal(a, synthetic_phase((32, 32), "vol0", 1))
    assert not np.array_equal(a, synthetic_phase((32, 32), "vol0", 2))
    assert np.abs(np.diff(a, axis=0)).max() < 0.5  # smooth: < 0.5 rad between neighbours
    ds = SliceDataset(complex_data / "vol0.h5", (32, 32), CartesianMask(4, num_low=4), complex=True)
    sample = ds[1]
    assert sample.target.shape == (2, 32, 32)
    z = sample.target[0].numpy() + 1j * sample.target[1].numpy()
    assert np.isclose(np.abs(z).max(), 1.0)
    inside = np.abs(z) > 0.05
    expected = np.exp(1j * synthetic_phase((32, 32), "vol0", ds.index[1][1]))
    assert np.allclose(z[inside] / np.abs(z[inside]), expected[inside], atol=1e-4)
    # The same file still reads as an ordinary magnitude volume.
    mag = SliceDataset(complex_data / "vol0.h5", (32, 32), CartesianMask(4, num_low=4))[1]
    assert mag.target.shape == (1, 32, 32)
    assert np.allclose(mag.target[0].numpy(), np.abs(z), atol=1e-5)


def test_magnitude_file_as_complex_data_names_file_and_key(tiny_data):
    with pytest.raises(DataError, match=r"vol0\.h5: missing key 'cimage'"):
        SliceDataset(tiny_data / "vol0.h5", (32, 32), CartesianMask(4, num_low=4), complex=True)


def test_complex_chain_trains_and_scores_the_magnitude(complex_data, tmp_path):
    """teacher → SFT → SFT-KD (FitNets: a regressor over the 2-channel output tap too) on
    complex data; the validation PSNR the trainer selects by is the magnitude PSNR the final
    evaluation reports, and the zero-filled baseline is |F⁻¹(y)|."""
    from raykd.data.sources import build_datasets
    from raykd.train.evaluate import evaluate_split, reconstruct_volume
    from raykd.train.loop import train_stage
    from raykd.train.stages import load_model

    def cfg(kind, **extra):
        return load_config(
            None, tiny_overrides(complex_data, tmp_path / kind, kind, **COMPLEX, **extra)
        )

    train_stage(cfg("teacher"))
    sft = train_stage(cfg("sft"))
    kd_opts = {"kd.init": "sft", "kd.method": "fitnets"}
    kd_cfg = cfg("kd", **kd_opts, teacher_checkpoint=str(sft.best_checkpoint))
    kd = train_stage(kd_cfg)
    assert kd.lineage["sft_tensors_loaded"] > 0
    model = load_model(kd.best_checkpoint)
    assert model.complex
    val = build_datasets(kd_cfg.data)["val"]
    report = evaluate_split(model, val)
    psnr = report["summary"]["psnr"][0]
    assert np.isclose(psnr, kd.history[kd.best_epoch]["val/psnr"], atol=1e-3)
    rec = reconstruct_volume(None, val, 0)
    assert rec["recon"].dtype == np.float32 and rec["recon"].shape == (6, 32, 32)
    target, zf = torch.from_numpy(rec["target"]), torch.from_numpy(rec["zero_filled"])
    sample = val[0]
    zf0, _ = undersample(sample.target[None], sample.mask[None])
    assert torch.allclose(zf[0], magnitude(zf0)[0, 0], atol=1e-6)
    assert torch.allclose(target[0], magnitude(sample.target[None])[0, 0], atol=1e-6)
    assert "recon_complex" in reconstruct_volume(model, val, 0)


def test_complex_vdsr_super_resolution_by_kspace_truncation(complex_data, tmp_path):
    from raykd.train.loop import train_stage

    extra = {
        **COMPLEX,
        "data.sr": "{scale: 2}",
        "teacher.arch": "vdsr",
        "teacher.depth": "6",
        "teacher.cascades": "2",
        "optim.epochs": "1",
    }
    cfg = load_config(None, tiny_overrides(complex_data, tmp_path, "teacher", **extra))
    result = train_stage(cfg)
    assert np.isfinite(result.best_val_loss)
    # k-space truncation of complex data keeps the phase: the input is the low-passed complex
    # image, whose k-space outside the kept centre is zero.
    from raykd.data.masks import LowPassMask

    low = torch.from_numpy(LowPassMask(2)((32, 32), "v")).float()[None, None]
    z = torch.rand(1, 2, 32, 32)
    zf, y = undersample(z, low)
    assert torch.allclose(fft2(to_complex(zf)), y, atol=1e-5)
    assert torch.allclose(ifft2(y), to_complex(zf), atol=1e-6)


def test_complex_torchscript_export(complex_data, tmp_path):
    from raykd.deploy.export import example_inputs, export_torchscript, load_torchscript
    from raykd.deploy.registry import pack_inputs, scripted
    from raykd.train.loop import train_stage
    from raykd.train.stages import load_model

    cfg = load_config(
        None,
        tiny_overrides(complex_data, tmp_path / "t", "student", **COMPLEX, **{"optim.epochs": "1"}),
    )
    result = train_stage(cfg)
    out = export_torchscript(result.best_checkpoint, tmp_path / "m.pt")
    traced = load_torchscript(out)
    zf, y, mask = example_inputs(2, (32, 32), seed=3, complex=True)
    eager = load_model(result.best_checkpoint).eval()
    with torch.no_grad():
        assert torch.allclose(traced(zf, y, mask), eager(zf, y, mask), atol=1e-5)
    packed_model, example = scripted(eager, (32, 32))
    assert example.shape == (1, 5, 32, 32)
    with torch.no_grad():
        got = packed_model(pack_inputs(zf, y, mask))
    assert got.shape == (2, 2, 32, 32)


def test_reconstruct_and_export_commands_for_a_complex_model(complex_data, tmp_path):
    """``raykd reconstruct`` writes the complex result ('cimage') and its magnitude ('image');
    ``raykd export`` traces the two-channel network."""
    import h5py

    from raykd.cli import main
    from raykd.train.loop import train_stage

    extra = {**COMPLEX, "optim.epochs": "1"}
    cfg = load_config(None, tiny_overrides(complex_data, tmp_path / "s", "student", **extra))
    ckpt = train_stage(cfg).best_checkpoint
    out = tmp_path / "r.h5"
    assert (
        main(
            ["reconstruct", str(ckpt), "--input", str(complex_data / "vol3.h5"), "--out", str(out)]
        )
        == 0
    )
    with h5py.File(out) as f:
        cimage, image = f["cimage"][()], f["image"][()]
        assert cimage.dtype == np.complex64 and cimage.shape == (6, 32, 32)
        assert np.allclose(np.abs(cimage), image, atol=1e-5)
        assert {"zero_filled", "target"} <= set(f)
    ts = tmp_path / "m.ts"
    assert main(["export", str(ckpt), "--out", str(ts)]) == 0 and ts.is_file()
