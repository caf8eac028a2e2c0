"""Readers/converters: DICOM, NIfTI, fastMRI, built-in MNI152, shared Sunnybrook folder.

All fixtures are generated here in ``tmp_path``; only the Sunnybrook test reads shared data.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage, generate_uid

from raykd import paths
from raykd.data.builtin import builtin_datasets, prepare_mni152
from raykd.data.dicom import convert_dicom_folder
from raykd.data.fastmri import convert_fastmri
from raykd.data.nifti import convert_nifti
from raykd.data.sunnybrook import sunnybrook_volumes
from raykd.data.volumes import inspect_volume
from raykd.errors import DataError

# ---------------------------------------------------------------------------------------- DICOM


def _write_dicom(
    path: Path,
    *,
    patient: str,
    series_uid: str,
    pixels: np.ndarray,
    instance: int,
    slice_location: float | None = None,
    position: tuple[float, float, float] | None = None,
    trigger_time: float | None = None,
    slope: float | None = None,
    intercept: float | None = None,
    lut: tuple[int, list[int]] | None = None,
    implicit: bool = False,
) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.PatientID = patient
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 5
    ds.SeriesDescription = "CINE SAX"
    ds.Manufacturer = "ACME MEDICAL"
    ds.MagneticFieldStrength = 1.5
    ds.PixelSpacing = [1.25, 1.25]
    ds.SliceThickness = 8.0
    ds.InstanceNumber = instance
    if slice_location is not None:
        ds.SliceLocation = slice_location
    if position is not None:
        ds.ImagePositionPatient = list(position)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]  # axial: normal is +z
    if trigger_time is not None:
        ds.TriggerTime = trigger_time
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept or 0.0
    if lut is not None:  # Modality LUT Sequence: (first stored value mapped, table)
        first, table = lut
        item = Dataset()
        item.LUTDescriptor = [len(table), first, 16]
        item.add_new(0x00283006, "US", table)  # LUTData: VR 'US or OW', stored here as US
        item.ModalityLUTType = "US"
        ds.ModalityLUTSequence = [item]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _frame(value: int, shape: tuple[int, int] = (6, 5)) -> np.ndarray:
    """A frame whose pixels encode its identity (value) plus a ramp to check layout."""
    return (np.arange(shape[0] * shape[1]).reshape(shape) + 100 * value).astype(np.uint16)


@pytest.fixture()
def dicom_folder(tmp_path: Path) -> Path:
    """Two patients: A by SliceLocation (2 positions x 3 phases, rescaled), B by position only."""
    root = tmp_path / "dicom"
    series_a, series_b = generate_uid(), generate_uid()
    jobs = []
    # Patient A: frame id = 3 * position_index + phase_index; positions deliberately descending
    # in instance number so only the sort key can restore the order.
    for p, loc in enumerate([-10.0, 0.0]):
        for t, tt in enumerate([0.0, 40.0, 80.0]):
            fid = 3 * p + t
            jobs.append(
                dict(
                    patient="PAT_A",
                    series_uid=series_a,
                    pixels=_frame(fid),
                    instance=20 - fid,
                    slice_location=loc,
                    trigger_time=tt,
                    slope=2.0,
                    intercept=-1.0,
                    implicit=fid % 2 == 0,
                    name=f"A/sub/dir/img{fid:02d}",
                )
            )
    # Patient B: no SliceLocation, z from ImagePositionPatient; no TriggerTime.
    for z in range(3):
        jobs.append(
            dict(
                patient="PAT_B",
                series_uid=series_b,
                pixels=_frame(10 + z),
                instance=1,
                position=(0.0, 0.0, 5.0 * z),
                name=f"B/x{z}",
            )
        )
    random.Random(0).shuffle(jobs)
    for i, job in enumerate(jobs):
        name = job.pop("name")
        _write_dicom(root / f"{name}_{i}", **job)  # no .dcm suffix: detection is by content
    (root / "A" / "notes.txt").write_text("not a dicom file")
    (root / "junk.bin").write_bytes(os.urandom(300))
    return root


def test_dicom_groups_sorts_and_rescales(dicom_folder: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="skipped 2 non-DICOM"):
        out = convert_dicom_folder(dicom_folder, tmp_path / "out")
    assert [p.name for p in out] == ["PAT_A_s5.h5", "PAT_B_s5.h5"]
    for p in out:
        inspect_volume(p)

    with h5py.File(out[0]) as f:
        image = f["image"][()]
        assert image.dtype == np.float32 and image.shape == (6, 6, 5)
        # Sorted by (slice location, trigger time): frame ids 0..5 in order; slope 2, intercept -1.
        for fid in range(6):
            np.testing.assert_array_equal(image[fid], 2.0 * _frame(fid) - 1.0)
        np.testing.assert_array_equal(f["slice_location"][()], [-10, -10, -10, 0, 0, 0])
        np.testing.assert_array_equal(f["trigger_time"][()], [0, 40, 80] * 2)
        assert f.attrs["patient_id"] == "PAT_A"
        assert f.attrs["source"] == "dicom"
        assert f.attrs["manufacturer"] == "ACME MEDICAL"
        np.testing.assert_allclose(f.attrs["pixel_spacing_mm"], [1.25, 1.25])
        assert f.attrs["slice_thickness_mm"] == 8.0
        assert len(f.attrs["series_uid"]) > 10

    with h5py.File(out[1]) as f:
        for z in range(3):
            np.testing.assert_array_equal(f["image"][z], _frame(10 + z))
        np.testing.assert_array_equal(f["slice_location"][()], [0, 5, 10])
        assert "trigger_time" not in f  # the series has none


def test_dicom_modality_lut_sequence(tmp_path: Path) -> None:
    """A Modality LUT Sequence maps stored values through its table (clamped at both ends)."""
    table = [1000 - 3 * i for i in range(20)]
    frame = _frame(0, (4, 5))  # stored values 0..19
    frame[0, 0], frame[0, 1] = 2, 40  # below the first mapped value, beyond the table
    _write_dicom(
        tmp_path / "lut" / "img0",
        patient="PAT_L",
        series_uid=generate_uid(),
        pixels=frame,
        instance=1,
        slice_location=0.0,
        lut=(3, table),
    )
    (out,) = convert_dicom_folder(tmp_path / "lut", tmp_path / "out")
    with h5py.File(out) as f:
        image = f["image"][0]
    expected = np.array(table, np.float32)[np.clip(frame.astype(int) - 3, 0, len(table) - 1)]
    np.testing.assert_array_equal(image, expected)
    assert image[0, 0] == table[0] and image[0, 1] == table[-1]


def test_dicom_series_filter_and_errors(dicom_folder: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning):
        out = convert_dicom_folder(dicom_folder, tmp_path / "one", series="5")
    assert len(out) == 2  # both series are number 5
    with pytest.warns(UserWarning), pytest.raises(DataError, match="no DICOM image files"):
        convert_dicom_folder(dicom_folder, tmp_path / "none", series="nope")
    with pytest.raises(DataError, match="not found"):
        convert_dicom_folder(tmp_path / "missing", tmp_path / "x")

    # The same instance copied twice is counted once.
    dup = tmp_path / "dup"
    dup.mkdir()
    first = sorted((dicom_folder / "B").iterdir())[0]
    shutil.copy(first, dup / "a")
    shutil.copy(first, dup / "b")
    with pytest.warns(UserWarning, match="1 duplicate"):
        (out,) = convert_dicom_folder(dup, tmp_path / "dup_out")
    assert inspect_volume(out).num_slices == 1


def test_dicom_mixed_sizes_names_the_file(tmp_path: Path) -> None:
    uid = generate_uid()
    _write_dicom(
        tmp_path / "d" / "a.dcm",
        patient="P",
        series_uid=uid,
        pixels=_frame(0),
        instance=1,
        slice_location=0.0,
    )
    _write_dicom(
        tmp_path / "d" / "b.dcm",
        patient="P",
        series_uid=uid,
        pixels=_frame(1, (4, 4)),
        instance=2,
        slice_location=1.0,
    )
    with pytest.raises(DataError, match=r"b\.dcm.*Rows x Columns = 4 x 4.*a\.dcm"):
        convert_dicom_folder(tmp_path / "d", tmp_path / "out")


# ---------------------------------------------------------------------------------------- NIfTI


def _phantom(shape: tuple[int, int, int]) -> np.ndarray:
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    vol = ((x**2 + y**2 + z**2) < 0.6).astype(np.float32) * (1 + x)  # ball, not symmetric in x
    return vol


def test_nifti_3d(tmp_path: Path) -> None:
    vol = _phantom((20, 24, 16))
    affine = np.diag([2.0, 1.5, 3.0, 1.0])
    src = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(vol, affine), src)
    out = convert_nifti(src, tmp_path / "vol.h5")
    info = inspect_volume(out)
    assert info.shape == (24, 20)  # rotated: rows along y, columns along x
    with h5py.File(out) as f:
        image = f["image"][()]
        kept_z = np.rint(f["slice_location"][()] / 3.0).astype(int)
        # Near-empty caps of the ball are dropped, the rest is the volume rotated 90 degrees.
        assert 0 < image.shape[0] < 16
        for i, z in enumerate(kept_z):
            np.testing.assert_allclose(image[i], np.rot90(vol[:, :, z]), atol=1e-6)
        np.testing.assert_allclose(f.attrs["pixel_spacing_mm"], [1.5, 2.0])
        assert f.attrs["slice_thickness_mm"] == 3.0
        assert f.attrs["source"] == "nifti"

    # A flipped (LPS-ish) affine gives the same slices once reoriented to canonical.
    flipped = tmp_path / "flip.nii"
    flip_affine = np.diag([-2.0, -1.5, 3.0, 1.0])
    nib.save(nib.Nifti1Image(vol[::-1, ::-1].copy(), flip_affine), flipped)
    out2 = convert_nifti(flipped, tmp_path / "flip.h5")
    with h5py.File(out) as a, h5py.File(out2) as b:
        np.testing.assert_allclose(a["image"][()], b["image"][()], atol=1e-6)


def test_nifti_4d_needs_frame(tmp_path: Path) -> None:
    vol4 = np.stack([_phantom((12, 12, 10)) * (t + 1) for t in range(3)], axis=-1)
    src = tmp_path / "cine.nii.gz"
    nib.save(nib.Nifti1Image(vol4, np.eye(4)), src)
    with pytest.raises(DataError, match=r"4D image.*frame="):
        convert_nifti(src, tmp_path / "cine.h5")
    out = convert_nifti(src, tmp_path / "cine.h5", frame=2)
    inspect_volume(out)
    with h5py.File(out) as f:
        assert f["image"][()].max() == pytest.approx(vol4[..., 2].max())
        assert f.attrs["frame"] == 2
    with pytest.raises(DataError, match="cannot be read as NIfTI"):
        (tmp_path / "bad.nii.gz").write_bytes(b"garbage")
        convert_nifti(tmp_path / "bad.nii.gz", tmp_path / "bad.h5")


# -------------------------------------------------------------------------------------- fastMRI


def _centred_kspace(image: np.ndarray) -> np.ndarray:
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image, axes=axes), norm="ortho"), axes=axes)


def test_fastmri_kspace_singlecoil_and_multicoil(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.random((2, 340, 330)).astype(np.float32)  # cropped to the central 320x320
    src = tmp_path / "file1000.h5"
    with h5py.File(src, "w") as f:
        f["kspace"] = _centred_kspace(image).astype(np.complex64)
        f.attrs["acquisition"] = "CORPD_FBK"
    out = convert_fastmri(src, tmp_path / "out.h5")
    inspect_volume(out)
    crop_t = image[:, 10:330, 5:325].transpose(0, 2, 1)  # phase encoding (columns) → rows
    with h5py.File(out) as f:
        np.testing.assert_allclose(f["image"][()], crop_t, atol=1e-4)
        assert f.attrs["acquisition"] == "CORPD_FBK" and f.attrs["source_key"] == "kspace"
        assert f.attrs["phase_encoding"] == "rows"

    # Multi-coil: coil images c_k * image with sum |c_k|^2 = 1 -> RSS gives back |image|.
    weights = np.array([0.6, 0.8j])
    coils = weights[None, :, None, None] * image[:, None]
    multi = tmp_path / "multi.h5"
    with h5py.File(multi, "w") as f:
        f["kspace"] = _centred_kspace(coils).astype(np.complex64)
    with h5py.File(convert_fastmri(multi, tmp_path / "multi_out.h5")) as f:
        np.testing.assert_allclose(f["image"][()], crop_t, atol=1e-4)


def test_fastmri_reconstruction_prefer_and_errors(tmp_path: Path) -> None:
    recon = np.random.default_rng(1).random((3, 320, 320)).astype(np.float32)
    other = np.ones((3, 320, 320), np.float32)
    src = tmp_path / "both.h5"
    with h5py.File(src, "w") as f:
        f["reconstruction_esc"] = recon
        f["kspace"] = _centred_kspace(other).astype(np.complex64)
    with h5py.File(convert_fastmri(src, tmp_path / "r.h5")) as f:
        np.testing.assert_array_equal(f["image"][()], recon.transpose(0, 2, 1))
        assert f.attrs["source_key"] == "reconstruction_esc"
    with h5py.File(convert_fastmri(src, tmp_path / "k.h5", prefer="kspace")) as f:
        np.testing.assert_allclose(f["image"][()], other, atol=1e-4)
    inspect_volume(tmp_path / "k.h5")

    empty = tmp_path / "neither.h5"
    with h5py.File(empty, "w") as f:
        f["ismrmrd_header"] = np.bytes_(b"<xml/>")
        f["mask"] = np.ones(4)
    with pytest.raises(DataError, match=r"neither\.h5.*found keys \['ismrmrd_header', 'mask'\]"):
        convert_fastmri(empty, tmp_path / "n.h5")
    with pytest.raises(DataError, match="file not found"):
        convert_fastmri(tmp_path / "absent.h5", tmp_path / "a.h5")


# --------------------------------------------------------------------------------------- MNI152


def test_mni152_prepare_and_reuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYKD_CACHE", str(tmp_path / "cache"))
    assert builtin_datasets()["mni152"] is prepare_mni152
    files = prepare_mni152()
    assert [p.name for p in files] == [f"mni152_slab{i}.h5" for i in range(4)]
    assert all(p.parent == paths.cache_dir() / "mni152_240" for p in files)
    total = 0
    for p in files:
        info = inspect_volume(p)
        assert info.shape == (240, 240) and info.num_slices > 20
        total += info.num_slices
        with h5py.File(p) as f:
            image = f["image"][()]
            assert np.all(np.isfinite(image)) and image.min() >= 0 and image.max() > 0
            assert "McGill University" in f.attrs["copyright"]
            assert "not an independent subject" in f.attrs["note"]
    # Contiguous slabs: slice locations increase across the slab files.
    locs = np.concatenate([h5py.File(p)["slice_location"][()] for p in files])
    assert np.all(np.diff(locs) > 0) and len(locs) == total
    assert not [p for p in paths.cache_dir().iterdir() if p.name.startswith(".")]  # no temp left

    mtimes = [p.stat().st_mtime_ns for p in files]
    time.sleep(0.01)
    assert prepare_mni152() == files
    assert [p.stat().st_mtime_ns for p in files] == mtimes  # reused, not rebuilt

    # A damaged cache (truncated file) is detected by the manifest and rebuilt.
    with open(files[1], "r+b") as fh:
        fh.truncate(100)
    rebuilt = prepare_mni152()
    for p in rebuilt:
        inspect_volume(p)


# ----------------------------------------------------------------------------------- Sunnybrook


def test_sunnybrook_shared_folder() -> None:
    root = paths.shared_data_dir() / "sunnybrook"
    if not root.is_dir():
        pytest.skip(f"shared data not available at {root} (set RAYKD_SHARED_DATA)")
    volumes = sunnybrook_volumes()
    assert list(volumes) == ["0101", "0201", "0301", "0401"]
    info = inspect_volume(volumes["0401"])
    assert info.shape == (256, 256) and info.num_slices == 220


def test_sunnybrook_missing_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYKD_SHARED_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="RAYKD_SHARED_DATA"):
        sunnybrook_volumes()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .h5 volumes"):
        sunnybrook_volumes(tmp_path / "empty")
