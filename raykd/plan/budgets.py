"""Training budgets of a grid: epochs per stage kind, equal epochs for every student row, the
equal-compute control that trains as long as an SFT-KD student's blocks do, and the learning-rate
step scaled with a budget study's epochs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from raykd.kinds import EQUAL_BUDGET_ROWS
from raykd.train.config import OptimConfig


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


def scaled_step_size(factor: float) -> int | None:
    """``optim.step_size`` at a budget scale: the default step times ``factor`` (rounded, at
    least one), so the step falls at the same fraction of every stage's training as at 1×;
    None at 1× (the default, so 1× stages keep their identities)."""
    if factor == 1:
        return None
    base = OptimConfig.model_fields["step_size"].default
    return max(1, round(base * factor))


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
