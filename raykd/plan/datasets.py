"""The built-in dataset catalogue a grid names by key: where the volumes come from, the split by
volume, the native size and the folder of the paper's fixed masks (under the shared data)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BuiltinDataset:
    source: str  # a DataConfig.source: 'mni152' (built in) or 'sunnybrook' (shared data)
    size: tuple[int, int]  # native slice size; the fixed masks exist for this size only
    mask_dir: str | None = None  # masks/<mask_dir>/mask_<a>x.npy under the shared data
    train: tuple[str, ...] | None = None  # volumes per split; None: the source's own split
    val: tuple[str, ...] | None = None
    complex: bool = False  # complex images (data.complex): two-channel networks

    def split(self, name: str) -> list[str] | None:
        volumes = getattr(self, name)
        return None if volumes is None else list(volumes)


DATASETS: dict[str, BuiltinDataset] = {
    "mni152": BuiltinDataset(source="mni152", size=(240, 240), mask_dir="brain_240"),
    "sunnybrook": BuiltinDataset(
        source="sunnybrook",
        size=(150, 150),
        mask_dir="cardiac_150",
        train=("0101", "0201", "0301"),
        val=("0401",),
    ),
}
# Complex versions with a smooth synthetic phase (raykd.data.complex): exercise the complex path,
# not evidence about real phase. No fixed masks: the paper's masks are for magnitude runs.
DATASETS["mni152_complex"] = BuiltinDataset(source="mni152_complex", size=(240, 240), complex=True)
DATASETS["sunnybrook_complex"] = BuiltinDataset(
    source="sunnybrook_complex",
    size=(150, 150),
    train=("0101", "0201"),
    val=("0301",),  # 0401 stays free for a held-out test split
    complex=True,
)
# Real complex data a user prepares (``raykd prepare calgary`` / ``raykd prepare fastmri
# --complex``) into the shared data folder (or --data-path), split by its train/ and val/
# subfolders: CC-359's single-coil Train / Val (the paper's Appendix B: 25 / 10 volumes, centre
# 110 slices, 256x256) and fastMRI's singlecoil_train / singlecoil_val (knee, 320x320 crop).
DATASETS["calgary"] = BuiltinDataset(source="shared:calgary", size=(256, 256), complex=True)
DATASETS["fastmri_knee"] = BuiltinDataset(
    source="shared:fastmri_knee", size=(320, 320), complex=True
)
# Size of a folder of h5 volumes (not in the catalogue) unless the grid sets one.
DEFAULT_SIZE = (240, 240)


def builtin(name: str) -> BuiltinDataset | None:
    return DATASETS.get(name)
