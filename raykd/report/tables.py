"""The paper's tables from collected runs: Table 1 (PSNR/SSIM), Table 3 (HFN/VIF), Table 8
(depths, parameters, latency) and the teacher–student gap.

Cells are mean ± sample std over volumes of the report's split. A cell whose run is missing
shows "—" (and a :class:`~raykd.report.ReportWarning` names it); a cell that does not apply
(the zero-filled image has no SFT-KD variant) is blank. Numbers are never zeroed or dropped.
Every table is written as Markdown (for reading) and as a tidy CSV (unrounded, for analysis).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raykd.report import warn
from raykd.report.collect import Setting, StageRuns, volume_summary

MISSING = "—"
NOT_APPLICABLE = ""
DECIMALS = {"psnr": 2, "ssim": 4, "nmse": 4, "hfn": 4, "hfen": 4, "vif": 4}
HIGHER_IS_BETTER = {
    "psnr": True,
    "ssim": True,
    "vif": True,
    "nmse": False,
    "hfn": False,
    "hfen": False,
}
METHOD_NAMES = {
    "at": "AT",
    "fitnets": "FitNets",
    "fsp": "FSP",
    "sp": "SP",
    "cc": "CC",
    "pkt": "PKT",
    "nst": "NST",
    "ft": "FT",
}
FRAMEWORKS = {"std": "Std-KD", "sft": "SFT-KD"}
LEGEND = f"{MISSING} = run missing (see the warnings); blank = not applicable."


def method_name(method: str) -> str:
    return METHOD_NAMES.get(method, method.upper())


@dataclass
class Cell:
    """One table value: mean ± std over ``n`` volumes of run ``run_id``."""

    mean: float = math.nan
    std: float = math.nan
    n: int = 0
    run_id: str = ""
    status: str = "ok"  # ok | missing | n/a
    best: bool = False

    def text(self, metric: str) -> str:
        if self.status == "missing":
            return MISSING
        if self.status == "n/a":
            return NOT_APPLICABLE
        if math.isnan(self.mean):  # e.g. VIF below 41 px: the metric is undefined, not lost
            return "undefined"
        d = DECIMALS.get(metric, 4)
        body = f"{self.mean:.{d}f} ± {self.std:.{d}f}"
        return f"**{body}**" if self.best else body


@dataclass
class Section:
    heading: str
    header: list[str]
    rows: list[list[str]]
    lead: str = ""


@dataclass
class ReportTable:
    """A table as Markdown sections (one per setting) plus its tidy numbers for CSV."""

    title: str
    sections: list[Section] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)

    @property
    def frame(self) -> pd.DataFrame:
        return pd.DataFrame.from_records(self.records)

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        out += [*(f"{n}  " for n in self.notes), ""] if self.notes else []
        for s in self.sections:
            out += [f"## {s.heading}", ""]
            if s.lead:
                out += [s.lead, ""]
            out.append("| " + " | ".join(s.header) + " |")
            out.append("|" + "|".join("---" for _ in s.header) + "|")
            out += ["| " + " | ".join(r) + " |" for r in s.rows]
            out.append("")
        return "\n".join(out)

    def write(self, out_dir: str | Path, stem: str, csv: bool = True) -> list[Path]:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        md = out_dir / f"{stem}.md"
        md.write_text(self.markdown())
        paths = [md]
        if csv:
            path = out_dir / f"{stem}.csv"
            self.frame.to_csv(path, index=False)
            paths.append(path)
        return paths


# ---- cells -------------------------------------------------------------------------------------
def report_cell(runs: StageRuns, report: dict[str, Any] | None, metric: str, run_id: str) -> Cell:
    if report is None:
        return Cell(status="missing", run_id=run_id)
    if not all(metric in v["metrics"] for v in report["volumes"]):
        runs.warn_once(f"run {run_id or 'zero-filled'}: no '{metric}' in its eval JSON; shown as —")
        return Cell(status="missing", run_id=run_id)
    mean, std, n = volume_summary(report, metric)
    return Cell(mean, std, n, run_id)


def run_cell(runs: StageRuns, run: pd.Series | None, metric: str) -> Cell:
    if run is None:
        return Cell(status="missing")
    return report_cell(runs, runs.eval(run["run_id"]), metric, run["run_id"])


def mark_best(cells: list[Cell], metric: str) -> None:
    """Bold the best defined mean (ties all bold)."""
    vals = [c.mean for c in cells if c.status == "ok" and np.isfinite(c.mean)]
    if not vals:
        return
    best = max(vals) if HIGHER_IS_BETTER.get(metric, True) else min(vals)
    for c in cells:
        if c.status == "ok" and c.mean == best:
            c.best = True


def _record(setting: Setting, split: str, cell: Cell, metric: str, **extra: Any) -> dict:
    return {
        "dataset": setting.dataset,
        "acceleration": setting.acceleration,
        "seed": setting.seed,
        **extra,
        "metric": metric,
        "mean": cell.mean,
        "std": cell.std,
        "n_volumes": cell.n,
        "best": cell.best,
        "status": cell.status,
        "run_id": cell.run_id,
        "split": split,
    }


# ---- Table 1 / Table 3 ---------------------------------------------------------------------------
def model_table(
    runs: StageRuns,
    metrics: tuple[str, ...],
    title: str,
    student_depth: int | None = None,
    teacher_depth: int | None = None,
) -> ReportTable:
    """Table 1 / 3 layout: rows ZF, Teacher, Student, each KD method; columns Std-KD and
    SFT-KD per metric (the Teacher row's SFT-KD column is the SFT teacher, as in the paper).

    Bold marks the best student-sized model per setting and metric (student, Std-KD, SFT-KD):
    the teachers and the zero-filled input are references, not contenders.
    """
    t_depth = teacher_depth or runs.teacher_depth()
    s_depth = student_depth or runs.student_depth()
    methods = runs.methods()
    with_random = (runs.frame["row"] == "sft_kd_random").any()
    multi_seed = any(s.seed for s in runs.settings())
    table = ReportTable(title)
    arch = f"teacher D{t_depth}, student D{s_depth}"
    table.notes = [
        f"Split: {runs.split} (mean ± std over volumes); {arch}; source: {runs.source}.",
        "Teacher row: the Std-KD column is the plain teacher, the SFT-KD column the "
        "student-friendly (SFT) teacher. Bold: best student-sized model per setting and metric "
        "(by unrounded mean).",
        LEGEND,
    ]
    header = ["Model"] + [f"{FRAMEWORKS[fw]} {m.upper()}" for fw in FRAMEWORKS for m in metrics]
    for setting in runs.settings():
        zf = runs.zero_filled(setting)

        def find(row: str, method: str = "", _s: Setting = setting) -> pd.Series | None:
            return runs.find(_s, row, method, t_depth, s_depth)

        na = {m: Cell(status="n/a") for m in metrics}
        entries: list[tuple[str, str, str, dict[str, dict[str, Cell]], bool]] = []
        zf_cells = {m: report_cell(runs, zf, m, "") for m in metrics}
        entries.append(("ZF", "zero_filled", "", {"std": zf_cells, "sft": dict(na)}, False))
        teacher, sft_teacher = find("teacher"), find("sft_teacher")
        entries.append(
            (
                "Teacher",
                "teacher",
                "",
                {
                    "std": {m: run_cell(runs, teacher, m) for m in metrics},
                    "sft": {m: run_cell(runs, sft_teacher, m) for m in metrics},
                },
                False,
            )
        )
        student = find("student")
        student_cells = {m: run_cell(runs, student, m) for m in metrics}
        entries.append(("Student", "student", "", {"std": student_cells, "sft": dict(na)}, True))
        for method in methods:
            std_run, sft_run = find("std_kd", method), find("sft_kd", method)
            cells = {
                "std": {m: run_cell(runs, std_run, m) for m in metrics},
                "sft": {m: run_cell(runs, sft_run, m) for m in metrics},
            }
            entries.append((method_name(method), "kd", method, cells, True))
        if with_random:
            for method in methods:
                rnd = find("sft_kd_random", method)
                cells = {"std": dict(na), "sft": {m: run_cell(runs, rnd, m) for m in metrics}}
                entries.append(
                    (f"{method_name(method)} (SFT-KD, random init)", "kd", method, cells, True)
                )
        for m in metrics:
            mark_best([e[3][fw][m] for e in entries if e[4] for fw in FRAMEWORKS], m)
        rows = []
        for label, row, method, cells, _ in entries:
            rows.append([label] + [cells[fw][m].text(m) for fw in FRAMEWORKS for m in metrics])
            for fw in FRAMEWORKS:
                for m in metrics:
                    cell = cells[fw][m]
                    if cell.status == "n/a":
                        continue
                    table.records.append(
                        _record(
                            setting,
                            runs.split,
                            cell,
                            m,
                            model=label,
                            row=_schema_row(row, fw, label),
                            method=method,
                            framework=FRAMEWORKS[fw] if row == "kd" else "",
                            teacher_depth=t_depth if row != "zero_filled" else None,
                            student_depth=s_depth
                            if row not in ("teacher", "zero_filled")
                            else None,
                        )
                    )
        table.sections.append(Section(setting.label(multi_seed), header, rows))
    return table


def _schema_row(row: str, fw: str, label: str) -> str:
    if row == "teacher":
        return "teacher" if fw == "std" else "sft_teacher"
    if row == "kd":
        if "random init" in label:
            return "sft_kd_random"
        return "std_kd" if fw == "std" else "sft_kd"
    return row


def table_1(runs: StageRuns, **kw: Any) -> ReportTable:
    return model_table(runs, ("psnr", "ssim"), "Table 1: PSNR (dB) / SSIM", **kw)


def table_3(runs: StageRuns, **kw: Any) -> ReportTable:
    title = "Table 3: HFN (lower is better) / VIF (higher is better)"
    return model_table(runs, ("hfn", "vif"), title, **kw)


# ---- Table 8 -------------------------------------------------------------------------------------
def _arch_of(run: pd.Series | None, part: str) -> tuple[int, int]:
    """(cascades, channels) of a run's network (the paper's 5 and 32 when not recorded)."""
    if run is None:
        return 5, 32
    c, ch = run.get(f"{part}_cascades"), run.get(f"{part}_channels")
    c = 5 if c is None or pd.isna(c) else int(c)
    ch = 32 if ch is None or pd.isna(ch) else int(ch)
    return c, ch


def _params(depth: int, cascades: int, channels: int) -> int:
    from raykd.models.dccnn import DCCNN, count_parameters

    return count_parameters(DCCNN(depth, cascades, channels))


def table_8(
    runs: StageRuns,
    latency: Any | None = None,
    method: str | None = None,
    teacher_depth: int | None = None,
) -> ReportTable:
    """Parameters, latency and PSNR/SSIM/HFN/VIF per student depth: original (no KD), Std-KD
    and SFT-KD with one KD method (AT, the paper's choice, when it was run).

    ``latency`` is a :class:`raykd.report.latency.Benchmark` (the latest benchmark run) or None:
    then the column says "not measured". Bold: best of original/KD/SFT-KD per depth and metric.
    """
    metrics = ("psnr", "ssim", "hfn", "vif")
    t_depth = teacher_depth or runs.teacher_depth()
    methods = runs.methods()
    method = method or ("at" if "at" in methods else (methods[0] if methods else ""))
    multi_seed = any(s.seed for s in runs.settings())
    table = ReportTable("Table 8: compression (student depth), parameters, latency, quality")
    fws = {"orig": "Original", "std": "KD", "sft": "SFT-KD"}
    header = ["Model", "Parameters", "Latency (ms)"] + [
        f"{fws[fw]} {m.upper()}" for fw in fws for m in metrics
    ]
    table.notes = [
        f"Split: {runs.split} (mean ± std over volumes); KD method: "
        f"{method_name(method) if method else 'none run'}; source: {runs.source}.",
        "Parameters: DC-CNN count with the runs' cascades/channels; % = compression vs teacher. "
        "Bold: best of Original/KD/SFT-KD per depth and metric.",
    ]
    if latency is None:
        table.notes.append(
            "Latency not measured: no benchmark run (raykd.role=benchmark) in the store; run "
            "`raykd benchmark-inference --tracking-uri ... --experiment ...` first."
        )
        warn("Table 8: latency not measured (no benchmark run found in the MLflow store)")
    else:
        table.notes.append(
            latency.describe() + " A model whose depth, cascades or channels were not "
            "benchmarked shows 'not measured'."
        )
    table.notes.append(LEGEND)
    for setting in runs.settings():
        teacher = runs.find(setting, "teacher", teacher_depth=t_depth)
        t_casc, t_ch = _arch_of(teacher, "teacher")
        t_params = _params(t_depth, t_casc, t_ch) if t_depth else 0
        rows = []
        t_cells = {m: run_cell(runs, teacher, m) for m in metrics}
        blank = [NOT_APPLICABLE] * (2 * len(metrics))
        rows.append(
            [
                f"Teacher (D{t_depth}C{t_casc})",
                str(t_params),
                _latency_text(latency, t_depth, t_casc, t_ch),
                *[t_cells[m].text(m) for m in metrics],
                *blank,
            ]
        )
        for m in metrics:
            table.records.append(
                _record(
                    setting,
                    runs.split,
                    t_cells[m],
                    m,
                    model="teacher",
                    framework="original",
                    depth=t_depth,
                    params=t_params,
                    latency_ms=_latency_ms(latency, t_depth, t_casc, t_ch),
                )
            )
        for depth in runs.student_depths():
            student = runs.find(setting, "student", student_depth=depth)
            std_run = runs.find(setting, "std_kd", method, t_depth, depth) if method else None
            sft_run = runs.find(setting, "sft_kd", method, t_depth, depth) if method else None
            casc, ch = _arch_of(
                next((r for r in (student, std_run, sft_run) if r is not None), None), "student"
            )
            params = _params(depth, casc, ch)
            ratio = f" ({100 * (1 - params / t_params):.1f}%)" if t_params else ""
            cells = {
                "orig": {m: run_cell(runs, student, m) for m in metrics},
                "std": {m: run_cell(runs, std_run, m) for m in metrics},
                "sft": {m: run_cell(runs, sft_run, m) for m in metrics},
            }
            for m in metrics:
                mark_best([cells[fw][m] for fw in fws], m)
            rows.append(
                [
                    f"Student (D{depth}C{casc})",
                    f"{params}{ratio}",
                    _latency_text(latency, depth, casc, ch),
                    *[cells[fw][m].text(m) for fw in fws for m in metrics],
                ]
            )
            for fw, fw_name in fws.items():
                for m in metrics:
                    table.records.append(
                        _record(
                            setting,
                            runs.split,
                            cells[fw][m],
                            m,
                            model="student",
                            framework=fw_name,
                            method=method if fw != "orig" else "",
                            depth=depth,
                            params=params,
                            latency_ms=_latency_ms(latency, depth, casc, ch),
                        )
                    )
        table.sections.append(Section(setting.label(multi_seed), header, rows))
    return table


def _latency_ms(latency: Any | None, depth: int | None, cascades: int, channels: int) -> float:
    if latency is None or depth is None:
        return math.nan
    ms = latency.median_ms(depth, cascades, channels)
    return math.nan if ms is None else ms


def _latency_text(latency: Any | None, depth: int | None, cascades: int, channels: int) -> str:
    ms = _latency_ms(latency, depth, cascades, channels)
    return "not measured" if math.isnan(ms) else f"{ms:.2f}"


# ---- teacher–student gap -------------------------------------------------------------------------
def gap_table(
    runs: StageRuns, student_depth: int | None = None, teacher_depth: int | None = None
) -> ReportTable:
    """Teacher PSNR − student PSNR (dB) with no KD, Std-KD and SFT-KD, per method and setting.

    The reference is the plain teacher in all three columns (as in the paper's 0.56 → 0.53 →
    0.03 dB), so the columns are comparable; negative means the student beats the teacher.
    The headline per setting takes the best (smallest-gap) method of each framework and
    names it; the table lists every method and the mean over methods.
    """
    t_depth = teacher_depth or runs.teacher_depth()
    s_depth = student_depth or runs.student_depth()
    methods = runs.methods()
    multi_seed = any(s.seed for s in runs.settings())
    table = ReportTable("Teacher–student PSNR gap (dB)")
    table.notes = [
        f"gap = PSNR(teacher D{t_depth}) − PSNR(student D{s_depth}), means over volumes of the "
        f"{runs.split} split; reference: the plain teacher in every column; negative = the "
        "student beats the teacher.",
        "Headline: the best (smallest-gap) method of each framework, named in brackets.",
        LEGEND,
    ]
    header = ["Method", "no KD", "Std-KD", "SFT-KD"]

    def psnr(run: pd.Series | None) -> float:
        cell = run_cell(runs, run, "psnr")
        return cell.mean if cell.status == "ok" else math.nan

    def fmt(g: float) -> str:
        return MISSING if math.isnan(g) else f"{g:.2f}"

    for setting in runs.settings():
        t = psnr(runs.find(setting, "teacher", teacher_depth=t_depth))
        no_kd = t - psnr(runs.find(setting, "student", student_depth=s_depth))
        gaps: dict[str, dict[str, float]] = {}
        for method in methods:
            gaps[method] = {
                fw: t - psnr(runs.find(setting, row, method, t_depth, s_depth))
                for fw, row in (("std", "std_kd"), ("sft", "sft_kd"))
            }
        rows = [[method_name(m), fmt(no_kd), fmt(g["std"]), fmt(g["sft"])] for m, g in gaps.items()]
        means = {fw: _nanmean([g[fw] for g in gaps.values()]) for fw in ("std", "sft")}
        rows.append(["mean over methods", fmt(no_kd), fmt(means["std"]), fmt(means["sft"])])
        best = {fw: _best_gap(gaps, fw) for fw in ("std", "sft")}
        label = setting.label(multi_seed)
        headline = (
            f"{label}: gap (dB) no KD {fmt(no_kd)} → Std-KD {fmt(best['std'][1])} "
            f"({best['std'][0]}) → SFT-KD {fmt(best['sft'][1])} ({best['sft'][0]})"
        )
        table.summary.append(headline)
        table.sections.append(Section(label, header, rows, lead=f"**{headline}**"))
        for method, g in gaps.items():
            for fw, name in (("none", "no KD"), ("std", "Std-KD"), ("sft", "SFT-KD")):
                value = no_kd if fw == "none" else g[fw]
                table.records.append(
                    {
                        "dataset": setting.dataset,
                        "acceleration": setting.acceleration,
                        "seed": setting.seed,
                        "method": method,
                        "framework": name,
                        "gap_db": value,
                        "teacher_psnr": t,
                        "split": runs.split,
                    }
                )
    return table


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def _best_gap(gaps: dict[str, dict[str, float]], fw: str) -> tuple[str, float]:
    defined = [(g[fw], m) for m, g in gaps.items() if not math.isnan(g[fw])]
    if not defined:
        return MISSING, math.nan
    value, method = min(defined)
    return method_name(method), value
