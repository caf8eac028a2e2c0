"""fastMRI h5 → raykd h5 volume (magnitude images).

fastMRI files hold centred (fftshifted) k-space and, for train/val, reference reconstructions.
The reference reconstruction is preferred by default because it is exactly what the fastMRI
leaderboard compares against; ``prefer="kspace"`` recomputes the image instead (needed for the
test split, which has no reconstructions). Either way the result is a 320x320 magnitude image,
the fastMRI evaluation crop. raykd then re-simulates acquisition with its own masks.

Layout: fastMRI images have the readout along their rows and phase encoding along their
columns; raykd masks keep whole *rows*, so every fastMRI path (this one and
:func:`raykd.data.complex_readers.convert_fastmri_complex`) transposes each slice, putting
phase encoding along raykd's rows, and records it in the volume's ``phase_encoding`` attribute
(:data:`raykd.data.volumes.PHASE_ENCODING_ATTR`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from raykd.data.transforms import center_crop_or_pad
from raykd.data.volumes import PHASE_ENCODING_ATTR, PHASE_ENCODING_ROWS, open_h5, write_volume
from raykd.errors import ConfigError, DataError

RECONSTRUCTION_KEYS = ("reconstruction_esc", "reconstruction_rss")
KSPACE_KEY = "kspace"
CROP = (320, 320)


def kspace_to_image(kspace: np.ndarray) -> np.ndarray:
    """Magnitude image of centred k-space ``[..., H, W]``; ``[C, H, W]`` coils are combined by RSS.

    A 2D array is one coil; a 3D array is one slice's coils (the multi-coil layout per slice).
    """
    axes = (-2, -1)
    image = np.fft.fftshift(
        np.fft.ifft2(np.fft.ifftshift(kspace, axes=axes), norm="ortho"), axes=axes
    )
    magnitude = np.abs(image)
    if magnitude.ndim == 3:
        magnitude = np.sqrt(np.sum(magnitude**2, axis=0))
    return magnitude.astype(np.float32)


def _dataset(f: h5py.File, key: str, path: Path) -> h5py.Dataset:
    ds = f[key]
    if not isinstance(ds, h5py.Dataset):
        raise DataError(f"{path}: '{key}' is a group, expected a dataset")
    return ds


def convert_fastmri(
    path: str | Path,
    out_path: str | Path,
    *,
    prefer: Literal["reconstruction", "kspace"] = "reconstruction",
) -> Path:
    """Convert one fastMRI single- or multi-coil file to the raykd layout, 320x320 magnitude,
    transposed so that phase encoding runs along raykd's rows (module docstring).

    Source, by ``prefer``: ``reconstruction_esc`` (single-coil) or ``reconstruction_rss``
    (multi-coil) as stored, or ``kspace`` [N, H, W] (single-coil) / [N, C, H, W] (multi-coil,
    root-sum-of-squares over coils) inverted with an orthonormal centred 2D IFFT. When the
    preferred source is absent the other one is used.
    """
    if prefer not in ("reconstruction", "kspace"):
        raise ConfigError(f"prefer must be 'reconstruction' or 'kspace', got {prefer!r}")
    path = Path(path)
    with open_h5(path) as f:
        recon_key = next((k for k in RECONSTRUCTION_KEYS if k in f), None)
        has_kspace = KSPACE_KEY in f
        if recon_key is None and not has_kspace:
            expected = [*RECONSTRUCTION_KEYS, KSPACE_KEY]
            raise DataError(
                f"{path}: no fastMRI image data; expected one of {expected}, found keys "
                f"{sorted(f.keys())}"
            )
        use_kspace = has_kspace and (prefer == "kspace" or recon_key is None)
        source_key = KSPACE_KEY if use_kspace or recon_key is None else recon_key
        image = _kspace_image(f, path) if use_kspace else _reconstruction_image(f, source_key, path)
        if image.shape[0] == 0:
            raise DataError(f"{path}: '{source_key}' holds no slices")
        attrs = _attrs(f, path, source_key)
    # fastMRI's phase-encode columns → raykd's rows (the axis raykd's masks sample).
    return write_volume(out_path, np.ascontiguousarray(image.transpose(0, 2, 1)), attrs=attrs)


def _kspace_image(f: h5py.File, path: Path) -> np.ndarray:
    """[N, 320, 320] magnitude from the file's k-space (single- or multi-coil)."""
    ds = _dataset(f, KSPACE_KEY, path)
    if ds.ndim not in (3, 4) or not np.issubdtype(ds.dtype, np.complexfloating):
        raise DataError(
            f"{path}: '{KSPACE_KEY}' has shape {ds.shape} and dtype {ds.dtype}; expected "
            "complex [N, H, W] (single-coil) or [N, C, H, W] (multi-coil)"
        )
    if not ds.shape[0]:
        return np.zeros((0, *CROP), np.float32)
    # One slice at a time: multi-coil brain volumes are hundreds of MB in k-space.
    return np.stack([center_crop_or_pad(kspace_to_image(ds[i]), CROP) for i in range(ds.shape[0])])


def _reconstruction_image(f: h5py.File, key: str, path: Path) -> np.ndarray:
    """[N, 320, 320] magnitude from a stored reconstruction."""
    ds = _dataset(f, key, path)
    if ds.ndim != 3:
        raise DataError(f"{path}: '{key}' has shape {ds.shape}; expected magnitude [N, H, W]")
    return center_crop_or_pad(np.abs(ds[()]).astype(np.float32), CROP)


def _attrs(f: h5py.File, path: Path, source_key: str) -> dict[str, Any]:
    """Provenance plus the file's ``acquisition`` and ``patient_id`` when it has them."""
    attrs: dict[str, Any] = {
        "source": "fastmri",
        "source_file": path.name,
        "source_key": source_key,
        PHASE_ENCODING_ATTR: PHASE_ENCODING_ROWS,
        "layout": "transposed: fastMRI's phase-encode columns are raykd's rows",
    }
    for name in ("acquisition", "patient_id"):
        value = f.attrs.get(name)
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        if isinstance(value, str) and value:
            attrs[name] = value
    return attrs
