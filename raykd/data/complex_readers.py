"""Raw complex data → raykd complex volumes (``cimage`` + ``image``): fastMRI single-coil k-space
and the Calgary-Campinas (CC-359) 12-channel raw data.

fastMRI single-coil (Zbontar et al. 2018; the ``fastmri`` package's ``SliceDataset`` and
``transforms``): ``kspace`` complex64 [slices, H, W], *centred* (DC in the middle), readout along
H (640, twice oversampled), phase encoding along W; ``reconstruction_esc`` float32
[slices, 320, 320] = |centre crop 320×320 of the centred orthonormal inverse 2D FFT|; attrs
``max``, ``norm``, ``acquisition``, ``patient_id``. The converter computes the same complex image
(``fftshift(ifft2(ifftshift(k)))``, ortho), crops it to 320×320 as fastMRI does (``crop=None``:
keep the full measured grid, whose k-space is then exactly the measured one: ``kspace_grid:
measured``, the input of ``data.kspace: measured``) and transposes it so fastMRI's phase-encode
columns become raykd's phase-encode rows (raykd masks keep rows; ``phase_encoding: rows``).
On the full grid, raykd's uncentred ``fft2`` of the stored image is the file's k-space
``ifftshift``-ed and transposed, times ``(-1)^(ky+kx)`` for even sizes (the image-domain
``fftshift``): the same measured values on the same lines, the sign pattern a fixed phase.

Calgary-Campinas 12-channel raw data (CC-359, Souza et al. 2018; read as NKI-AI/direct's
``CalgaryCampinasDataset`` does, direct/data/datasets.py): one h5 per volume with ``kspace``
float [slices, ky, kz, 2·coils] (218 × 170 × 24 for the 12-channel set), real and imaginary parts
*interleaved* along the last axis (``k[..., ::2] + 1j·k[..., 1::2]``), the readout already
inverse-Fourier-transformed (hybrid x-ky-kz: each slice is a 2D k-space), *uncentred* FFT
convention (DIRECT: ``fft2(centered=False)``), and the last 15 % of kz not acquired (partial
Fourier, zero-filled; DIRECT zeroes it again). The dataset's own reference images are the
root-sum-of-squares of the channel-wise inverse FFTs. The SFT-KD-Recon paper (Appendix B.2.1)
used the CC-359 *single-channel* release instead: 35 volumes (25 train / 10 validation),
256×256, "12-channel receiver coil ... combined to fetch a single-coil acquisition" — per the
dataset's description, combined by the vendor's tools (GE Orchestra) with normalised coil
sensitivity maps into one complex image. Those maps are not published (the single-channel
release is discontinued), so :func:`combine_coils` estimates them from the data:
``S_c = L_c / RSS(L) · exp(-i·angle(L_ref))`` with ``L_c`` the low-resolution coil images (the
central ``calib`` k-space lines and columns) and ``ref`` the coil with the most energy; the
combined image ``Σ_c conj(S_c)·x_c`` has the RSS magnitude where the maps are smooth and keeps the
image phase relative to the reference coil (a sensitivity-weighted combination; no ESPIRiT).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from raykd.data.transforms import center_crop_or_pad
from raykd.data.volumes import (
    MEASURED_GRID,
    PHASE_ENCODING_ATTR,
    PHASE_ENCODING_ROWS,
    open_h5,
    write_complex_volume,
)
from raykd.errors import DataError

FASTMRI_CROP = (320, 320)
CALGARY_PARTIAL_FOURIER = 0.85  # fraction of kz acquired (CC-359 description; DIRECT)
CALGARY_CALIB = 24  # central k-space lines/columns used to estimate the coil maps


def _dataset(f: h5py.File, key: str, path: Path, expected: str) -> h5py.Dataset:
    if key not in f:
        raise DataError(
            f"{path}: missing key '{key}' (found {sorted(f.keys())}); expected {expected}"
        )
    ds = f[key]
    if not isinstance(ds, h5py.Dataset):
        raise DataError(f"{path}: '{key}' is a group; expected {expected}")
    return ds


def _attrs(f: h5py.File, path: Path, source: str, names: tuple[str, ...]) -> dict[str, Any]:
    attrs: dict[str, Any] = {"source": source, "source_file": path.name}
    for name in names:
        value = f.attrs.get(name)
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        if value is not None and not isinstance(value, np.ndarray | list):
            attrs[f"{source}_{name}"] = value
    return attrs


def centred_ifft2(kspace: np.ndarray) -> np.ndarray:
    """fastMRI's image of centred k-space: ``fftshift(ifft2(ifftshift(k)))``, orthonormal."""
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace, axes=axes), norm="ortho"), axes)


def convert_fastmri_complex(
    path: str | Path, out_path: str | Path, crop: tuple[int, int] | None = FASTMRI_CROP
) -> Path:
    """One fastMRI single-coil file → a raykd complex volume (module docstring)."""
    path = Path(path)
    expected = "complex64 [slices, H, W] centred single-coil k-space"
    with open_h5(path) as f:
        ds = _dataset(f, "kspace", path, expected)
        if not np.issubdtype(ds.dtype, np.complexfloating):
            raise DataError(f"{path}: 'kspace' has dtype {ds.dtype}; expected {expected}")
        if ds.ndim != 3:
            what = " (multi-coil: not supported for complex data)" if ds.ndim == 4 else ""
            raise DataError(f"{path}: 'kspace' has shape {ds.shape}{what}; expected {expected}")
        if ds.shape[0] == 0:
            raise DataError(f"{path}: 'kspace' holds no slices")
        if crop is None and "mask" in f and not np.all(np.asarray(f["mask"]) != 0):
            raise DataError(
                f"{path}: 'kspace' is undersampled ('mask' samples some lines only: a test-split "
                "file); the measured grid needs fully sampled k-space"
            )
        if crop is not None and (ds.shape[1] < crop[0] or ds.shape[2] < crop[1]):
            raise DataError(
                f"{path}: 'kspace' slices are {ds.shape[1]}x{ds.shape[2]}, smaller than the "
                f"{crop[0]}x{crop[1]} fastMRI crop"
            )
        slices = []
        for i in range(ds.shape[0]):  # one slice at a time: bounded memory
            image = centred_ifft2(np.asarray(ds[i], dtype=np.complex64))
            if crop is not None:
                image = center_crop_or_pad(image, crop)
            slices.append(image.T)  # phase encoding (fastMRI columns) → raykd rows
        attrs = _attrs(f, path, "fastmri", ("acquisition", "patient_id", "max", "norm"))
    attrs.update(
        source_key="kspace",
        layout="transposed: phase encoding along axis 0 (raykd rows)",
        crop=list(crop) if crop else "none (the full measured grid)",
        kspace_grid=MEASURED_GRID if crop is None else "cropped",
    )
    attrs[PHASE_ENCODING_ATTR] = PHASE_ENCODING_ROWS
    return write_complex_volume(out_path, np.stack(slices), attrs)


def calgary_coils(kspace: np.ndarray, path: Path) -> np.ndarray:
    """CC-359 interleaved real/imag [..., 2·coils] → complex [..., coils, ky, kz] (DIRECT)."""
    if kspace.shape[-1] % 2:
        raise DataError(
            f"{path}: 'kspace' last axis is {kspace.shape[-1]}; expected 2 x coils (real and "
            "imaginary parts interleaved)"
        )
    coils = kspace[..., ::2] + 1j * kspace[..., 1::2]
    return np.moveaxis(coils, -1, -3).astype(np.complex64)


def combine_coils(coil_kspace: np.ndarray, calib: int = CALGARY_CALIB) -> np.ndarray:
    """One complex image from coil k-space [coils, H, W] (uncentred), as the module says."""
    images = np.fft.ifft2(coil_kspace, norm="ortho")
    h, w = coil_kspace.shape[-2:]
    lines = np.zeros(h, bool)
    cols = np.zeros(w, bool)
    lines[np.argsort(np.abs(np.fft.fftfreq(h)), kind="stable")[: min(calib, h)]] = True
    cols[np.argsort(np.abs(np.fft.fftfreq(w)), kind="stable")[: min(calib, w)]] = True
    low = np.fft.ifft2(coil_kspace * np.outer(lines, cols), norm="ortho")
    rss_low = np.sqrt(np.sum(np.abs(low) ** 2, axis=0))
    ref = int(np.argmax(np.sum(np.abs(low) ** 2, axis=(1, 2))))
    phase_ref = np.exp(-1j * np.angle(low[ref]))
    maps = np.where(rss_low > 0, low / np.maximum(rss_low, 1e-30), 0) * phase_ref
    return np.sum(np.conj(maps) * images, axis=0).astype(np.complex64)


def convert_calgary(
    path: str | Path,
    out_path: str | Path,
    size: tuple[int, int] | None = (256, 256),
    center_slices: int | None = None,
) -> Path:
    """One CC-359 12-channel raw file → a raykd complex volume (module docstring).

    ``center_slices``: keep the centre N slices (the paper: 110); ``size``: centre crop / zero
    pad each combined image (the paper: 256×256).
    """
    path = Path(path)
    expected = "float [slices, ky, kz, 2 x coils] k-space, real/imaginary interleaved"
    with open_h5(path) as f:
        ds = _dataset(f, "kspace", path, expected)
        if np.issubdtype(ds.dtype, np.complexfloating) or not np.issubdtype(ds.dtype, np.floating):
            raise DataError(f"{path}: 'kspace' has dtype {ds.dtype}; expected {expected}")
        if ds.ndim != 4:
            raise DataError(f"{path}: 'kspace' has shape {ds.shape}; expected {expected}")
        n = ds.shape[0]
        if n == 0:
            raise DataError(f"{path}: 'kspace' holds no slices")
        keep = range(n)
        if center_slices is not None:
            if center_slices > n:
                raise DataError(
                    f"{path}: 'kspace' has {n} slices, fewer than the {center_slices} centre "
                    "slices asked for"
                )
            start = (n - center_slices) // 2
            keep = range(start, start + center_slices)
        out = []
        for i in keep:
            coils = calgary_coils(np.asarray(ds[i], dtype=np.float32), path)
            kz = coils.shape[-1]
            coils[..., int(np.ceil(kz * CALGARY_PARTIAL_FOURIER)) :] = 0  # not acquired
            image = combine_coils(coils)
            out.append(center_crop_or_pad(image, size) if size else image)
        attrs = _attrs(f, path, "calgary", ("patient_id",))
    attrs.update(
        source_key="kspace",
        coil_combination="sensitivity-weighted, maps from the central "
        f"{CALGARY_CALIB} lines/columns normalised by their RSS, reference-coil phase",
        slices=f"{keep.start}..{keep.stop - 1} of {n}",
        phase_encoding_note="rows are ky, columns kz (both phase encoded, 3D acquisition; "
        "kz partial Fourier); line masks sample ky",
    )
    attrs[PHASE_ENCODING_ATTR] = PHASE_ENCODING_ROWS
    return write_complex_volume(out_path, np.stack(out), attrs)
