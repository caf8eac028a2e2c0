"""Grid presets (``search_spaces/paper_grid.yaml``, or a preset file of the user's own) and the
typed grid they describe."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raykd import kinds
from raykd.errors import ConfigError
from raykd.kinds import ROW_KINDS, STAGE_KINDS
from raykd.plan.budgets import Epochs, budget_warnings
from raykd.plan.datasets import DatasetEntry, builtin_datasets, catalogue_entries
from raykd.plan.package_data import GRID_FILE_NAME, search_space_file
from raykd.train.config import format_validation_error, yaml_load

# The values of raykd.kinds.RowKind. type: ignore: mypy accepts only literal values in a
# Literal, not a tuple built at import; pydantic validates against it at runtime.
RowName = Literal[ROW_KINDS]  # type: ignore[valid-type]
# The equal-compute control is a default row: without it SFT-KD's extra training reads as a gain.
DEFAULT_ROWS: list[str] = list(kinds.DEFAULT_ROWS)


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
    # Datasets the preset file defines (name -> source, size, split); built-ins are shipped.
    catalogue: dict[str, DatasetEntry] = {}
    # The paper's fixed masks where the catalogue declares them (native size, 4x/5x); false: the
    # seeded Cartesian masks everywhere. Configuration, never a probe of the planning machine.
    fixed_masks: bool = True
    test: list[str] | None = None  # held-out test volumes of the (single) dataset
    # Slices per held-out test volume (evenly spaced); None: all of them (evaluation is cheap,
    # and a limit set for training speed would otherwise thin the test set too).
    test_slices: int | None = Field(None, ge=1)
    # Cross-validation by subject (raykd.plan.folds): K folds, each a full set of stages.
    folds: int | None = Field(None, ge=2)
    # Budget study: the grid once per factor, every stage's epochs scaled (equal compute =
    # scaled SFT + scaled KD); identical stages are shared between studies by identity.
    budget_scales: list[Annotated[float, Field(gt=0)]] = Field([1.0], min_length=1)
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
        # type: ignore: a Literal of the kinds tuple (see RowName)
        dict[Literal[STAGE_KINDS], Annotated[int, Field(ge=1)]] | None  # type: ignore[valid-type]
    ) = None
    # Share of a GPU per Ray Train worker of a single-worker stage (0.25: four stages at once per
    # GPU); DDP kinds always get whole GPUs; None: the rule in raykd.plan.gpus. Not identity.
    gpus_per_worker: float | None = Field(None, gt=0, le=1)
    # Device class the stages train on, set by the job from its cluster (None: CPU, the stage
    # identities of every CPU run); "cuda" enters each stage's identity (raykd.plan.identity).
    device: Literal["cuda"] | None = None
    teacher_taps: list[str] | None = None  # KD tap mapping ('{c}' = every block); None: defaults
    student_taps: list[str] | None = None
    # Complex data (data.complex) for folder datasets; built-in '*_complex' datasets are complex.
    complex: bool = False
    # Undersampling masks: 'paper' (fixed files where shipped, else the paper's seeded Cartesian
    # generator) or fastMRI's line masks (raykd.data.fastmri_masks).
    mask_kind: Literal["paper", "fastmri_random", "fastmri_equispaced"] = "paper"
    # 'measured': fastMRI single-coil volumes on their measured k-space grid (data.kspace);
    # 'simulated' (the paper's): k-space re-simulated from the cropped images.
    kspace: Literal["simulated", "measured"] = "simulated"

    def seed_list(self) -> list[int]:
        return [self.first_seed + i for i in range(self.seeds)]

    def fold_list(self) -> list[int | None]:
        """Fold indices of a cross-validated grid; ``[None]`` without folds."""
        return list(range(self.folds)) if self.folds else [None]

    def epochs_at(self, budget: float) -> Epochs:
        """Epochs per stage kind at a budget scale (1: the preset's)."""
        return self.epochs.scaled(budget)

    def dataset(self, name: str) -> DatasetEntry | None:
        """The catalogue entry of a dataset key (the preset file's, else a built-in), or None
        for a folder of h5 named directly (never looked up in the shipped YAML, which a cluster
        node that got raykd through py_modules does not have)."""
        if name in self.catalogue:
            return self.catalogue[name]
        if "/" in name or Path(name).expanduser().is_dir():
            return None
        return builtin_datasets().get(name)

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


def is_preset_file(name: str) -> bool:
    """``FILE.yaml`` or ``FILE.yaml:PRESET``: a preset file outside the package."""
    return name.split(":", 1)[0].endswith((".yaml", ".yml")) if name else False


def _file_preset(name: str) -> tuple[dict[str, Any], dict[str, DatasetEntry], str]:
    """(preset fields, catalogue entries, where) of ``FILE.yaml[:PRESET]``; the file has the
    form of ``paper_grid.yaml``: ``presets:`` and optionally ``datasets:``."""
    file, _, preset = name.partition(":")
    path = Path(file).expanduser()
    if not path.is_file():
        raise ConfigError(f"preset file {path}: not found")
    data = yaml_load(path.read_text())
    presets = data.get("presets") if isinstance(data, dict) else None
    if not isinstance(presets, dict) or not presets:
        raise ConfigError(f"preset file {path}: expected a 'presets:' mapping of name -> fields")
    if not preset:
        if len(presets) != 1:
            raise ConfigError(
                f"preset file {path} holds {sorted(presets)}: name one as {file}:NAME"
            )
        preset = next(iter(presets))
    if preset not in presets:
        raise ConfigError(f"preset file {path}: no preset '{preset}'; it holds {sorted(presets)}")
    datasets = catalogue_entries(data.get("datasets"), str(path), path.resolve().parent)
    return presets[preset] or {}, datasets, f"{path} preset '{preset}'"


def preset_label(name: str) -> str:
    """A short name for jobs and runs: the shipped name, or the file's preset name."""
    if not is_preset_file(name):
        return name
    file, _, preset = name.partition(":")
    return preset or Path(file).stem


def load_preset(name: str, overrides: dict[str, Any] | None = None) -> GridSpec:
    """The preset ``name`` (shipped, or ``FILE.yaml[:PRESET]``) with ``overrides`` (None values:
    not given) applied, validated."""
    if is_preset_file(name):
        fields, catalogue, where = _file_preset(name)
    else:
        presets = _presets()
        if name not in presets:
            raise ConfigError(
                f"unknown preset '{name}'; expected one of {sorted(presets)} or a FILE.yaml"
            )
        fields, catalogue, where = presets[name], {}, f"{grid_file()} preset '{name}'"
    data = {**fields, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    try:
        spec = GridSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where)) from None
    # Every named entry travels inside the spec (Tune trials, Train workers): a process on a
    # cluster node gets raykd through py_modules, without the shipped YAML next to it.
    named = {
        ds: e for ds in spec.datasets if (e := catalogue.get(ds) or builtin_datasets().get(ds))
    }
    spec = spec.model_copy(update={"catalogue": {**spec.catalogue, **named}})
    known = sorted({*builtin_datasets(), *catalogue})
    for ds in spec.datasets:
        if spec.dataset(ds) is None and not Path(ds).expanduser().is_dir():
            raise ConfigError(
                f"dataset '{ds}': not in the catalogue ({known}) and not a folder of h5"
            )
    from raykd.distill import available_kd_methods

    unknown = sorted(set(spec.methods) - set(available_kd_methods()))
    if unknown:
        raise ConfigError(f"unknown KD method(s) {unknown}; expected {available_kd_methods()}")
    if spec.folds:
        from raykd.plan.folds import fold_split, subjects

        for ds in spec.datasets:  # refused here, in one line, before anything starts
            entry = spec.dataset(ds)
            source = (
                spec.data_path if (spec.data_path and entry) else (entry.source if entry else ds)
            )
            fold_split(ds, subjects(ds, entry, source), 0, spec.folds, spec.test)
    if spec.task == "sr":
        bad = [a for a in spec.accelerations if a != int(a) or a < 2]
        if bad:
            raise ConfigError(
                f"preset '{name}': task 'sr' reads accelerations as super-resolution scales; "
                f"expected integers >= 2, got {bad}"
            )
    return spec
