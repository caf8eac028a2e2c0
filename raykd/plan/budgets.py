"""Training budgets of a grid: epochs per stage kind, equal epochs for every student row, and
the equal-compute control that trains as long as an SFT-KD student's blocks do."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from raykd.kinds import EQUAL_BUDGET_ROWS


class Epochs(BaseModel):
    """Epochs per stage kind."""

    model_config = ConfigDict(extra="forbid")
    teacher: int = Field(150, ge=1)
    sft: int = Field(150, ge=1)
    student: int = Field(150, ge=1)
    kd: int = Field(150, ge=1)

    def scaled(self, factor: float) -> Epochs:
        """Every kind's epochs times ``factor`` (a budget study), rounded, at least one."""
        if factor == 1:
            return self
        return Epochs(**{k: max(1, round(v * factor)) for k, v in self.model_dump().items()})


def equal_compute_epochs(epochs: Epochs) -> int:
    """Epochs of the equal-compute control: SFT epochs + KD epochs, so SFT-KD's extra training
    is not credited to SFT."""
    return epochs.sft + epochs.kd


def budget_warnings(rows: list[str], epochs: Epochs) -> list[str]:
    """Where student rows get unequal epochs (plain student vs KD rows); shipped presets never
    do, an explicit override may."""
    students = {r for r in rows if r in EQUAL_BUDGET_ROWS}  # the control excluded
    if len(students) > 1 and epochs.student != epochs.kd:
        return [
            f"unequal budgets: plain student {epochs.student} epochs vs KD students "
            f"{epochs.kd} epochs; comparisons between these rows are not at equal training"
        ]
    return []
