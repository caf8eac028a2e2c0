"""Grid presets (``search_spaces/paper_grid.yaml``) and the typed grid they describe."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raykd.errors import ConfigError
from raykd.plan.budgets import Epochs, budget_warnings
from raykd.plan.datasets import DATASETS
from raykd.plan.package_data import GRID_FILE_NAME, search_space_file
from raykd.train.config import format_validation_error

RowName = Literal[
    "teacher", "sft_teacher", "student", "equal_compute", "std_kd", "sft_kd", "sft_kd_random"
]
# The equal-compute control is a default row: without it SFT-KD's extra training reads as a gain.
DEFAULT_ROWS: list[str] = ["teacher", "sft_teacher", "student", "equal_compute", "std_kd", "sft_kd"]


class GridSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    datasets: list[str] = ["mni152"]
    accelerations: list[float] = [4.0]
    methods: list[str] = ["at", "fitnets", "fsp", "sp", "cc"]
    student_depths: list[int] = [3]
    teacher_depth: int = Field(5, ge=2)
    cascades: int = Field(5, ge=2)
    seeds: int = Field(1, ge=1)
    first_seed: int = 42
    size: tuple[int, int] | None = None
    channels: int = Field(32, ge=1)
    max_slices_per_volume: int | None = None
    epochs: Epochs = Epochs()
    batch_size: int = Field(4, ge=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    rows: list[RowName] = DEFAULT_ROWS
    kd_weights: dict[str, float] = {}  # fixed KD weight per method (overrides kd_balance)
    # Balance ratio r: each KD weight is calibrated before training so that weighted KD = r × L1
    # (kd.balance); None: the method's canonical (classification) weight.
    kd_balance: float | None = Field(None, gt=0)
    w_s: float = 1.0
    w_imit: float = 1.0
    imit_balance: float | None = Field(None, gt=0)  # the same for the SFT imitation weight
    data_path: str | None = None  # overrides the source of a built-in dataset (e.g. Sunnybrook)
    test: list[str] | None = None  # held-out test volumes of the (single) dataset
    trial_unit: Literal["row", "seed"] = "row"  # Tune trial = one row, or all rows of a seed
    # Task and architectures (paper Appendix B / Table 6). For task 'sr', ``accelerations`` are
    # the super-resolution scales (2, 4) and inputs are made by ``sr_degradation``.
    task: Literal["recon", "sr"] = "recon"
    sr_degradation: Literal["kspace", "image"] = "kspace"
    teacher_arch: Literal["dccnn", "dcunet", "vdsr"] = "dccnn"
    student_arch: Literal["dccnn", "dcunet", "vdsr"] = "dccnn"
    # Ray Train workers (DDP ranks) per stage kind, e.g. {teacher: 4, sft: 4, student: 1, kd: 1}
    # (kinds not named: 1); --workers on the command line wins. Never part of a stage's identity.
    workers: (
        dict[Literal["teacher", "sft", "student", "kd"], Annotated[int, Field(ge=1)]] | None
    ) = None
    teacher_taps: list[str] | None = None  # KD tap mapping ('{c}' = every block); None: defaults
    student_taps: list[str] | None = None
    # Complex data (data.complex) for folder datasets; built-in '*_complex' datasets are complex.
    complex: bool = False
    # Undersampling masks: 'paper' (fixed files where shipped, else the paper's seeded Cartesian
    # generator) or fastMRI's line masks (raykd.data.fastmri_masks).
    mask_kind: Literal["paper", "fastmri_random", "fastmri_equispaced"] = "paper"

    def seed_list(self) -> list[int]:
        return [self.first_seed + i for i in range(self.seeds)]

    def budget_warnings(self) -> list[str]:
        """Where student rows get unequal epochs (see :mod:`raykd.plan.budgets`)."""
        return budget_warnings(list(self.rows), self.epochs)


def grid_file():
    """``paper_grid.yaml`` as shipped (a Path in a checkout, a Traversable in a wheel)."""
    return search_space_file(GRID_FILE_NAME[: -len(".yaml")])


def __getattr__(name: str) -> Any:
    if name == "GRID_FILE":  # resolved on use: a broken install fails when presets are read
        return grid_file()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _presets() -> dict[str, Any]:
    return yaml.safe_load(grid_file().read_text())["presets"]


def preset_names() -> list[str]:
    return list(_presets())


def load_preset(name: str, overrides: dict[str, Any] | None = None) -> GridSpec:
    """The preset ``name`` with ``overrides`` (None values: not given) applied, validated."""
    presets = _presets()
    if name not in presets:
        raise ConfigError(f"unknown preset '{name}'; expected one of {sorted(presets)}")
    data = {**presets[name], **{k: v for k, v in (overrides or {}).items() if v is not None}}
    try:
        spec = GridSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"{grid_file()} preset '{name}'")) from None
    for ds in spec.datasets:
        if ds not in DATASETS and not Path(ds).expanduser().is_dir():
            raise ConfigError(
                f"dataset '{ds}': not a built-in ({sorted(DATASETS)}) and not a folder of h5"
            )
    from raykd.distill import available_kd_methods

    unknown = sorted(set(spec.methods) - set(available_kd_methods()))
    if unknown:
        raise ConfigError(f"unknown KD method(s) {unknown}; expected {available_kd_methods()}")
    if spec.task == "sr":
        bad = [a for a in spec.accelerations if a != int(a) or a < 2]
        if bad:
            raise ConfigError(
                f"preset '{name}': task 'sr' reads accelerations as super-resolution scales; "
                f"expected integers >= 2, got {bad}"
            )
    return spec
