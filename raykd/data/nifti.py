"""NIfTI volume → raykd h5 volume of 2D slices.

Public brain and cardiac sets (MRBrainS, ACDC) ship NIfTI. The image is first reoriented to the
closest canonical (RAS+) orientation so that ``axis=2`` means axial for any scanner orientation,
then cut into 2D slices; slices that are almost empty (air above the head, below the neck)
are dropped because they teach a reconstruction network nothing and skew per-slice metrics.

Slice orientation: each slice is rotated 90° so that the higher end of the slice's second
in-plane axis is at the top (for axial: anterior up, patient right on the image right).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np

from raykd.data.volumes import write_volume
from raykd.errors import ConfigError, DataError

# A pixel is foreground when above this fraction of the volume maximum.
FOREGROUND_LEVEL = 0.05


def load_nifti(path: str | Path) -> nib.spatialimages.SpatialImage:
    """Load a NIfTI file with a clear error for a missing or unreadable one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: NIfTI file not found")
    try:
        # a NIfTI file loads as a Nifti1Image, a SpatialImage
        return cast(nib.spatialimages.SpatialImage, nib.load(path))
    except Exception as exc:  # nibabel raises ImageFileError, EOFError, OSError, zlib errors
        raise DataError(
            f"{path}: cannot be read as NIfTI (.nii/.nii.gz expected; truncated?): {exc}"
        ) from exc


def nifti_slices(
    img: nib.spatialimages.SpatialImage,
    *,
    axis: int = 2,
    min_foreground: float = 0.05,
    frame: int | None = None,
    source: str = "NIfTI image",
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Reorient, cut and filter slices: returns ``(image [N,H,W], slice_location [N], attrs)``.

    ``slice_location`` is the world (RAS, mm) coordinate along ``axis`` of each kept slice;
    ``attrs`` holds ``pixel_spacing_mm`` and ``slice_thickness_mm`` from the voxel size.
    """
    if axis not in (0, 1, 2):
        raise ConfigError(f"{source}: axis must be 0, 1 or 2, got {axis!r}")
    if not 0.0 <= min_foreground <= 1.0:
        raise ConfigError(f"{source}: min_foreground must be in [0, 1], got {min_foreground!r}")
    img = nib.as_closest_canonical(_volume_3d(img, frame, source))
    data = np.asarray(img.get_fdata(dtype=np.float32))
    if not np.all(np.isfinite(data)):
        raise DataError(f"{source}: image contains NaN or Inf voxels")
    peak = float(data.max())
    if peak <= 0:
        raise DataError(f"{source}: image has no positive voxels (max {peak}); nothing to convert")

    moved = np.moveaxis(data, axis, 0)  # [N, a, b], a < b the remaining axes in order
    fraction = (moved > FOREGROUND_LEVEL * peak).mean(axis=(1, 2))
    keep = np.flatnonzero(fraction >= min_foreground)
    if keep.size == 0:
        raise DataError(
            f"{source}: no slice along axis {axis} has a foreground fraction >= "
            f"{min_foreground} (largest is {fraction.max():.3f}); lower min_foreground"
        )
    slices = np.ascontiguousarray(np.rot90(moved[keep], k=1, axes=(1, 2)), dtype=np.float32)
    return slices, _slice_locations(img, keep, axis), _slice_attrs(img, axis)


def _volume_3d(
    img: nib.spatialimages.SpatialImage, frame: int | None, source: str
) -> nib.spatialimages.SpatialImage:
    """The image itself when 3D; frame ``frame`` of a 4D one (a single-frame 4D: frame 0)."""
    ndim = len(img.shape)
    if ndim == 4 and img.shape[3] == 1 and frame is None:
        frame = 0
    if ndim == 4:
        if frame is None:
            raise DataError(
                f"{source}: 4D image of shape {img.shape} (e.g. a cine or time series); pass "
                f"frame=<0..{img.shape[3] - 1}> to choose the 3D frame to convert"
            )
        if not -img.shape[3] <= frame < img.shape[3]:
            raise DataError(f"{source}: frame={frame} out of range for {img.shape[3]} frames")
        return img.slicer[..., frame]
    if ndim != 3:
        raise DataError(f"{source}: expected a 3D (or 4D with frame=) image, got shape {img.shape}")
    return img


def _slice_locations(
    img: nib.spatialimages.SpatialImage, keep: np.ndarray, axis: int
) -> np.ndarray:
    """World coordinate along ``axis`` of each kept slice, taken at the in-plane centre."""
    centre = (np.asarray(img.shape[:3], float) - 1) / 2
    vox = np.tile(centre, (keep.size, 1))
    vox[:, axis] = keep
    return nib.affines.apply_affine(img.affine, vox)[:, axis].astype(np.float32)


def _slice_attrs(img: nib.spatialimages.SpatialImage, axis: int) -> dict[str, Any]:
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    in_plane = [zooms[i] for i in range(3) if i != axis]
    return {
        # rows run along the second in-plane axis after rot90, columns along the first
        "pixel_spacing_mm": np.array([in_plane[1], in_plane[0]]),
        "slice_thickness_mm": zooms[axis],
        "orientation": "".join(nib.aff2axcodes(img.affine)),
        "slice_axis": axis,
    }


def convert_nifti(
    path: str | Path,
    out_path: str | Path,
    *,
    axis: int = 2,
    min_foreground: float = 0.05,
    frame: int | None = None,
) -> Path:
    """Convert one NIfTI volume into one h5 volume of 2D slices along ``axis``.

    Slices whose foreground fraction (pixels above 5% of the volume maximum) is below
    ``min_foreground`` are dropped. A 4D image needs ``frame`` (the index along the 4th axis).
    """
    path = Path(path)
    img = load_nifti(path)
    image, location, attrs = nifti_slices(
        img, axis=axis, min_foreground=min_foreground, frame=frame, source=str(path)
    )
    attrs.update(source="nifti", source_file=path.name)
    if frame is not None:
        attrs["frame"] = int(frame)
    return write_volume(out_path, image, attrs=attrs, extra={"slice_location": location})
