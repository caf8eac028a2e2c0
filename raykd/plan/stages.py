"""From a grid row to typed stage configs and stage requests (the stage graph's input).

A row needs one stage (teacher, SFT teacher, student, equal-compute control) or two (a KD
student after its teacher). :func:`stage_config` builds one typed
:class:`~raykd.train.config.StageConfig` from the grid spec and the row, with the few settings a
row or a search trial changes given as a typed :class:`StageOverrides`; :func:`row_requests`
returns the row's :class:`StageRequest` list, dependencies first. No Ray here: the runner
(:mod:`raykd.orchestration.runner`) trains the requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raykd.errors import ConfigError
from raykd.kinds import RowKind
from raykd.plan.budgets import equal_compute_epochs, scaled_step_size
from raykd.plan.datasets import DEFAULT_SIZE
from raykd.plan.identity import stage_identity
from raykd.plan.presets import GridSpec
from raykd.plan.rows import Row
from raykd.train.config import (
    BalanceConfig,
    DataConfig,
    KDConfig,
    MaskConfig,
    ModelConfig,
    OptimConfig,
    SFTConfig,
    SRConfig,
    StageConfig,
    StageKind,
)

M = TypeVar("M", bound=BaseModel)

# A teacher's checkpoint is known once its stage has trained: the runner fills it in.
TEACHER_PLACEHOLDER = "resolved-by-the-stage-graph"


class StageOverrides(BaseModel):
    """What a row or a search trial sets beyond the grid spec (None: the spec's value)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    epochs: int | None = Field(None, ge=1, description="optim.epochs (equal-compute control)")
    batch_size: int | None = Field(
        None, ge=1, description="data.batch_size: the global batch, split over the ranks"
    )
    kd_output_weight: float | None = Field(None, ge=0, description="kd.output_weight (searched)")

    def over(self, base: StageOverrides) -> StageOverrides:
        """These overrides on top of ``base`` (set fields here win)."""
        return base.model_copy(update=self.model_dump(exclude_none=True))


NO_OVERRIDES = StageOverrides()


@dataclass
class StageRequest:
    """One stage the caller needs: its config, its teacher's identity (KD) and run tags."""

    cfg: StageConfig
    teacher_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def stage_id(self) -> str:
        return stage_identity(self.cfg, self.teacher_id)


class _Invalid(Exception):
    """A section that did not validate, with its key path in the stage config."""

    def __init__(self, section: str, exc: ValidationError) -> None:
        super().__init__(section)
        self.section, self.exc = section, exc


def _model(cls: type[M], section: str, **fields) -> M:
    """``cls(**fields)``; a validation error names the keys under ``section``."""
    try:
        return cls(**fields)
    except ValidationError as exc:
        raise _Invalid(section, exc) from None


def _message(err: _Invalid, source: str) -> str:
    """The error as :func:`~raykd.train.config.format_validation_error` words it, with each key
    given by its full path (``data.size``)."""
    lines = [f"{source}: invalid configuration"]
    for e in err.exc.errors():
        key = ".".join([p for p in err.section.split(".") if p] + [str(k) for k in e["loc"]])
        got = e.get("input")
        got_s = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  - {key or '(top level)'}: {e['msg']}{got_s}")
    return "\n".join(lines)


def _data(spec: GridSpec, row: Row, over: StageOverrides) -> DataConfig:
    ds = spec.dataset(row.dataset)
    source = spec.data_path if (spec.data_path and ds) else (ds.source if ds else row.dataset)
    size = spec.size or (ds.native_size if ds else DEFAULT_SIZE)
    acc = row.acceleration
    sr = spec.task == "sr"
    mask = _model(MaskConfig, "data.mask", kind="cartesian", acceleration=acc, seed=0)
    fixed = ds.fixed_mask(size, acc) if (ds and spec.fixed_masks and not sr) else None
    if fixed:  # the paper's mask, from the catalogue: the same identity on every machine
        mask = _model(MaskConfig, "data.mask", kind="file", path=fixed, acceleration=acc)
    if min(size) < 100:  # tiny smoke shapes: keep 10 low rows feasible
        mask = mask.model_copy(update={"num_low": 4})
    if spec.mask_kind != "paper":
        mask = _model(MaskConfig, "data.mask", kind=spec.mask_kind, acceleration=acc, seed=0)
    own = ds if ds is not None and source == ds.source else None  # the catalogue's own splits
    train = own.split("train") if own else None
    val = own.split("val") if own else None
    test = spec.test or (own.split("test") if own else None)
    if row.fold is not None and spec.folds:
        from raykd.plan.folds import fold_split, subjects

        train, val, test = fold_split(
            row.dataset, subjects(row.dataset, ds, source), row.fold, spec.folds, spec.test
        )
    return _model(
        DataConfig,
        "data",
        source=source,
        size=size,
        # SR: the SR degradation replaces the mask, which is then unused.
        mask=_model(MaskConfig, "data.mask", kind="cartesian", acceleration=1.0) if sr else mask,
        batch_size=over.batch_size if over.batch_size is not None else spec.batch_size,
        max_slices_per_volume=spec.max_slices_per_volume,
        train=train,
        val=val,
        test=test,
        test_slices=spec.test_slices,
        sr=_model(SRConfig, "data.sr", scale=int(acc), degradation=spec.sr_degradation)
        if sr
        else None,
        complex=spec.complex or (ds is not None and ds.complex),
        kspace=spec.kspace,
    )


def _kd(spec: GridSpec, row: Row, over: StageOverrides) -> KDConfig:
    method = row.method
    fixed = method is not None and method in spec.kd_weights
    return _model(
        KDConfig,
        "kd",
        method=method,
        init="sft" if row.kind == "sft_kd" else "random",
        weight=spec.kd_weights[method] if fixed and method is not None else None,
        balance=(
            _model(BalanceConfig, "kd.balance", ratio=spec.kd_balance)
            if spec.kd_balance is not None and not fixed
            else None
        ),
        teacher_taps=spec.teacher_taps,
        student_taps=spec.student_taps,
        output_weight=over.kd_output_weight or 0.0,
    )


def stage_config(
    spec: GridSpec, row: Row, kind: StageKind, overrides: StageOverrides = NO_OVERRIDES
) -> StageConfig:
    """The StageConfig of one stage of a row (``kind``: teacher | sft | student | kd)."""
    try:
        models = {
            role: _model(
                ModelConfig,
                role,
                arch=getattr(spec, f"{role}_arch"),
                depth=spec.teacher_depth if role == "teacher" else row.student_depth,
                cascades=spec.cascades,
                channels=spec.channels,
            )
            for role in ("teacher", "student")
        }
        if kind == "kd":
            kd = _kd(spec, row, overrides)
        elif overrides.kd_output_weight is not None:
            kd = _model(KDConfig, "kd", output_weight=overrides.kd_output_weight)
        else:
            kd = KDConfig()
        default_epochs = getattr(spec.epochs_at(row.budget), kind)
        epochs = overrides.epochs if overrides.epochs is not None else default_epochs
        imit = spec.imit_balance
        step = scaled_step_size(row.budget)  # the LR step scales with the epochs
        optim = {"epochs": epochs} | ({"step_size": step} if step else {})
        return _model(
            StageConfig,
            "",
            kind=kind,
            seed=row.seed,
            data=_data(spec, row, overrides),
            **models,
            optim=_model(OptimConfig, "optim", **optim),
            sft=_model(
                SFTConfig,
                "sft",
                w_s=spec.w_s,
                w_imit=spec.w_imit,
                balance=_model(BalanceConfig, "sft.balance", ratio=imit) if imit else None,
            ),
            kd=kd,
            teacher_checkpoint=TEACHER_PLACEHOLDER if kind == "kd" else None,
            precision=spec.precision,
            device=spec.device or "auto",  # "cuda": the job trains on GPUs (identity)
            progress=False,
        )
    except _Invalid as err:
        raise ConfigError(_message(err, f"grid row {row.label}")) from None


def row_stages(
    spec: GridSpec, row: Row, overrides: StageOverrides = NO_OVERRIDES
) -> list[tuple[StageKind, StageOverrides]]:
    """The stage kinds a row trains, dependencies first, with each one's overrides.

    ``overrides`` apply to the row's own (last) stage; a KD row's teacher is the plain one every
    KD row shares.
    """
    kinds: list[StageKind] = [k.value for k in RowKind(row.kind).stages]
    own = overrides
    if row.kind == "equal_compute":
        budget = spec.epochs_at(row.budget)
        own = overrides.over(StageOverrides(epochs=equal_compute_epochs(budget)))
    return [(k, NO_OVERRIDES) for k in kinds[:-1]] + [(kinds[-1], own)]


def row_requests(
    spec: GridSpec, row: Row, overrides: StageOverrides = NO_OVERRIDES
) -> list[StageRequest]:
    """The stages one row needs, dependencies first; the last one is the row's own stage."""
    tags = {"raykd.dataset": row.dataset}
    if row.fold is not None:  # the report's unit level and budget axis (raykd.report)
        tags["raykd.fold"] = str(row.fold)
    if row.budget != 1:
        tags["raykd.budget"] = f"{row.budget:g}"
    if row.kind == "equal_compute":
        tags["raykd.row"] = "equal_compute"
    requests: list[StageRequest] = []
    for kind, over in row_stages(spec, row, overrides):
        teacher_id = requests[-1].stage_id if kind == "kd" else None
        requests.append(StageRequest(stage_config(spec, row, kind, over), teacher_id, dict(tags)))
    return requests
