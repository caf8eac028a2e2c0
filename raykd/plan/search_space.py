"""Search spaces (``search_spaces/*.yaml``): what a search samples and what one sampled point
trains.

A search file names a base grid preset, the Table-1 row a trial trains (e.g. ``sft_kd``), the
parameters (KD method, loss weights, student depth, acceleration...) and the objective(s).
:func:`trial_row_and_spec` turns one sampled point into the grid spec, row and stage overrides
it stands for; the Tune/Optuna driving is :mod:`raykd.orchestration.search`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from raykd.errors import ConfigError
from raykd.kinds import KD_ROWS
from raykd.plan.package_data import GRID_FILE_NAME, search_space_file, shipped_names
from raykd.plan.presets import GridSpec
from raykd.plan.rows import Row
from raykd.plan.stages import StageOverrides
from raykd.train.config import CANONICAL_KD_WEIGHTS, format_validation_error

# Objectives a trial can report: validation PSNR/SSIM of the best epoch, and student size.
OBJECTIVES = {"val_psnr", "val_ssim", "val_loss", "student_params"}
TUNE_KEYS = {"val_psnr": "val/psnr", "val_loss": "val/loss"}
PARAMS = {
    "method",
    "kd_balance",  # r: KD weight calibrated so weighted KD = r × L1 at the start
    "imit_balance",  # the same for the SFT imitation weight
    "kd_weight_scale",  # × the canonical (classification) weight: a fixed weight
    "output_weight",
    "w_imit",
    "w_s",
    "student_depth",
    "acceleration",
}


class ParamSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    choices: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _one(self) -> ParamSpec:
        given = [k for k in ("choices", "uniform", "loguniform") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of choices / uniform / loguniform")
        if self.loguniform and min(self.loguniform) <= 0:
            raise ValueError("loguniform bounds must be > 0")
        return self

    def distribution(self):
        """The Optuna distribution sampling this parameter."""
        import optuna

        if self.choices is not None:
            return optuna.distributions.CategoricalDistribution(self.choices)
        if self.uniform is not None:
            return optuna.distributions.FloatDistribution(*self.uniform)
        return optuna.distributions.FloatDistribution(*self.loguniform, log=True)

    def probe_values(self) -> list[Any]:
        """Every choice, or both bounds of a continuous range (what preflight checks)."""
        if self.choices is not None:
            return list(self.choices)
        bounds = self.uniform or self.loguniform
        return list(bounds) if bounds else []


class Objective(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric: str
    mode: Literal["max", "min"]


class Scheduler(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["asha", "none"] = "asha"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2, gt=1)


class SearchSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    base_preset: str = "smoke"
    # type: ignore: a Literal of the KD rows tuple (mypy reads only literal values; pydantic
    # validates against it)
    row: Literal[KD_ROWS] = "sft_kd"  # type: ignore[valid-type]
    num_samples: int = Field(12, ge=1)
    objectives: list[Objective]
    scheduler: Scheduler = Scheduler()
    params: dict[str, ParamSpec]
    # The configuration a confirmed search (--confirm) tests the winners against: values of
    # some searched parameters; the others keep the base preset's values (``method``: its first).
    default: dict[str, Any] = {}

    @model_validator(mode="after")
    def _check(self) -> SearchSpec:
        unknown = set(self.params) - PARAMS
        if unknown:
            raise ValueError(f"unknown search parameter(s) {sorted(unknown)}; expected {PARAMS}")
        stray = set(self.default) - set(self.params)
        if stray:
            raise ValueError(
                f"default: {sorted(stray)} not searched; expected some of {sorted(self.params)}"
            )
        bad = {o.metric for o in self.objectives} - OBJECTIVES
        if bad:
            raise ValueError(f"unknown objective(s) {sorted(bad)}; expected {OBJECTIVES}")
        if {"kd_balance", "kd_weight_scale"} <= set(self.params):
            raise ValueError("search kd_balance (calibrated) or kd_weight_scale (fixed), not both")
        if len(self.objectives) == 1 and self.objectives[0].metric not in TUNE_KEYS:
            raise ValueError(f"a single objective must be one of {sorted(TUNE_KEYS)}")
        if len(self.objectives) > 1 and self.scheduler.type != "none":
            raise ValueError("early stopping (asha) needs a single objective; use type: none")
        method = self.params.get("method")
        if method is not None and method.choices is not None:
            from raykd.distill import available_kd_methods

            unknown_methods = sorted(set(method.choices) - set(available_kd_methods()))
            if unknown_methods:
                raise ValueError(
                    f"params.method: unknown KD method(s) {unknown_methods}; expected some of "
                    f"{available_kd_methods()}"
                )
        return self


def search_space_names() -> list[str]:
    """The shipped search spaces (every shipped YAML but the grid presets)."""
    grid = GRID_FILE_NAME[: -len(".yaml")]
    return [n for n in shipped_names() if n != grid]


def load_search(path_or_name: str, overrides: dict[str, Any] | None = None) -> SearchSpec:
    """A search space: a YAML file, or the name of a shipped one; ``overrides`` (None values:
    not given) replace its top-level keys."""
    path: Any = Path(path_or_name)
    if not path.is_file():
        path = search_space_file(path_or_name)
    if not path.is_file():
        raise ConfigError(
            f"search space '{path_or_name}': no such file; built in: {search_space_names()}"
        )
    data = yaml.safe_load(path.read_text()) or {}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return SearchSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path), path)) from None


def trial_row_and_spec(
    search: SearchSpec, base: GridSpec, params: dict[str, Any]
) -> tuple[GridSpec, Row, StageOverrides]:
    """The grid spec, row and stage overrides one sampled point stands for (first seed)."""
    method = params.get("method", base.methods[0])
    spec_update: dict[str, Any] = {
        k: params[k] for k in ("w_s", "w_imit", "imit_balance") if k in params
    }
    if "kd_balance" in params:
        # A calibrated weight: a fixed weight for this method would take precedence.
        spec_update["kd_balance"] = params["kd_balance"]
        spec_update["kd_weights"] = {k: v for k, v in base.kd_weights.items() if k != method}
    if "kd_weight_scale" in params:
        weight = CANONICAL_KD_WEIGHTS.get(method, 1.0) * params["kd_weight_scale"]
        spec_update["kd_weights"] = {**base.kd_weights, method: weight}
    # Validated: a sampled value outside what the grid accepts fails here, by name.
    spec = GridSpec.model_validate({**base.model_dump(), **spec_update})
    row = Row(
        dataset=base.datasets[0],
        acceleration=float(params.get("acceleration", base.accelerations[0])),
        seed=base.first_seed,
        kind=search.row,
        student_depth=int(params.get("student_depth", base.student_depths[0])),
        method=method,
    )
    overrides = StageOverrides(kd_output_weight=params.get("output_weight"))
    return spec, row, overrides


def default_params(search: SearchSpec, base: GridSpec) -> dict[str, Any]:
    """The default configuration as sampled parameters: the space's ``default`` values, and for a
    searched KD method the base preset's first one; every other parameter is left out, so
    :func:`trial_row_and_spec` keeps the base preset's value (e.g. its ``kd_balance``)."""
    params = dict(search.default)
    if "method" in search.params and "method" not in params:
        params["method"] = base.methods[0]
    return params


def sampled_rows(search: SearchSpec, base: GridSpec) -> list[Row]:
    """One row per combination of the categorical values a search can sample (both bounds of a
    continuous one): every stage setting a trial may train."""

    def values(name: str, default: Any) -> list[Any]:
        p = search.params.get(name)
        return [default] if p is None else p.probe_values()

    return [
        Row(
            dataset=base.datasets[0],
            acceleration=float(acc),
            seed=base.first_seed,
            kind=search.row,
            student_depth=int(depth),
            method=method,
        )
        for acc in values("acceleration", base.accelerations[0])
        for depth in values("student_depth", base.student_depths[0])
        for method in values("method", base.methods[0])
    ]


def trial_name(params: dict[str, Any]) -> str:
    """A trial's run name: its sampled parameters, e.g. ``method=at kd_weight_scale=0.53``."""

    def fmt(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return " ".join(f"{k}={fmt(v)}" for k, v in params.items()) or "trial"
