"""The on-disk layout raykd reads: one HDF5 file per volume.

Layout (the Sunnybrook files in ``../shared/data/sunnybrook`` follow it)::

    image            float32 [N, H, W]  magnitude slices, any scale (normalised per slice on read)
    slice_location   float32 [N]        optional, mm
    trigger_time     float32 [N]        optional, ms (cine phase)
    cimage           complex64 [N, H, W] optional: the complex images (complex data, data.complex;
                                        ``image`` then holds their magnitude)
    attrs            optional metadata (patient_id, pixel_spacing_mm, source, license, ...)

Every converter in :mod:`raykd.data` writes this layout with :func:`write_volume`, and every
reader goes through :func:`inspect_volume`, which turns the usual failures (missing file,
truncated file, missing key, wrong rank) into one clear :class:`~raykd.errors.DataError`.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from raykd.errors import DataError

IMAGE_KEY = "image"
COMPLEX_KEY = "cimage"
# Which axis of a slice [H, W] is phase encoding: "rows" (axis 0, what raykd's line masks
# sample) or "columns". Written by the fastMRI and Calgary-Campinas converters.
PHASE_ENCODING_ATTR = "phase_encoding"
PHASE_ENCODING_ROWS = "rows"
# ``kspace_grid`` of a volume kept on the file's full measured k-space grid (no crop).
MEASURED_GRID = "measured"


@dataclass(frozen=True)
class VolumeInfo:
    path: Path
    num_slices: int
    shape: tuple[int, int]
    slice_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.slice_ids:
            object.__setattr__(self, "slice_ids", tuple(range(self.num_slices)))

    @property
    def key(self) -> str:
        """A stable identifier for the volume (its file stem), used for seeding and reports."""
        return self.path.stem


def open_h5(path: str | Path) -> h5py.File:
    """Open an h5 file read-only, with a clear error when it is missing or not valid HDF5."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(
            f"{path}: cannot be opened as HDF5 (truncated or not an h5 file: {exc})"
        ) from exc


def inspect_volume(path: str | Path, key: str = IMAGE_KEY, complex: bool = False) -> VolumeInfo:
    """Check that ``path`` follows the layout and return its size (``complex``: ``key`` must
    hold complex images)."""
    path = Path(path)
    with open_h5(path) as f:
        if key not in f:
            raise DataError(
                f"{path}: missing key '{key}' (found keys: {sorted(f.keys())}); expected a "
                f"float [N, H, W] dataset named '{key}'"
            )
        ds = f[key]
        if not isinstance(ds, h5py.Dataset) or ds.ndim != 3:
            shape = getattr(ds, "shape", None)
            raise DataError(f"{path}: '{key}' must be a [N, H, W] dataset, got shape {shape}")
        if ds.shape[0] == 0:
            raise DataError(f"{path}: '{key}' holds no slices")
        is_complex = np.issubdtype(ds.dtype, np.complexfloating)
        if is_complex and not complex:
            raise DataError(f"{path}: '{key}' is complex; expected magnitude (real) images")
        if complex and not is_complex:
            raise DataError(
                f"{path}: '{key}' has dtype {ds.dtype}; expected complex images (complex64) for "
                "complex data (write them with raykd prepare)"
            )
        return VolumeInfo(path=path, num_slices=int(ds.shape[0]), shape=tuple(ds.shape[1:]))


def volume_attr(path: str | Path, name: str) -> Any:
    """One attribute of a volume (bytes decoded), None when absent."""
    with open_h5(path) as f:
        value = f.attrs.get(name)
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def phase_encoding(path: str | Path) -> str | None:
    """The phase-encode axis a volume records ("rows" | "columns"), None when unknown.

    A fastMRI volume without the attribute was written before it existed: by the complex
    converter (transposed, ``layout`` says so: rows) or by the magnitude converter, which did
    not transpose then (fastMRI's own layout: phase encoding along the columns).
    """
    value = volume_attr(path, PHASE_ENCODING_ATTR)
    if value is None and volume_attr(path, "source") == "fastmri":
        # The complex converter transposed before the attribute existed, and said so.
        return "rows" if str(volume_attr(path, "layout")).startswith("transposed") else "columns"
    return None if value is None else str(value)


F32_MAX = float(np.finfo(np.float32).max)
SCAN_CHUNK = 16  # slices read at a time by scan_volume


def _nonfinite_cause(path: Path, key: str, raw: np.ndarray, offset: int = 0) -> str | None:
    """Why a volume is not finite as float32, naming the first bad slice; None when finite.

    Checked on the values as they will be used (float32), but the cause is taken from the
    stored values: a finite float64 1e300 overflows float32, which is not 'NaN or Inf'.
    """
    if np.iscomplexobj(raw):
        raw = np.abs(raw)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is what we look for
        as_f32 = raw.astype(np.float32) if raw.dtype != np.float32 else raw
    bad = ~np.isfinite(as_f32)
    if not bad.any():
        return None
    i = int(np.argwhere(bad.reshape(bad.shape[0], -1).any(axis=1))[0, 0])
    stored, s = raw[i], offset + i
    if np.isnan(stored).any():
        what = "NaN"
    elif np.isinf(stored).any():
        what = "Inf"
    else:
        peak = float(np.abs(stored.astype(np.float64)).max())
        return (
            f"{path}: slice {s} of '{key}' holds {peak:.3g} ({raw.dtype}), which overflows "
            f"float32 (max {F32_MAX:.3g}); rescale the volume"
        )
    return f"{path}: slice {s} of '{key}' contains {what}; expected finite magnitude values"


def scan_volume(
    info: VolumeInfo, size: tuple[int, int], key: str = IMAGE_KEY
) -> tuple[VolumeInfo, str | None]:
    """Whole-volume value checks at load time; returns the usable slices and a note.

    Refused (DataError naming the file): non-finite values or float32 overflow in any slice
    (not only the ones a run samples), a constant volume (all zeros included: nothing to
    reconstruct, every metric undefined), slices smaller than the crop size (zero padding
    would be trained on and inflate PSNR). Constant slices inside a non-constant volume are
    skipped, and the returned note says which.
    """
    stat = info.path.stat()
    memo = (str(info.path.resolve()), stat.st_mtime_ns, stat.st_size, key, tuple(size))
    if memo not in _SCANNED:  # a chain's stages and splits rebuild datasets of the same files
        _SCANNED[memo] = _scan(info, size, key)
    keep, note = _SCANNED[memo]
    kept = tuple(i for i in info.slice_ids if i in keep)
    return dataclasses.replace(info, slice_ids=kept), note


_SCANNED: dict[tuple, tuple[frozenset[int], str | None]] = {}


def _scan(info: VolumeInfo, size: tuple[int, int], key: str) -> tuple[frozenset[int], str | None]:
    path = info.path
    h, w = info.shape
    if h < size[0] or w < size[1]:
        raise DataError(
            f"{path}: slices are {h}x{w}, smaller than the crop size {size[0]}x{size[1]}; "
            "use a smaller data.size / --size (padding would be scored as image)"
        )
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    lo, hi = np.empty(info.num_slices), np.empty(info.num_slices)
    with open_h5(path) as f:
        ds = f[key]
        for start in range(0, info.num_slices, SCAN_CHUNK):  # bounded memory for big volumes
            raw = np.asarray(ds[start : start + SCAN_CHUNK])
            cause = _nonfinite_cause(path, key, raw, offset=start)
            if cause:
                raise DataError(cause)
            crop = np.abs(raw[:, top : top + size[0], left : left + size[1]]).astype(np.float32)
            flat = crop.reshape(crop.shape[0], -1)
            lo[start : start + len(flat)], hi[start : start + len(flat)] = flat.min(1), flat.max(1)
    if hi.max() == lo.min():
        raise DataError(
            f"{path}: '{key}' is constant (every value {float(hi.max()):g} in the "
            f"{size[0]}x{size[1]} crop); nothing to reconstruct or score"
        )
    constant = [i for i in range(info.num_slices) if hi[i] == lo[i]]
    keep = frozenset(i for i in range(info.num_slices) if hi[i] != lo[i])
    if not constant:
        return keep, None
    note = (
        f"{path}: skipping {len(constant)} constant slice(s) {constant[:10]}"
        f"{'...' if len(constant) > 10 else ''} (nothing to reconstruct or score)"
    )
    return keep, note


def find_volumes(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """Resolve a folder (all ``*.h5`` inside, sorted) or an explicit list of files."""
    if isinstance(source, str | Path):
        source = Path(source)
        if source.is_dir():
            paths = sorted(source.glob("*.h5"))
            if not paths:
                raise DataError(f"{source}: folder holds no .h5 volumes")
        else:
            paths = [source]
    else:
        paths = [Path(p) for p in source]
    for p in paths:
        if not p.is_file():
            raise DataError(f"{p}: file not found")
    return paths


def write_complex_volume(
    path: str | Path, cimage: np.ndarray, attrs: dict[str, Any] | None = None
) -> Path:
    """Write complex images [N, H, W] as ``cimage`` (complex64) with their magnitude as
    ``image``, so the file also reads as an ordinary magnitude volume."""
    cimage = np.asarray(cimage)
    if not np.iscomplexobj(cimage):
        raise DataError(f"{path}: complex volume expected, got dtype {cimage.dtype}")
    if not np.all(np.isfinite(cimage)):
        raise DataError(f"{path}: volume contains NaN or Inf values; refusing to write it")
    extra = {COMPLEX_KEY: cimage.astype(np.complex64)}
    return write_volume(path, np.abs(cimage), {**(attrs or {}), "complex": True}, extra)


def write_volume(
    path: str | Path,
    image: np.ndarray,
    attrs: dict[str, Any] | None = None,
    extra: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write one volume atomically (temp file + rename), validating values first."""
    path = Path(path)
    image = np.asarray(image)
    if image.ndim != 3:
        raise DataError(f"{path}: volume must be [N, H, W], got shape {image.shape}")
    if np.iscomplexobj(image):
        image = np.abs(image)
    if not np.all(np.isfinite(image)):
        raise DataError(f"{path}: volume contains NaN or Inf values; refusing to write it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".h5.tmp")
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset(IMAGE_KEY, data=image.astype(np.float32), chunks=(1, *image.shape[1:]))
            for name, arr in (extra or {}).items():
                f.create_dataset(name, data=arr)
            for name, value in (attrs or {}).items():
                f.attrs[name] = value
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
