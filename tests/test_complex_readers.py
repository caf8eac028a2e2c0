"""Raw complex layouts → raykd complex volumes with ``raykd prepare``, and training on them.

Fixture files are written in the fastMRI single-coil and Calgary-Campinas 12-channel layouts
(tests/complex_formats.py) from phantom magnitudes with the synthetic phase.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from raykd.cli import main as raykd_main
from raykd.data.complex import add_synthetic_phase
from raykd.data.complex_readers import convert_calgary, convert_fastmri_complex
from raykd.data.volumes import COMPLEX_KEY, IMAGE_KEY
from raykd.errors import DataError
from raykd.train.config import load_config
from tests.complex_formats import coil_maps, write_calgary, write_fastmri_singlecoil
from tests.conftest import phantom_volume, tiny_overrides


def _cimage(seed: int, n: int = 4, size: int = 40) -> np.ndarray:
    return add_synthetic_phase(phantom_volume(n, size, seed), f"raw{seed}")


def _read(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    with h5py.File(path, "r") as f:
        return f[COMPLEX_KEY][()], f[IMAGE_KEY][()], dict(f.attrs)


def test_fastmri_singlecoil_converts_to_the_fastmri_image(tmp_path):
    x = _cimage(0)[:, :, 2:38]  # [4, 40, 36]: non-square, phase encoding along rows
    x = x / np.abs(x).max()
    src = write_fastmri_singlecoil(tmp_path / "file1000.h5", x, (32, 32))
    out = convert_fastmri_complex(src, tmp_path / "out" / "file1000.h5", crop=(32, 32))
    cimage, image, attrs = _read(out)
    # fastMRI's image: centred inverse FFT, centre crop, then transposed back to raykd rows.
    assert cimage.shape == (4, 32, 32) and cimage.dtype == np.complex64
    assert np.allclose(cimage, x[:, 4:36, 2:34], atol=1e-5)
    with h5py.File(src, "r") as f:
        esc = f["reconstruction_esc"][()]
    assert np.allclose(image, np.swapaxes(esc, 1, 2), atol=1e-5)
    assert attrs["fastmri_acquisition"] == "CORPD_FBK" and attrs["complex"]
    # Without the crop the stored image's k-space is the measured k-space: exactly, once the
    # image centre is moved to pixel [0, 0] (fastMRI's centred convention), and up to that shift's
    # ±1 checkerboard as raykd transforms it (same samples, same magnitudes).
    full = convert_fastmri_complex(src, tmp_path / "full.h5", crop=None)
    cfull, _, _ = _read(full)
    with h5py.File(src, "r") as f:
        measured = np.fft.ifftshift(f["kspace"][()], axes=(-2, -1))
    measured = np.swapaxes(measured, 1, 2)
    uncentred = np.fft.ifftshift(cfull, axes=(-2, -1))
    assert np.allclose(np.fft.fft2(uncentred, norm="ortho"), measured, atol=1e-5)
    assert np.allclose(np.abs(np.fft.fft2(cfull, norm="ortho")), np.abs(measured), atol=1e-5)


def test_calgary_12_channel_combines_to_one_complex_image(tmp_path):
    x = _cimage(1, n=6, size=32)
    src = write_calgary(tmp_path / "e14089s3_P53248.h5", x)
    out = convert_calgary(src, tmp_path / "out.h5", size=None, center_slices=4)
    cimage, _, attrs = _read(out)
    assert cimage.shape == (4, 32, 32) and attrs["slices"] == "1..4 of 6"
    # Reference: RSS of the channel-wise inverse FFTs of the acquired (partial Fourier) data.
    with h5py.File(src, "r") as f:
        k = f["kspace"][1:5]
    coils = np.moveaxis(k[..., ::2] + 1j * k[..., 1::2], -1, 1)
    rss = np.sqrt((np.abs(np.fft.ifft2(coils, norm="ortho")) ** 2).sum(1))
    obj = rss > 0.2 * rss.max()
    rel = np.abs(np.abs(cimage) - rss)[obj] / rss[obj]
    assert np.median(rel) < 0.05
    # The phase is the object's own plus the smooth phase of the reference coil's map (the coil
    # with the most signal in that slice), seen through the same partial-Fourier acquisition.
    maps = coil_maps((32, 32))

    def corr(a, b):
        return np.abs(np.vdot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b))

    for i in range(4):
        ref = int(np.argmax((np.abs(maps * x[1 + i]) ** 2).sum(axis=(1, 2))))
        k_ref = np.fft.fft2(x[1 + i] * np.exp(1j * np.angle(maps[ref])), norm="ortho")
        k_ref[:, int(np.ceil(32 * 0.85)) :] = 0
        expected = np.fft.ifft2(k_ref, norm="ortho")[obj[i]]
        got = cimage[i][obj[i]]
        assert corr(expected, got) > 0.97
        assert corr(expected, got) > corr(np.abs(expected), got)  # the phase is kept


def _h5(path: Path, **datasets) -> Path:
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f.create_dataset(k, data=v)
    return path


@pytest.mark.parametrize(
    "kind,data,message",
    [
        ("fastmri", {"kspace": np.zeros((2, 40, 40), np.float32)}, r"'kspace' has dtype float32"),
        ("fastmri", {"image": np.zeros((2, 40, 40), np.float32)}, r"missing key 'kspace'"),
        ("fastmri", {"kspace": np.zeros((2, 3, 40, 40), np.complex64)}, r"'kspace' has shape"),
        ("fastmri", {"kspace": np.zeros((2, 20, 20), np.complex64)}, r"smaller than the 32x32"),
        ("calgary", {"kspace": np.zeros((2, 8, 8, 24), np.complex64)}, r"'kspace' has dtype"),
        ("calgary", {"kspace": np.zeros((2, 8, 8, 23), np.float32)}, r"last axis is 23"),
        ("calgary", {"kspace": np.zeros((2, 8, 24), np.float32)}, r"'kspace' has shape"),
        ("calgary", {"recon": np.zeros((2, 8, 24), np.float32)}, r"missing key 'kspace'"),
    ],
)
def test_malformed_raw_files_fail_with_one_line_naming_file_and_key(tmp_path, kind, data, message):
    src = _h5(tmp_path / "bad.h5", **data)
    convert = convert_fastmri_complex if kind == "fastmri" else convert_calgary
    kwargs = {"crop": (32, 32)} if kind == "fastmri" else {"size": (8, 8)}
    with pytest.raises(DataError, match=message) as info:
        convert(src, tmp_path / "out.h5", **kwargs)
    text = str(info.value)
    assert text.startswith(f"{src}:") and "\n" not in text


def test_cli_prepares_raw_layouts_and_a_stage_trains_on_them(tmp_path, capsys):
    from raykd.train.loop import train_stage

    raw_f, raw_c = tmp_path / "raw_fastmri", tmp_path / "raw_calgary"
    raw_f.mkdir()
    raw_c.mkdir()
    for v in range(3):
        x = _cimage(10 + v, n=4, size=40)
        write_fastmri_singlecoil(raw_f / f"file{v}.h5", x, (32, 32))
        write_calgary(raw_c / f"cc{v}.h5", x)
    for what, src, extra in (
        ("fastmri", raw_f, ["--complex", "--crop", "32", "32"]),
        ("calgary", raw_c, ["--crop", "32", "32", "--center-slices", "3"]),
    ):
        out = tmp_path / f"prepared_{what}"
        assert raykd_main(["prepare", what, str(src), str(out), *extra]) == 0
        assert len(list(out.glob("*.h5"))) == 3
        names = sorted(p.stem for p in out.glob("*.h5"))
        overrides = tiny_overrides(
            out,
            tmp_path / f"run_{what}",
            "teacher",
            **{
                "data.complex": "true",
                "data.train": f"[{names[0]}, {names[1]}]",
                "data.val": f"[{names[2]}]",
                "optim.epochs": "1",
            },
        )
        result = train_stage(load_config(None, overrides))
        assert np.isfinite(result.best_val_loss) and result.history[0]["val/psnr"] > 10
    # A malformed file through the command line: one line naming the file and key.
    bad = _h5(tmp_path / "bad.h5", kspace=np.zeros((2, 40, 40), np.float32))
    assert raykd_main(["prepare", "fastmri", str(bad), str(tmp_path / "o.h5"), "--complex"]) != 0
    err = capsys.readouterr().err
    assert f"{bad}: 'kspace' has dtype float32" in err


def test_synthetic_phase_prepare_from_magnitude_volumes(tiny_data, tmp_path):
    out = tmp_path / "cx"
    assert raykd_main(["prepare", "synthetic-phase", str(tiny_data), str(out)]) == 0
    cimage, image, attrs = _read(out / "vol0.h5")
    with h5py.File(tiny_data / "vol0.h5", "r") as f:
        assert np.allclose(np.abs(cimage), f["image"][()], rtol=1e-5)
    assert "SYNTHETIC" in attrs["note"] and np.allclose(np.abs(cimage), image)


def test_a_folder_with_train_and_val_subfolders_is_split_by_them(complex_data_dirs):
    from raykd.data.sources import split_volumes
    from raykd.train.config import DataConfig

    splits = split_volumes(DataConfig(source=str(complex_data_dirs), size=(32, 32), complex=True))
    assert [p.parent.name for p in splits["train"]] == ["train", "train"]
    assert [p.parent.name for p in splits["val"]] == ["val"]
    assert [p.parent.name for p in splits["test"]] == ["test"]


@pytest.fixture
def complex_data_dirs(tmp_path):
    from raykd.data.volumes import write_complex_volume

    root = tmp_path / "prepared"
    for split, n in (("train", 2), ("val", 1), ("test", 1)):
        (root / split).mkdir(parents=True)
        for v in range(n):
            write_complex_volume(root / split / f"{split}{v}.h5", _cimage(20 + v, size=32))
    return root


def test_calgary_and_fastmri_presets_plan_complex_stages():
    from raykd.plan.presets import load_preset
    from raykd.plan.rows import grid_rows
    from raykd.plan.stages import row_requests

    for name, arch, mask in (
        ("calgary_sr", "vdsr", "cartesian"),
        ("calgary_sr_cpu", "vdsr", "cartesian"),
        ("fastmri_knee", "dccnn", "fastmri_random"),
    ):
        spec = load_preset(name)
        for row in grid_rows(spec):
            for q in row_requests(spec, row):
                assert q.cfg.data.complex and q.cfg.teacher.arch == arch
                assert q.cfg.data.mask.kind == mask
    paper = load_preset("calgary_sr")
    assert paper.size == (256, 256) and paper.teacher_depth == 12
    assert paper.student_depths == [4] and set(paper.methods) == {
        "at",
        "fitnets",
        "cc",
        "pkt",
        "ft",
        "nst",
    }
