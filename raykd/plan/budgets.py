"""Training-budget rules of a grid: every student row trains the same epochs, and the
equal-compute control trains as long as an SFT-KD student's blocks do."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from raykd.plan.presets import GridSpec

# Rows whose own stage is a student compared at equal training (the control excluded).
STUDENT_ROWS = ("student", "std_kd", "sft_kd", "sft_kd_random")


def equal_compute_epochs(spec: GridSpec) -> int:
    """Epochs of the equal-compute control: SFT epochs + KD epochs, so SFT-KD's extra training
    is not credited to SFT."""
    return spec.epochs.sft + spec.epochs.kd


def budget_warnings(spec: GridSpec) -> list[str]:
    """Where student rows get unequal epochs (plain student vs KD rows); shipped presets never
    do, an explicit override may."""
    students = {r for r in spec.rows if r in STUDENT_ROWS}
    if len(students) > 1 and spec.epochs.student != spec.epochs.kd:
        return [
            f"unequal budgets: plain student {spec.epochs.student} epochs vs KD students "
            f"{spec.epochs.kd} epochs; comparisons between these rows are not at equal training"
        ]
    return []
