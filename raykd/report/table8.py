"""The paper's Table 8: parameters, latency and quality per student depth.

Parameter counts are what each stage logged when it finished (``model_params``), else a
benchmark run's count of the same architecture; latency is the latest benchmark run's
(:mod:`raykd.report.benchmarks`). Nothing here builds a model.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from raykd.report import warn
from raykd.report.cells import mark_best, record, section_lead, seed_cell, table_notes
from raykd.report.records import Setting
from raykd.report.runs import StageRuns
from raykd.report.table_model import NOT_APPLICABLE, ReportTable, Section, method_name


def _arch_of(run: pd.Series | None, part: str) -> tuple[int, int]:
    """(cascades, channels) of a run's network (the paper's 5 and 32 when not recorded)."""
    if run is None:
        return 5, 32
    c, ch = run.get(f"{part}_cascades"), run.get(f"{part}_channels")
    c = 5 if c is None or pd.isna(c) else int(c)
    ch = 32 if ch is None or pd.isna(ch) else int(ch)
    return c, ch


def _arch_name(run: pd.Series | None, part: str) -> str:
    name = run.get(f"{part}_arch") if run is not None else None
    return name if isinstance(name, str) and name else "dccnn"


def model_label(arch: str, depth: int | None, cascades: int) -> str:
    """DnCm for DC-CNN (the paper's notation), VDSR-L, DC-UNet-L-Cm."""
    if arch == "vdsr":
        return f"VDSR-{depth}"
    if arch == "dcunet":
        return f"DC-UNet L{depth}C{cascades}"
    return f"D{depth}C{cascades}"


def _params(
    runs: StageRuns,
    found: list[pd.Series],
    latency: Any | None,
    arch: str,
    depth: int,
    cascades: int,
    channels: int,
) -> int | None:
    """The parameter count the runs logged at stage finish, else the benchmark's count of the
    same DC-CNN; None (with a warning) when neither recorded it."""
    for run in found:
        value = run.get("model_params")
        if value is not None and not pd.isna(value):
            return int(value)
    if latency is not None and arch == "dccnn":
        bench = latency.params(depth, cascades, channels)
        if bench is not None:
            return bench
    runs.warn_once(
        f"Table 8: parameter count of {model_label(arch, depth, cascades)} not recorded (its "
        "runs finished before stages logged model_params, and no benchmark run measured that "
        "network); shown as 'not recorded'"
    )
    return None


def _params_text(params: int | None, reference: int | None = None) -> str:
    if params is None:
        return "not recorded"
    ratio = f" ({100 * (1 - params / reference):.1f}%)" if reference else ""
    return f"{params}{ratio}"


METRICS = ("psnr", "ssim", "hfn", "vif")
# Column groups: the student trained alone, with Std-KD and with SFT-KD.
FRAMEWORKS = {"orig": "Original", "std": "KD", "sft": "SFT-KD"}


def table_8(
    runs: StageRuns,
    latency: Any | None = None,
    method: str | None = None,
    teacher_depth: int | None = None,
) -> ReportTable:
    """Parameters, latency and PSNR/SSIM/HFN/VIF per student depth: original (no KD), Std-KD
    and SFT-KD with one KD method (AT, the paper's choice, when it was run).

    ``latency`` is a :class:`raykd.report.benchmarks.Benchmark` (the latest benchmark run) or None:
    then the column says "not measured". Bold: best of original/KD/SFT-KD per depth and metric.
    """
    t_depth = teacher_depth or runs.teacher_depth()
    methods = runs.methods()
    method = method or ("at" if "at" in methods else (methods[0] if methods else ""))
    table = ReportTable("Table 8: compression (student depth), parameters, latency, quality")
    header = ["Model", "Parameters", "Latency (ms)"] + [
        f"{FRAMEWORKS[fw]} {m.upper()}" for fw in FRAMEWORKS for m in METRICS
    ]
    table.notes = _notes(runs, latency, method)
    for setting in runs.settings():
        seeds = runs.seeds(setting)
        row, records, t_params = _teacher_row(runs, setting, seeds, latency, t_depth)
        rows = [row]
        table.records += records
        for depth in runs.student_depths():
            row, records = _student_row(
                runs, setting, seeds, latency, method, (t_depth, depth), t_params
            )
            rows.append(row)
            table.records += records
        lead = section_lead(runs, setting)
        table.sections.append(Section(setting.label(), header, rows, lead=lead))
    return table


def _notes(runs: StageRuns, latency: Any | None, method: str) -> list[str]:
    notes = [
        f"Mean ± std over volumes unless pooled over seeds; KD method: "
        f"{method_name(method) if method else 'none run'}; source: {runs.source}.",
        "Parameters: as the runs logged them (else a benchmark of the same network); % = "
        "compression vs teacher. "
        "Bold: best of Original/KD/SFT-KD per depth and metric.",
    ]
    if latency is None:
        notes.append(
            "Latency not measured: no benchmark run (raykd.role=benchmark) in the store; run "
            "`raykd benchmark-inference --tracking-uri ... --experiment ...` first."
        )
        warn("Table 8: latency not measured (no benchmark run found in the MLflow store)")
    else:
        notes.append(
            latency.describe() + " A model whose depth, cascades or channels were not "
            "benchmarked shows 'not measured'."
        )
    return table_notes(runs, *notes)


def _teacher_row(
    runs: StageRuns, setting: Setting, seeds: list[str], latency: Any | None, t_depth: int
) -> tuple[list[str], list[dict], int | None]:
    """The teacher's row (its KD columns blank), its records and its parameter count."""
    teachers = runs.find_seeds(setting, "teacher", teacher_depth=t_depth)
    t_run = next(iter(teachers.values()), None)
    t_casc, t_ch = _arch_of(t_run, "teacher")
    t_arch = _arch_name(t_run, "teacher")
    t_params = (
        _params(runs, list(teachers.values()), latency, t_arch, t_depth, t_casc, t_ch)
        if t_depth
        else 0
    )
    t_cells = {m: seed_cell(runs, teachers, m, seeds) for m in METRICS}
    row = [
        f"Teacher ({model_label(t_arch, t_depth, t_casc)})",
        _params_text(t_params),
        _latency_text(latency, t_depth, t_casc, t_ch),
        *[t_cells[m].text(m) for m in METRICS],
        *[NOT_APPLICABLE] * (2 * len(METRICS)),
    ]
    ms = _latency_ms(latency, t_depth, t_casc, t_ch)
    records = [
        record(
            setting,
            runs.split,
            t_cells[m],
            m,
            model="teacher",
            framework="original",
            depth=t_depth,
            params=t_params,
            latency_ms=ms,
        )
        for m in METRICS
    ]
    return row, records, t_params


def _student_row(
    runs: StageRuns,
    setting: Setting,
    seeds: list[str],
    latency: Any | None,
    method: str,
    depths: tuple[int, int],
    t_params: int | None,
) -> tuple[list[str], list[dict]]:
    """One student depth's row (bold: best framework per metric) and its records;
    ``depths``: (teacher, student)."""
    t_depth, depth = depths
    found = {
        "orig": runs.find_seeds(setting, "student", student_depth=depth),
        "std": runs.find_seeds(setting, "std_kd", method, t_depth, depth) if method else {},
        "sft": runs.find_seeds(setting, "sft_kd", method, t_depth, depth) if method else {},
    }
    any_run = next((r for f in found.values() for r in f.values()), None)
    casc, ch = _arch_of(any_run, "student")
    s_arch = _arch_name(any_run, "student")
    runs_of_depth = [r for f in found.values() for r in f.values()]
    params = _params(runs, runs_of_depth, latency, s_arch, depth, casc, ch)
    cells = {fw: {m: seed_cell(runs, f, m, seeds) for m in METRICS} for fw, f in found.items()}
    for m in METRICS:
        mark_best([cells[fw][m] for fw in FRAMEWORKS], m)
    row = [
        f"Student ({model_label(s_arch, depth, casc)})",
        _params_text(params, t_params),
        _latency_text(latency, depth, casc, ch),
        *[cells[fw][m].text(m) for fw in FRAMEWORKS for m in METRICS],
    ]
    ms = _latency_ms(latency, depth, casc, ch)
    records = [
        record(
            setting,
            runs.split,
            cells[fw][m],
            m,
            model="student",
            framework=fw_name,
            method=method if fw != "orig" else "",
            depth=depth,
            params=params,
            latency_ms=ms,
        )
        for fw, fw_name in FRAMEWORKS.items()
        for m in METRICS
    ]
    return row, records


def _latency_ms(latency: Any | None, depth: int | None, cascades: int, channels: int) -> float:
    if latency is None or depth is None:
        return math.nan
    ms = latency.median_ms(depth, cascades, channels)
    return math.nan if ms is None else ms


def _latency_text(latency: Any | None, depth: int | None, cascades: int, channels: int) -> str:
    ms = _latency_ms(latency, depth, cascades, channels)
    return "not measured" if math.isnan(ms) else f"{ms:.2f}"
