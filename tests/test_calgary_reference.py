"""raykd's Calgary-Campinas (CC-359) 12-channel reader against the release's documented layout.

The files here are written from the dataset's description (Souza et al. 2018, and the
multi-channel challenge data as NKI-AI/direct documents and reads it: ``CalgaryCampinasDataset``
and its "Setting up the Calgary-Campinas dataset" page), not from raykd's writer
(``tests/complex_formats.py``): one h5 per volume, ``kspace`` float32
``[slices, ky, kz, 24]`` — 12 receiver channels with real and imaginary parts interleaved on the
last axis — in hybrid space (the readout, one slice per position along it, already inverse
Fourier transformed), each slice a 2D ky-kz k-space in the *uncentred* FFT convention
(``fft2(..., centered=False)``, orthonormal), the last 15 % of kz not acquired (partial Fourier,
zeros). The reference image of a slice is the root-sum-of-squares of the channel-wise inverse
FFTs, rows along ky and columns along kz.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from raykd.data.complex_readers import convert_calgary
from tests.fastmri_files import knee_like, smooth_coils

KY, KZ, COILS, SLICES = 56, 44, 12, 5
ACQUIRED = 0.85


def _write_cc359(path, images: np.ndarray, coils: np.ndarray) -> np.ndarray:
    """A CC-359 raw file from complex images [slices, ky, kz] and coil maps [12, ky, kz];
    returns the documented reference images (RSS of the channel-wise inverse FFTs)."""
    k = np.fft.fft2(images[:, None] * coils[None], norm="ortho")  # [slices, 12, ky, kz]
    k[..., int(np.ceil(KZ * ACQUIRED)) :] = 0  # partial Fourier along kz: not acquired
    raw = np.zeros((len(images), KY, KZ, 2 * COILS), np.float32)
    channels_last = np.moveaxis(k, 1, -1)  # [slices, ky, kz, 12]
    raw[..., 0::2], raw[..., 1::2] = channels_last.real, channels_last.imag
    with h5py.File(path, "w") as f:
        f["kspace"] = raw
    return np.sqrt((np.abs(np.fft.ifft2(k, norm="ortho")) ** 2).sum(axis=1))


@pytest.fixture
def cc359(tmp_path):
    images = knee_like(SLICES, KY, KZ, 4)
    reference = _write_cc359(tmp_path / "e14089s3_P53248.7.h5", images, smooth_coils(COILS, KY, KZ))
    return tmp_path / "e14089s3_P53248.7.h5", reference


def _rel_err(a, b, where):
    return float(np.linalg.norm((a - b)[where]) / np.linalg.norm(b[where]))


def test_orientation_scaling_and_coil_combination_match_the_documented_reference(cc359, tmp_path):
    src, reference = cc359
    out = convert_calgary(src, tmp_path / "v.h5", size=None)
    with h5py.File(out) as f:
        cimage = f["cimage"][()]
        assert f.attrs["phase_encoding"] == "rows" and f.attrs["source"] == "calgary"
    assert cimage.shape == (SLICES, KY, KZ)  # rows ky, columns kz: no transpose
    body = reference > 0.2 * reference.max()
    # The combined magnitude is the RSS image (smooth maps), on the same scale (orthonormal).
    assert _rel_err(np.abs(cimage), reference, body) < 0.01
    # A centred-convention reader (fftshift) or a transposed one would be far off.
    shifted = np.fft.fftshift(reference, axes=(-2, -1))
    assert _rel_err(shifted, reference, body) > 0.3
    # The paper's preprocessing: centre slices, centre crop / pad to a fixed size.
    out2 = convert_calgary(src, tmp_path / "c.h5", size=(48, 48), center_slices=3)
    with h5py.File(out2) as f:
        cropped = f["cimage"][()]
        assert f.attrs["slices"] == f"1..3 of {SLICES}"
    np.testing.assert_allclose(cropped, _crop_pad(cimage[1:4], (48, 48)), atol=1e-6)


def _crop_pad(x: np.ndarray, size) -> np.ndarray:
    """Centre crop rows (56 → 48) and zero-pad columns (44 → 48), written out by hand."""
    top = (x.shape[1] - size[0]) // 2
    x = x[:, top : top + size[0]]
    pad = size[1] - x.shape[2]
    return np.pad(x, ((0, 0), (0, 0), (pad // 2, pad - pad // 2)))


def test_partial_fourier_region_is_treated_as_not_acquired(cc359, tmp_path):
    """Values written where the documentation says nothing was acquired are ignored (zeroed
    again, as DIRECT does), so the image equals the one from the zero-filled file."""
    src, _ = cc359
    first = convert_calgary(src, tmp_path / "a.h5", size=None)
    with h5py.File(src, "a") as f:
        raw = f["kspace"][()]
        raw[:, :, int(np.ceil(KZ * ACQUIRED)) :] = 123.0
        f["kspace"][...] = raw
    second = convert_calgary(src, tmp_path / "b.h5", size=None)
    with h5py.File(first) as a, h5py.File(second) as b:
        np.testing.assert_array_equal(a["cimage"][()], b["cimage"][()])
