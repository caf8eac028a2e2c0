"""raykd's fastMRI readers against the ``fastmri`` package (0.3.0) on the same files.

Files are written in fastMRI's documented format (``tests/fastmri_files.py``: single- and
multi-coil k-space, ``reconstruction_esc``/``_rss``, an ISMRMRD header, ``acquisition`` and
``patient_id``); ``fastmri.data.SliceDataset`` reads them and ``fastmri.data.transforms`` (with
``fastmri``'s FFTs and masks) turns them into images. raykd's conversions (magnitude
``convert_fastmri``, complex ``convert_fastmri_complex``, the measured-k-space grid) must give the
same target images, the same cropping and the same mask lines for the same seed and file name,
with phase encoding along raykd's rows.
"""

from __future__ import annotations

import sys
import types

import h5py
import numpy as np
import pytest
import torch

from raykd.data.complex_readers import convert_fastmri_complex
from raykd.data.dataset import SliceDataset
from raykd.data.fastmri import convert_fastmri
from raykd.data.fastmri_masks import FastMRIMask
from raykd.data.masks import CartesianMask
from raykd.data.transforms import magnitude, undersample
from raykd.errors import DataError
from tests.fastmri_files import RECON, knee_like, smooth_coils, write_fastmri

fastmri = pytest.importorskip("fastmri", reason="the fastmri package (pip install --no-deps)")
from fastmri.data import SliceDataset as FastMRISlices  # noqa: E402
from fastmri.data import subsample  # noqa: E402
from fastmri.data import transforms as T  # noqa: E402

H, W, N = 352, 336, 2  # readout (oversampled) x phase encoding, as 640 x 368 in the knee set
MASKS = [("random", 4, 0.08), ("equispaced", 8, 0.04)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fastmri")
    (root / "singlecoil").mkdir()
    (root / "multicoil").mkdir()
    write_fastmri(root / "singlecoil" / "file1000.h5", knee_like(N, H, W, 0))
    coils = smooth_coils(4, H, W)
    write_fastmri(root / "multicoil" / "file2000.h5", knee_like(N, H, W, 1), coils)
    return root


def _theirs(root, challenge: str) -> list:
    """fastMRI's raw samples (kspace, mask, target, attrs, fname, slice) of a folder."""
    ds = FastMRISlices(root / challenge, challenge)
    assert len(ds) == N
    return [ds[i] for i in range(len(ds))]


def _their_image(kspace: np.ndarray, crop, multicoil: bool) -> np.ndarray:
    """fastMRI's image of (masked) k-space: ifft2c, centre crop, |.|, RSS over coils."""
    image = fastmri.complex_abs(T.complex_center_crop(fastmri.ifft2c(T.to_tensor(kspace)), crop))
    return (fastmri.rss(image) if multicoil else image).numpy()


def _convert(src, out, layout: str):
    if layout == "magnitude":
        return convert_fastmri(src, out)
    if layout == "magnitude-kspace":
        return convert_fastmri(src, out, prefer="kspace")
    return convert_fastmri_complex(src, out)  # complex, 320x320


def _ours(path, layout: str, mask=None) -> SliceDataset:
    mask = mask or CartesianMask(4, num_low=10)
    return SliceDataset(path, (RECON, RECON), mask, complex=layout == "complex")


def _target(ds: SliceDataset, i: int) -> np.ndarray:
    return magnitude(ds[i].target[None])[0, 0].numpy()


@pytest.mark.parametrize("layout", ["magnitude", "magnitude-kspace", "complex"])
def test_same_target_images_and_cropping_as_fastmri_singlecoil(files, tmp_path, layout):
    src = files / "singlecoil" / "file1000.h5"
    ours = _ours(_convert(src, tmp_path / "v.h5", layout), layout)
    for i, (kspace, _, target, attrs, fname, _) in enumerate(_theirs(files, "singlecoil")):
        assert fname == "file1000.h5" and target.shape == (RECON, RECON)
        assert attrs["recon_size"][:2] == (RECON, RECON) and attrs["encoding_size"][:2] == (H, W)
        # The reference target, and fastMRI's own image of the k-space at its recon size.
        image = _their_image(kspace, attrs["recon_size"][:2], multicoil=False)
        np.testing.assert_allclose(image, target, rtol=1e-4, atol=1e-4 * target.max())
        # raykd: the same image, transposed (phase encoding along rows), scaled to max 1.
        got = _target(ours, i)
        np.testing.assert_allclose(got, target.T / target.max(), atol=2e-5)
    with h5py.File(tmp_path / "v.h5") as f:
        assert f.attrs["phase_encoding"] == "rows"
        assert f.attrs["source_file"] == "file1000.h5"
        key = "fastmri_acquisition" if layout == "complex" else "acquisition"
        assert f.attrs[key] == "CORPD_FBK"


@pytest.mark.parametrize("prefer", ["reconstruction", "kspace"])
def test_same_target_images_as_fastmri_multicoil(files, tmp_path, prefer):
    src = files / "multicoil" / "file2000.h5"
    with h5py.File(convert_fastmri(src, tmp_path / "m.h5", prefer=prefer)) as f:
        ours = f["image"][()]
        assert f.attrs["source_key"] == ("kspace" if prefer == "kspace" else "reconstruction_rss")
        assert f.attrs["patient_id"] == "pid-file2000"
    for i, (kspace, _, target, attrs, _, _) in enumerate(_theirs(files, "multicoil")):
        assert kspace.ndim == 3  # [coils, H, W]
        image = _their_image(kspace, attrs["recon_size"][:2], multicoil=True)
        np.testing.assert_allclose(image, target, rtol=1e-4, atol=1e-4 * target.max())
        np.testing.assert_allclose(ours[i], target.T, rtol=1e-4, atol=1e-4 * target.max())


@pytest.mark.parametrize("kind,acc,cf", MASKS)
@pytest.mark.parametrize("layout", ["magnitude", "complex"])
def test_same_mask_lines_on_the_phase_encode_axis_as_fastmri(
    files, tmp_path, layout, kind, acc, cf
):
    """Re-simulated k-space (the 320x320 crop): fastMRI's mask, drawn for the file name, applied
    along fastMRI's phase-encode columns, gives the image raykd's mask gives along its rows."""
    src = files / "singlecoil" / "file1000.h5"
    # raykd seeds a volume's mask with its file stem: converted files keep fastMRI's names.
    out = _convert(src, tmp_path / "file1000.h5", layout)
    ours = _ours(out, layout, FastMRIMask(kind, acc, cf))
    cls = subsample.RandomMaskFunc if kind == "random" else subsample.EquiSpacedMaskFunc
    for i, (kspace, _, target, _, fname, _) in enumerate(_theirs(files, "singlecoil")):
        image = T.complex_center_crop(fastmri.ifft2c(T.to_tensor(kspace)), (RECON, RECON))
        if layout == "magnitude":  # the magnitude target, re-simulated
            image = torch.stack([fastmri.complex_abs(image), torch.zeros(RECON, RECON)], -1)
        resim = fastmri.fft2c(image)
        masked, mask, _ = T.apply_mask(resim, cls([cf], [acc]), seed=tuple(map(ord, fname)))
        lines = mask.reshape(-1).numpy()  # one value per column (phase-encode line)
        theirs = fastmri.complex_abs(fastmri.ifft2c(masked)).numpy() / target.max()
        sample = ours[i]
        rows = sample.mask[0].numpy()
        assert (rows == rows[:, :1]).all()  # whole rows
        assert np.array_equal(np.fft.fftshift(rows[:, 0]), lines)
        zero_filled, _ = undersample(sample.target[None], sample.mask[None])
        got = magnitude(zero_filled)[0, 0].numpy()
        np.testing.assert_allclose(got, theirs.T, atol=5e-5)


@pytest.mark.parametrize("kind,acc,cf", MASKS)
def test_measured_kspace_same_lines_and_images_as_fastmri(files, tmp_path, kind, acc, cf):
    """The measured grid: masks span the file's own phase-encode width (W lines), the masked
    k-space is the file's own, and the scored crop is fastMRI's 320x320 zero-filled image."""
    src = files / "singlecoil" / "file1000.h5"
    out = convert_fastmri_complex(src, tmp_path / "file1000.h5", crop=None)
    with h5py.File(out) as f:
        assert f.attrs["kspace_grid"] == "measured" and f.attrs["phase_encoding"] == "rows"
        cimage = f["cimage"][()]
    mask = FastMRIMask(kind, acc, cf)
    ours = SliceDataset(out, (RECON, RECON), mask, complex=True, kspace="measured")
    assert ours.mask_shapes == [(W, H)]
    cls = subsample.RandomMaskFunc if kind == "random" else subsample.EquiSpacedMaskFunc
    for i, (kspace, _, target, _, fname, _) in enumerate(_theirs(files, "singlecoil")):
        # raykd's k-space of the stored image is the file's, transposed and uncentred.
        measured = np.fft.ifftshift(kspace).T
        np.testing.assert_allclose(
            np.abs(np.fft.fft2(cimage[i], norm="ortho")), np.abs(measured), atol=1e-4
        )
        masked, lines, _ = T.apply_mask(
            T.to_tensor(kspace), cls([cf], [acc]), seed=tuple(map(ord, fname))
        )
        theirs = _their_image(T.tensor_to_complex_np(masked), (RECON, RECON), multicoil=False)
        sample = ours[i]
        assert np.array_equal(np.fft.fftshift(sample.mask[0, :, 0].numpy()), lines.reshape(-1))
        zero_filled, _ = undersample(sample.target[None], sample.mask[None])
        got = ours.scored(magnitude(zero_filled))[0, 0].numpy()
        scale = ours.scored(magnitude(sample.target[None]))[0, 0].numpy().max() / target.max()
        np.testing.assert_allclose(got, theirs.T * scale, atol=5e-5)
        target_ours = ours.scored(magnitude(sample.target[None]))[0, 0].numpy()
        np.testing.assert_allclose(target_ours, target.T * scale, atol=5e-5)


def test_fastmri_mask_refused_on_a_volume_with_phase_encoding_along_columns(files, tmp_path):
    out = convert_fastmri(files / "singlecoil" / "file1000.h5", tmp_path / "v.h5")
    with h5py.File(out, "a") as f:
        f.attrs["phase_encoding"] = "columns"
    with pytest.raises(DataError, match=r"v\.h5: phase encoding runs along its columns") as err:
        SliceDataset(out, (RECON, RECON), FastMRIMask("random", 4))
    assert "\n" not in str(err.value)
    # A fastMRI volume written before the layout was recorded is fastMRI's own (columns).
    with h5py.File(out, "a") as f:  # as the magnitude converter wrote it before: untransposed
        del f.attrs["phase_encoding"], f.attrs["layout"]
    with pytest.raises(DataError, match="phase encoding runs along its columns"):
        SliceDataset(out, (RECON, RECON), FastMRIMask("random", 4))
    SliceDataset(out, (RECON, RECON), CartesianMask(4))  # the paper's masks are not refused
    # A complex volume from before the attribute: its converter transposed, and said so.
    old = convert_fastmri_complex(files / "singlecoil" / "file1000.h5", tmp_path / "c.h5")
    with h5py.File(old, "a") as f:
        del f.attrs["phase_encoding"]
    SliceDataset(old, (RECON, RECON), FastMRIMask("random", 4), complex=True)


def _fastmri_evaluate():
    """``fastmri.evaluate``'s metric functions. The module imports ``runstats`` for its running
    statistics class only (not installed with --no-deps); the metric functions do not use it."""
    if "runstats" not in sys.modules:
        try:
            import runstats  # noqa: F401
        except ImportError:
            sys.modules["runstats"] = types.SimpleNamespace(Statistics=object)
    from fastmri import evaluate

    return evaluate


def test_volume_metrics_equal_fastmri_evaluate():
    from raykd.metrics import evaluate_volume

    ev = _fastmri_evaluate()
    rng = np.random.default_rng(3)
    gt = np.abs(knee_like(3, 64, 48, 5)).astype(np.float64) * 7.0
    pred = gt + 0.3 * rng.standard_normal(gt.shape)
    got = evaluate_volume(gt, pred).volume
    assert got["psnr"] == pytest.approx(float(ev.psnr(gt, pred)), rel=1e-12)
    assert got["ssim"] == pytest.approx(float(ev.ssim(gt, pred)[0]), rel=1e-12)
    assert got["nmse"] == pytest.approx(float(ev.nmse(gt, pred)), rel=1e-12)
