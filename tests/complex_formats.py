"""Writers of tiny files in the raw layouts raykd converts (for tests): fastMRI single-coil and
Calgary-Campinas 12-channel, from a complex image volume in raykd's orientation (phase encoding
along rows). The layouts are the ones documented in :mod:`raykd.data.complex_readers`."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from raykd.data.complex_readers import CALGARY_PARTIAL_FOURIER


def write_fastmri_singlecoil(path: Path, cimage: np.ndarray, crop: tuple[int, int]) -> Path:
    """``kspace`` complex64 [N, H, W] centred (fastMRI orientation: phase encoding along W),
    ``reconstruction_esc`` = |centre crop of its centred inverse FFT|, fastMRI attrs."""
    image = np.swapaxes(cimage, 1, 2)  # raykd rows (phase encoding) → fastMRI columns
    axes = (-2, -1)
    kspace = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image, axes=axes), norm="ortho"), axes)
    h, w = image.shape[1:]
    top, left = (h - crop[0]) // 2, (w - crop[1]) // 2
    esc = np.abs(image[:, top : top + crop[0], left : left + crop[1]]).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace.astype(np.complex64))
        f.create_dataset("reconstruction_esc", data=esc)
        f.attrs["max"] = float(esc.max())
        f.attrs["norm"] = float(np.linalg.norm(esc))
        f.attrs["acquisition"] = "CORPD_FBK"
        f.attrs["patient_id"] = path.stem
    return path


def coil_maps(shape: tuple[int, int], coils: int = 12) -> np.ndarray:
    """Smooth complex sensitivities of a ring of coils [coils, H, W] (Gaussian profiles with a
    linear phase each)."""
    u = np.linspace(-1, 1, shape[0])[:, None]
    v = np.linspace(-1, 1, shape[1])[None, :]
    maps = []
    for c in range(coils):
        a = 2 * np.pi * c / coils
        cu, cv = 1.2 * np.cos(a), 1.2 * np.sin(a)
        mag = np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / 1.5)
        maps.append(mag * np.exp(1j * (0.3 * c + 0.5 * (u * np.cos(a) + v * np.sin(a)))))
    return np.stack(maps).astype(np.complex64)


def write_calgary(path: Path, cimage: np.ndarray, coils: int = 12) -> Path:
    """``kspace`` float32 [N, ky, kz, 2·coils]: uncentred coil k-spaces, real/imag interleaved,
    the last 15 % of kz zero (partial Fourier), as in the CC-359 12-channel release."""
    maps = coil_maps(cimage.shape[1:], coils)
    k = np.fft.fft2(maps[None] * cimage[:, None], norm="ortho")  # [N, C, ky, kz]
    kz = k.shape[-1]
    k[..., int(np.ceil(kz * CALGARY_PARTIAL_FOURIER)) :] = 0
    k = np.moveaxis(k, 1, -1)  # [N, ky, kz, C]
    out = np.empty((*k.shape[:-1], 2 * coils), np.float32)
    out[..., ::2], out[..., 1::2] = k.real, k.imag
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=out)
    return path
