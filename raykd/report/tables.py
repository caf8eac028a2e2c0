"""The paper's Table 1 (PSNR/SSIM) and Table 3 (HFN/VIF) from collected runs.

Rows: the zero-filled input (read from what the stages logged, never recomputed), the teachers,
the student, the controls and every KD method; columns Std-KD and SFT-KD per metric. Cells and
their pooling over seeds: :mod:`raykd.report.cells`; Table 8: :mod:`raykd.report.table8`; the
teacher–student gap: :mod:`raykd.report.gap`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from raykd.kinds import RowKind
from raykd.report.cells import mark_best, record, report_cell, section_lead, seed_cell, table_notes
from raykd.report.records import Setting
from raykd.report.runs import StageRuns
from raykd.report.table_model import (
    EQUAL_COMPUTE,
    FRAMEWORKS,
    Cell,
    ReportTable,
    Section,
    method_name,
)


@dataclass(frozen=True)
class _Entry:
    """One row of a setting's section: its label, kind (``kd`` for a method's row), method,
    cells per framework and metric, whether it competes for bold, and the grid row kind of each
    framework's cells where it is not the plain mapping (:func:`_schema_row`)."""

    label: str
    row: str
    method: str
    cells: dict[str, dict[str, Cell]]
    contender: bool
    rows: dict[str, str] | None = None


def model_table(
    runs: StageRuns,
    metrics: tuple[str, ...],
    title: str,
    student_depth: int | None = None,
    teacher_depth: int | None = None,
) -> ReportTable:
    """Table 1 / 3 layout: rows ZF, Teacher, Student, each KD method; columns Std-KD and
    SFT-KD per metric (the Teacher row's SFT-KD column is the SFT teacher, as in the paper).

    When the store has them, two more rows: the equal-compute student (a plain student trained
    for SFT + KD epochs, in the SFT-KD columns since it matches SFT-KD's training budget) and,
    per method, SFT-KD with a random student initialisation (the paper's Table 5).

    Bold marks the best student-sized model per setting and metric (student, Std-KD, SFT-KD and
    the controls): the teachers and the zero-filled input are references, not contenders.
    """
    t_depth = teacher_depth or runs.teacher_depth()
    s_depth = student_depth or runs.student_depth()
    table = ReportTable(title)
    table.notes = _notes(runs, t_depth, s_depth)
    header = ["Model"] + [f"{FRAMEWORKS[fw]} {m.upper()}" for fw in FRAMEWORKS for m in metrics]
    for setting in runs.settings():
        entries = _entries(runs, setting, metrics, t_depth, s_depth)
        for m in metrics:
            mark_best([e.cells[fw][m] for e in entries if e.contender for fw in FRAMEWORKS], m)
        rows = [
            [e.label] + [e.cells[fw][m].text(m) for fw in FRAMEWORKS for m in metrics]
            for e in entries
        ]
        table.records += _records(runs, setting, entries, metrics, t_depth, s_depth)
        lead = section_lead(runs, setting)
        table.sections.append(Section(setting.label(), header, rows, lead=lead))
    return table


def _notes(runs: StageRuns, t_depth: int, s_depth: int) -> list[str]:
    arch = f"teacher D{t_depth}, student D{s_depth}"
    with_equal = (runs.frame["row"] == "equal_compute").any()
    return table_notes(
        runs,
        f"Mean ± std over volumes unless pooled over seeds; {arch}; source: {runs.source}.",
        "Teacher row: the Std-KD column is the plain teacher, the SFT-KD column the "
        "student-friendly (SFT) teacher. Bold: best student-sized model per setting and metric "
        "(by unrounded mean).",
        *(
            [
                f"{EQUAL_COMPUTE}: a plain student trained for SFT + KD epochs (the training "
                "budget of an SFT-KD student), the control for SFT-KD's extra training."
            ]
            if with_equal
            else []
        ),
    )


def _entries(
    runs: StageRuns, setting: Setting, metrics: tuple[str, ...], t_depth: int, s_depth: int
) -> list[_Entry]:
    """The section's rows in table order: ZF (or LR input), Teacher, Student, the
    equal-compute control, one row per KD method, SFT-KD with random init per method."""
    zf = runs.zero_filled(setting)
    seeds = runs.seeds(setting)

    def cells_of(row: str, method: str = "") -> dict[str, Cell]:
        found = runs.find_seeds(setting, row, method, t_depth, s_depth)
        return {m: seed_cell(runs, found, m, seeds) for m in metrics}

    na = {m: Cell(status="n/a") for m in metrics}
    zf_cells = {m: report_cell(runs, zf, m, "") for m in metrics}
    # Super-resolution: the network input is the interpolated low-resolution image.
    zf_name = "LR input" if setting.acceleration.startswith("sr") else "ZF"
    entries = [_Entry(zf_name, "zero_filled", "", {"std": zf_cells, "sft": dict(na)}, False)]
    teacher = {"std": cells_of("teacher"), "sft": cells_of("sft_teacher")}
    entries.append(_Entry("Teacher", "teacher", "", teacher, False))
    entries.append(_Entry("Student", "student", "", {"std": cells_of("student"), "sft": na}, True))
    if (runs.frame["row"] == "equal_compute").any():
        cells = {"std": dict(na), "sft": cells_of("equal_compute")}
        entries.append(_Entry(EQUAL_COMPUTE, "equal_compute", "", cells, True))
    methods = runs.methods()
    for method in methods:
        cells = {"std": cells_of("std_kd", method), "sft": cells_of("sft_kd", method)}
        entries.append(_Entry(method_name(method), "kd", method, cells, True))
    if (runs.frame["row"] == "sft_kd_random").any():
        for method in methods:
            cells = {"std": dict(na), "sft": cells_of("sft_kd_random", method)}
            label = f"{method_name(method)} (SFT-KD, random init)"
            rows = {"sft": RowKind.SFT_KD_RANDOM.value}
            entries.append(_Entry(label, "kd", method, cells, True, rows))
    return entries


def _records(
    runs: StageRuns,
    setting: Setting,
    entries: list[_Entry],
    metrics: tuple[str, ...],
    t_depth: int,
    s_depth: int,
) -> list[dict[str, Any]]:
    """One CSV record per filled cell, named by the schema's row kinds."""
    out = []
    for e in entries:
        for fw in FRAMEWORKS:
            for m in metrics:
                cell = e.cells[fw][m]
                if cell.status == "n/a":
                    continue
                out.append(
                    record(
                        setting,
                        runs.split,
                        cell,
                        m,
                        model=e.label,
                        row=(e.rows or {}).get(fw) or _schema_row(e.row, fw),
                        method=e.method,
                        framework=FRAMEWORKS[fw] if e.row == "kd" else "",
                        teacher_depth=t_depth if e.row != "zero_filled" else None,
                        student_depth=s_depth if e.row not in ("teacher", "zero_filled") else None,
                    )
                )
    return out


def _schema_row(row: str, fw: str) -> str:
    """The grid row kind of an entry's cells in framework ``fw`` (never read from its label)."""
    if row == RowKind.TEACHER:
        return (RowKind.TEACHER if fw == "std" else RowKind.SFT_TEACHER).value
    if row == "kd":
        return (RowKind.STD_KD if fw == "std" else RowKind.SFT_KD).value
    return row


def table_1(runs: StageRuns, **kw: Any) -> ReportTable:
    return model_table(runs, ("psnr", "ssim"), "Table 1: PSNR (dB) / SSIM", **kw)


def table_3(runs: StageRuns, **kw: Any) -> ReportTable:
    title = "Table 3: HFN (lower is better) / VIF (higher is better)"
    return model_table(runs, ("hfn", "vif"), title, **kw)
