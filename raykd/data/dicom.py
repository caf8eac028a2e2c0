"""DICOM folder → raykd h5 volumes (one file per patient and series).

Scanners and public releases (the Sunnybrook Cardiac Data among them) ship a folder of
single-frame DICOM files per patient, in no useful order. :func:`convert_dicom_folder` groups
them by ``(PatientID, SeriesInstanceUID)``, orders the frames by position then cine phase, and
writes the layout of :mod:`raykd.data.volumes` -- the same layout as
``../shared/data/sunnybrook``.

Headers are read first without pixel data, so a large folder is grouped cheaply and only one
series' pixels are held in memory at a time.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

from raykd.data.volumes import write_volume
from raykd.errors import DataError

# Positions closer than this (mm) are one slice position: float noise in the header must not
# split a cine stack or reorder its phases.
_POSITION_DECIMALS = 3


@dataclass(frozen=True)
class _Frame:
    path: Path
    position: float
    trigger_time: float | None
    instance: int
    sop_uid: str


def _float(value: Any) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _position(ds: pydicom.Dataset) -> float:
    """Slice position in mm: ``SliceLocation``, else the position projected on the slice normal.

    The projection is what ``SliceLocation`` approximates, and it is defined for every
    (oblique) plane as long as the orientation and position tags are present.
    """
    loc = _float(ds.get("SliceLocation"))
    if loc is not None:
        return loc
    ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    if ipp is not None and iop is not None and len(ipp) == 3 and len(iop) == 6:
        row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
        return float(np.dot(np.cross(row, col), np.asarray(ipp, float)))
    return 0.0


def _iter_files(folder: Path) -> Iterable[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            yield path


def _matches(series: str | Iterable[str] | None, ds: pydicom.Dataset) -> bool:
    if series is None:
        return True
    wanted = {series} if isinstance(series, str) else {str(s) for s in series}
    ids = {
        str(ds.get("SeriesInstanceUID", "")),
        str(ds.get("SeriesNumber", "")),
        str(ds.get("SeriesDescription", "")),
    }
    return bool(wanted & ids)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "unknown"


def _output_name(patient: str, series_uid: str, series_number: str | None, taken: set[str]) -> str:
    """``<patient>_s<number>.h5``, readable; a UID hash is added only if that name is taken."""
    digest = hashlib.sha1(series_uid.encode()).hexdigest()[:8]
    base = f"{_safe(patient)}_s{series_number}" if series_number else f"{_safe(patient)}_{digest}"
    name = f"{base}.h5"
    if name in taken:
        name = f"{base}_{digest}.h5"
    taken.add(name)
    return name


def _read_pixels(path: Path, shape: tuple[int, int]) -> np.ndarray:
    ds = pydicom.dcmread(path, force=False)
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # decoder missing, truncated pixel data, ...
        meta = getattr(ds, "file_meta", None)
        syntax = meta.get("TransferSyntaxUID", "?") if meta is not None else "?"
        raise DataError(
            f"{path}: cannot decode pixel data (transfer syntax {syntax}): {exc}; compressed "
            "DICOM needs a decoder plugin such as pylibjpeg or gdcm"
        ) from exc
    if pixels.shape != shape:
        raise DataError(
            f"{path}: pixel array has shape {pixels.shape}, expected {shape} from its header "
            "(multi-frame or colour DICOM is not supported)"
        )
    # Stored values -> modality units: the Modality LUT Sequence if present, else
    # RescaleSlope/Intercept (DICOM PS3.3 C.11.1), as pydicom implements them.
    return apply_modality_lut(pixels, ds).astype(np.float32)


@dataclass
class _Series:
    """One (PatientID, SeriesInstanceUID): its first header, in-plane size and file, frames."""

    header: pydicom.Dataset
    shape: tuple[int, int]
    first: Path
    frames: list[_Frame] = field(default_factory=list)


def convert_dicom_folder(
    folder: str | Path,
    out_dir: str | Path,
    *,
    series: str | Iterable[str] | None = None,
) -> list[Path]:
    """Convert every MR image series under ``folder`` (any depth) into one h5 volume each.

    ``series`` keeps only series whose SeriesInstanceUID, SeriesNumber or SeriesDescription
    equals one of the given strings. Frames are sorted by (slice position, TriggerTime,
    InstanceNumber); slice position is ``SliceLocation`` or, when absent, ImagePositionPatient
    projected on the slice normal. Pixel values get the modality LUT (a Modality LUT Sequence, or
    RescaleSlope/Intercept) and are stored as float32 without normalisation (the dataset
    normalises per slice on read).

    Files that are not DICOM, and DICOM files without pixel data (DICOMDIR, reports), are
    skipped with one warning that counts them. Returns the written files, sorted.
    """
    folder, out_dir = Path(folder), Path(out_dir)
    if not folder.is_dir():
        raise DataError(f"{folder}: DICOM folder not found (expected a folder of .dcm files)")
    groups = _group_series(folder, series)
    written: list[Path] = []
    taken: set[str] = set()
    for key in sorted(groups):
        frames = _unique_frames(folder, key, groups[key].frames)
        frames.sort(key=lambda f: (f.position, f.trigger_time or 0.0, f.instance))
        written.append(_write_series(folder, out_dir, key, groups[key], frames, taken))
    return sorted(written)


def _group_series(
    folder: Path, series: str | Iterable[str] | None
) -> dict[tuple[str, str], _Series]:
    """Read every header (no pixels) and group the image frames by (PatientID, series UID);
    warns once about skipped files, refuses a folder without a matching image."""
    groups: dict[tuple[str, str], _Series] = {}
    not_dicom: list[Path] = []
    no_pixels: list[Path] = []
    for path in _iter_files(folder):
        try:
            ds = pydicom.dcmread(path, force=False, stop_before_pixels=True)
        except InvalidDicomError:
            not_dicom.append(path)
            continue
        except Exception as exc:  # truncated header, unreadable file
            raise DataError(f"{path}: unreadable DICOM header: {exc}") from exc
        if "Rows" not in ds or "Columns" not in ds:
            no_pixels.append(path)
            continue
        if _matches(series, ds):
            _add_frame(groups, path, ds)
    skipped = len(not_dicom) + len(no_pixels)
    if skipped:
        examples = ", ".join(p.name for p in (not_dicom + no_pixels)[:3])
        warnings.warn(
            f"{folder}: skipped {len(not_dicom)} non-DICOM file(s) and {len(no_pixels)} DICOM "
            f"file(s) without image data (e.g. {examples})",
            stacklevel=3,  # the caller of convert_dicom_folder
        )
    if not groups:
        what = f" matching series {series!r}" if series is not None else ""
        raise DataError(f"{folder}: no DICOM image files{what} found (searched all subfolders)")
    return groups


def _add_frame(groups: dict[tuple[str, str], _Series], path: Path, ds: pydicom.Dataset) -> None:
    """File one single-frame greyscale image under its series (one in-plane size per series)."""
    frames = int(_float(ds.get("NumberOfFrames")) or 1)
    if frames > 1 or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DataError(
            f"{path}: NumberOfFrames={frames}, SamplesPerPixel={ds.get('SamplesPerPixel')}; "
            "expected single-frame greyscale images (enhanced multi-frame / colour DICOM "
            "is not supported)"
        )
    key = (str(ds.get("PatientID", "") or "unknown"), str(ds.get("SeriesInstanceUID", "")))
    shape = (int(ds.Rows), int(ds.Columns))
    group = groups.setdefault(key, _Series(ds, shape, path))
    if group.shape != shape:
        raise DataError(
            f"{path}: Rows x Columns = {shape[0]} x {shape[1]}, but {group.first.name} of the "
            f"same series (PatientID {key[0]}, SeriesInstanceUID {key[1]}) is "
            f"{group.shape[0]} x {group.shape[1]}; a volume needs one in-plane size"
        )
    group.frames.append(
        _Frame(
            path=path,
            position=round(_position(ds), _POSITION_DECIMALS),
            trigger_time=_float(ds.get("TriggerTime")),
            instance=int(_float(ds.get("InstanceNumber")) or 0),
            sop_uid=str(ds.get("SOPInstanceUID", path)),
        )
    )


def _unique_frames(folder: Path, key: tuple[str, str], frames: list[_Frame]) -> list[_Frame]:
    """The frames without repeated SOPInstanceUIDs (one instance copied twice into the
    folder), with a warning that counts them."""
    unique, seen, dupes = [], set(), 0
    for fr in frames:
        if fr.sop_uid in seen:
            dupes += 1
            continue
        seen.add(fr.sop_uid)
        unique.append(fr)
    if dupes:
        warnings.warn(
            f"{folder}: PatientID {key[0]}, series {key[1]}: ignored {dupes} duplicate "
            "SOPInstanceUID file(s)",
            stacklevel=3,  # the caller of convert_dicom_folder
        )
    return unique


def _write_series(
    folder: Path,
    out_dir: Path,
    key: tuple[str, str],
    group: _Series,
    frames: list[_Frame],
    taken: set[str],
) -> Path:
    """Read the sorted frames' pixels and write one volume with the series' header facts."""
    patient, series_uid = key
    image = np.stack([_read_pixels(fr.path, group.shape) for fr in frames])
    hdr = group.header
    extra = {"slice_location": np.array([f.position for f in frames], np.float32)}
    if all(f.trigger_time is not None for f in frames):
        extra["trigger_time"] = np.array([f.trigger_time for f in frames], np.float32)
    attrs: dict[str, Any] = {
        "patient_id": patient,
        "series_uid": series_uid,
        "source": "dicom",
        "source_folder": folder.name,  # a name, not a local absolute path
    }
    spacing = hdr.get("PixelSpacing")
    if spacing is not None and len(spacing) == 2:
        attrs["pixel_spacing_mm"] = np.array([float(s) for s in spacing])
    optional = {
        "slice_thickness_mm": _float(hdr.get("SliceThickness")),
        "field_strength_T": _float(hdr.get("MagneticFieldStrength")),
    }
    attrs.update({k: v for k, v in optional.items() if v is not None})
    for attr, tag in (
        ("manufacturer", "Manufacturer"),
        ("series_description", "SeriesDescription"),
    ):
        if hdr.get(tag):
            attrs[attr] = str(hdr.get(tag))
    number = hdr.get("SeriesNumber")
    name = _output_name(patient, series_uid, None if number in (None, "") else str(number), taken)
    return write_volume(out_dir / name, image, attrs=attrs, extra=extra)
