"""One vocabulary of row and stage kinds (raykd/kinds.py): its properties, and no other list."""

from __future__ import annotations

import ast
from pathlib import Path

from raykd.kinds import (
    DEFAULT_ROWS,
    EQUAL_BUDGET_ROWS,
    KD_ROWS,
    NO_TEACHER_ROWS,
    ROW_KINDS,
    STUDENT_ROWS,
    RowKind,
    StageKind,
)

ROOT = Path(__file__).resolve().parents[1] / "raykd"
ROW_ONLY = set(ROW_KINDS) - {k.value for k in StageKind}  # sft_teacher, equal_compute, *_kd*


def _literal_lists(path: Path) -> list[tuple[int, list[str]]]:
    """(line, strings) of every tuple/list/set literal and dict's keys and values."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        groups: list[list[ast.expr]] = []
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            groups = [node.elts]
        elif isinstance(node, ast.Dict):
            groups = [[k for k in node.keys if k is not None], node.values]
        for elts in groups:
            strings = [e.value for e in elts if isinstance(e, ast.Constant)]
            out.append((node.lineno, [s for s in strings if isinstance(s, str)]))
    return out


def test_no_list_of_row_or_stage_kinds_outside_the_vocabulary() -> None:
    """A literal naming two row kinds (one of them row-only) or three stage kinds is a second
    vocabulary: derive it from ``RowKind``/``StageKind`` instead."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        if path == ROOT / "kinds.py":
            continue
        for line, strings in _literal_lists(path):
            rows = [s for s in strings if s in ROW_KINDS]
            stages = [s for s in strings if s in {k.value for k in StageKind}]
            if (len(rows) >= 2 and set(rows) & ROW_ONLY) or len(stages) >= 3:
                found.append(f"{path.relative_to(ROOT.parent)}:{line} {strings}")
    assert found == [], "\n".join(found)


def test_the_finder_sees_a_list(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text('ROWS = ("std_kd", "sft_kd")\nD = {"a": "sft_kd", "b": "equal_compute"}\n')
    assert [line for line, s in _literal_lists(bad) if len(set(s) & ROW_ONLY) >= 2] == [1, 2]


def test_row_properties() -> None:
    assert RowKind("sft_kd").stages == (StageKind.SFT, StageKind.KD)
    assert RowKind.STD_KD.stages == ("teacher", "kd")  # StrEnum: members equal their values
    assert KD_ROWS == ("std_kd", "sft_kd", "sft_kd_random")
    # The equal-compute control is a student row (its model is the student network) but is
    # not compared at equal epochs: it trains epochs.sft + epochs.kd on purpose.
    assert "equal_compute" in STUDENT_ROWS and "equal_compute" not in EQUAL_BUDGET_ROWS
    assert set(STUDENT_ROWS) - set(EQUAL_BUDGET_ROWS) == {"equal_compute"}
    assert NO_TEACHER_ROWS == ("student", "equal_compute")
    assert "sft_kd_random" not in DEFAULT_ROWS and len(DEFAULT_ROWS) == len(ROW_KINDS) - 1
    assert [r.own_stage for r in RowKind] == ["teacher", "sft", "student", "student", "kd",
                                              "kd", "kd"]  # fmt: skip
    assert f"{RowKind.SFT_KD}" == "sft_kd" and RowKind.SFT_KD.label == "SFT-KD"
