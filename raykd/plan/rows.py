"""Table-1 rows: the typed :class:`Row` a grid or search trial trains, and their labels."""

from __future__ import annotations

from itertools import product
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from raykd.kinds import KD_ROWS
from raykd.plan.presets import GridSpec, RowName


class Row(BaseModel):
    """One grid row: a setting, a seed, the row kind and its student (depth, KD method).

    Serialised (Tune configs, job summaries, the report's frames) with the kind under ``row``.
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )
    dataset: str
    acceleration: float
    seed: int
    kind: RowName = Field(alias="row")
    student_depth: int
    method: str | None = None
    fold: int | None = Field(None, ge=0)  # cross-validation fold (raykd.plan.folds)
    budget: float = Field(1.0, gt=0)  # budget scale: every stage's epochs times this

    @property
    def label(self) -> str:
        """``dataset/4x/s42/sft_kd/D3/at`` (``…/4x/b2/f1/s42/…`` in a budget study / fold 1):
        what tables and logs call the row."""
        parts = [self.setting, f"s{self.seed}", self.kind]
        if self.kind != "teacher":
            parts.append(f"D{self.student_depth}")
        if self.method:
            parts.append(self.method)
        return "/".join(parts)

    @property
    def setting(self) -> str:
        """``dataset/4x`` (``dataset/4x/b2/f1`` at budget 2, fold 1): what its seeds repeat."""
        parts = [self.dataset, f"{self.acceleration:g}x"]
        parts += [f"b{self.budget:g}"] if self.budget != 1 else []
        parts += [f"f{self.fold}"] if self.fold is not None else []
        return "/".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a Tune config or a JSON result (``Row.model_validate`` reads it back)."""
        return self.model_dump(mode="json")


def row_label(row: Row) -> str:
    return row.label


def grid_rows(spec: GridSpec) -> list[Row]:
    """Every Table-1 row of the grid, in table order."""
    rows = []
    for dataset in spec.datasets:
        for acc, budget, fold, seed in product(
            spec.accelerations, spec.budget_scales, spec.fold_list(), spec.seed_list()
        ):
            for kind in spec.rows:
                # The plain teacher has no student part: one row whatever the depths.
                depths = spec.student_depths[:1] if kind == "teacher" else spec.student_depths
                methods = spec.methods if kind in KD_ROWS else [None]
                rows += [
                    Row(
                        dataset=dataset,
                        acceleration=acc,
                        seed=seed,
                        kind=kind,
                        student_depth=depth,
                        method=method,
                        fold=fold,
                        budget=budget,
                    )
                    for depth in depths
                    for method in methods
                ]
    return rows


def trial_groups(spec: GridSpec, rows: list[Row]) -> list[list[Row]]:
    """Rows per Tune trial: one each, or every row of a (dataset, acceleration, budget, fold,
    seed) together.

    One trial per row lets a GPU cluster run KD rows in parallel; one per seed saves a trial
    start per row where trials run one at a time anyway (a small CPU box).
    """
    if spec.trial_unit == "row":
        return [[r] for r in rows]
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        groups.setdefault((r.dataset, r.acceleration, r.budget, r.fold, r.seed), []).append(r)
    return list(groups.values())
