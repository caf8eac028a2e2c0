"""The one vocabulary of stage kinds and grid row kinds, and what the code asks of them.

A *stage* is one training run (``teacher | sft | student | kd``); a *row* is a line of the
paper's Table 1, trained as a chain of stages (:attr:`RowKind.stages`). Every other module
reads these enums or the tuples derived here (``tests/test_kinds.py`` refuses a list of them
spelled anywhere else). Configs, tags and summaries keep the plain string values (both enums
are ``StrEnum``: a member equals and formats as its value), so stored identities do not move.

Two notions of "student row" exist and differ on purpose on the equal-compute control:

- :attr:`RowKind.is_student_row`: the row's own model is the student network (the control is
  one: a plain student trained longer). Asked by "which student row is best".
- :attr:`RowKind.at_equal_budget`: student rows that must get equal epochs to be compared; the
  control is *excluded*, it deliberately trains ``epochs.sft + epochs.kd`` epochs.
"""

from __future__ import annotations

from enum import StrEnum


class StageKind(StrEnum):
    TEACHER = "teacher"
    SFT = "sft"
    STUDENT = "student"
    KD = "kd"


class RowKind(StrEnum):
    TEACHER = "teacher"
    SFT_TEACHER = "sft_teacher"
    STUDENT = "student"
    EQUAL_COMPUTE = "equal_compute"
    STD_KD = "std_kd"
    SFT_KD = "sft_kd"
    SFT_KD_RANDOM = "sft_kd_random"

    @property
    def stages(self) -> tuple[StageKind, ...]:
        """Stage kinds the row trains, dependencies first; the last is the row's own stage."""
        return _STAGES[self]

    @property
    def own_stage(self) -> StageKind:
        return self.stages[-1]

    @property
    def is_kd_row(self) -> bool:
        """The row's stage is a distilled student (it names a KD method)."""
        return self.own_stage is StageKind.KD

    @property
    def is_student_row(self) -> bool:
        """The row's model is the student network (the equal-compute control included)."""
        return self.own_stage in (StageKind.STUDENT, StageKind.KD)

    @property
    def at_equal_budget(self) -> bool:
        """A student row compared at equal epochs (the equal-compute control excluded)."""
        return self.is_student_row and self is not RowKind.EQUAL_COMPUTE

    @property
    def needs_teacher(self) -> bool:
        """Trained from a teacher's checkpoint (without one, teacher depth is no identity)."""
        return StageKind.TEACHER in self.stages[:-1] or StageKind.SFT in self.stages[:-1]

    @property
    def sft_init(self) -> bool:
        """A KD student that starts from the SFT teacher's student blocks."""
        return self is RowKind.SFT_KD

    @property
    def in_default_grid(self) -> bool:
        """Trained when a grid names no rows (the random-init ablation is opt-in)."""
        return self is not RowKind.SFT_KD_RANDOM

    @property
    def label(self) -> str:
        """How tables and figures name the row."""
        return _LABELS[self]


_STAGES: dict[RowKind, tuple[StageKind, ...]] = {
    RowKind.TEACHER: (StageKind.TEACHER,),
    RowKind.SFT_TEACHER: (StageKind.SFT,),
    RowKind.STUDENT: (StageKind.STUDENT,),
    RowKind.EQUAL_COMPUTE: (StageKind.STUDENT,),
    RowKind.STD_KD: (StageKind.TEACHER, StageKind.KD),
    RowKind.SFT_KD: (StageKind.SFT, StageKind.KD),
    RowKind.SFT_KD_RANDOM: (StageKind.SFT, StageKind.KD),
}
_LABELS: dict[RowKind, str] = {
    RowKind.TEACHER: "Teacher",
    RowKind.SFT_TEACHER: "SFT teacher",
    RowKind.STUDENT: "Student",
    RowKind.EQUAL_COMPUTE: "Equal compute",
    RowKind.STD_KD: "Std-KD",
    RowKind.SFT_KD: "SFT-KD",
    RowKind.SFT_KD_RANDOM: "SFT-KD random init",
}

# Plain-string views for pydantic ``Literal`` fields, ``isin`` filters and help texts.
STAGE_KINDS: tuple[str, ...] = tuple(k.value for k in StageKind)
ROW_KINDS: tuple[str, ...] = tuple(r.value for r in RowKind)
KD_ROWS: tuple[str, ...] = tuple(r.value for r in RowKind if r.is_kd_row)
STUDENT_ROWS: tuple[str, ...] = tuple(r.value for r in RowKind if r.is_student_row)
EQUAL_BUDGET_ROWS: tuple[str, ...] = tuple(r.value for r in RowKind if r.at_equal_budget)
NO_TEACHER_ROWS: tuple[str, ...] = tuple(
    r.value for r in RowKind if r.is_student_row and not r.needs_teacher
)
DEFAULT_ROWS: tuple[str, ...] = tuple(r.value for r in RowKind if r.in_default_grid)
