"""The paper's tables from collected runs: Table 1 (PSNR/SSIM), Table 3 (HFN/VIF), Table 8
(depths, parameters, latency) and the teacher–student gap.

Cells are mean ± sample std over volumes of the report's split. When a setting was run with
several seeds, a cell pools them: mean over seeds of the per-seed volume means ± the sample std
of those per-seed means (the training-seed spread, which a single seed hides), followed by the
sample std over all seed × volume values in brackets. A cell whose run is missing shows "—"
(and a :class:`~raykd.report.ReportWarning` names it); a cell missing some seeds pools the
others and is marked ‡; a cell that does not apply (the zero-filled image has no SFT-KD
variant) is blank. Numbers are never zeroed or dropped. Every table is written as Markdown (for
reading) and as a tidy CSV (unrounded, for analysis).

The teacher–student gap is a paired per-(seed, volume) PSNR difference with a 95% hierarchical
bootstrap confidence interval (see :func:`paired_gap`).
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
from raykd.report.inference import (
    BOOTSTRAP_SEED,
    MIN_UNITS,
    RESAMPLES,
    hierarchical_bootstrap,
    unit_pairs,
)

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
PARTIAL = "‡"
LEGEND = (
    f"{MISSING} = run missing (see the warnings); {PARTIAL} = some seeds missing, the others "
    "pooled; blank = not applicable."
)
SEED_NOTE = (
    "Several seeds: mean over seeds of the per-seed volume means ± sample std over seeds "
    "(± sample std over all seed × volume values, 'vol.')."
)
EQUAL_COMPUTE = "Student, equal compute"


def method_name(method: str) -> str:
    return METHOD_NAMES.get(method, method.upper())


@dataclass
class Cell:
    """One table value: mean ± std over ``n`` volumes of run ``run_id``.

    Pooled over seeds (``pooled``): ``mean`` is the mean of the per-seed volume means, ``std``
    their sample std over seeds (``std_seeds``) and ``std_volumes`` the sample std over all
    seed × volume values; ``partial`` when some of the setting's seeds have no run.
    """

    mean: float = math.nan
    std: float = math.nan
    n: int = 0
    run_id: str = ""
    status: str = "ok"  # ok | missing | n/a
    best: bool = False
    pooled: bool = False
    seeds: tuple[str, ...] = ()
    std_seeds: float = math.nan
    std_volumes: float = math.nan
    partial: bool = False

    @property
    def std_over(self) -> str:
        return "seeds" if self.pooled else "volumes"

    def text(self, metric: str) -> str:
        if self.status == "missing":
            return MISSING
        if self.status == "n/a":
            return NOT_APPLICABLE
        if math.isnan(self.mean):  # e.g. VIF below 41 px: the metric is undefined, not lost
            return "undefined"
        d = DECIMALS.get(metric, 4)
        if not self.pooled:
            body = f"{self.mean:.{d}f} ± {self.std:.{d}f}"
            return f"**{body}**" if self.best else body
        spread = "n/a" if math.isnan(self.std_seeds) else f"{self.std_seeds:.{d}f}"
        body = f"{self.mean:.{d}f} ± {spread}"
        body = f"**{body}**" if self.best else body
        mark = PARTIAL if self.partial else ""
        return f"{body} (vol. ± {self.std_volumes:.{d}f}){mark}"


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


def seed_cell(runs: StageRuns, found: dict[str, pd.Series], metric: str, seeds: list[str]) -> Cell:
    """One cell from ``{seed: run}`` (:meth:`StageRuns.find_seeds`) of a setting with ``seeds``.

    One seed: exactly :func:`run_cell` (mean ± std over volumes). Several: pooled as described
    in the module docstring; a seed whose eval JSON lacks the metric is left out like a missing
    run (its warning names it), never counted as zero.
    """
    if len(seeds) <= 1:
        cell = run_cell(runs, next(iter(found.values()), None), metric)
        cell.seeds = tuple(found) if cell.status == "ok" else ()
        return cell
    per_seed: dict[str, np.ndarray] = {}
    for seed, run in found.items():
        cell = run_cell(runs, run, metric)
        if cell.status == "ok":
            report = runs.eval(run["run_id"])
            per_seed[seed] = np.array(
                [float(v["metrics"][metric]) for v in report["volumes"]], dtype=np.float64
            )
    run_ids = ";".join(str(found[s]["run_id"]) for s in per_seed)
    if not per_seed:
        return Cell(status="missing", pooled=True, run_id=run_ids)
    means = np.array([v.mean() for v in per_seed.values()])
    pooled = np.concatenate(list(per_seed.values()))
    with np.errstate(invalid="ignore"):
        std_seeds = float(np.std(means, ddof=1)) if means.size > 1 else math.nan
        std_volumes = float(np.std(pooled, ddof=1)) if pooled.size > 1 else 0.0
    return Cell(
        mean=float(means.mean()),
        std=std_seeds,
        n=max(v.size for v in per_seed.values()),
        run_id=run_ids,
        pooled=True,
        seeds=tuple(per_seed),
        std_seeds=std_seeds,
        std_volumes=std_volumes,
        partial=len(per_seed) < len(seeds),
    )


def section_lead(runs: StageRuns, setting: Setting) -> str:
    """A multi-seed section's first line: which seeds its numbers pool."""
    seeds = runs.seeds(setting)
    if len(seeds) <= 1:
        return ""
    return f"Seeds pooled ({len(seeds)}): {', '.join(seeds)}."


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
        "std_over": cell.std_over,
        "std_seeds": cell.std_seeds,
        "std_volumes": cell.std if not cell.pooled else cell.std_volumes,
        "n_volumes": cell.n,
        "n_seeds": len(cell.seeds),
        "seeds": ";".join(cell.seeds),
        "partial": cell.partial,
        "best": cell.best,
        "status": cell.status,
        "run_id": cell.run_id,
        "split": split,
    }


# ---- Table 1 / Table 3 ---------------------------------------------------------------------------
def table_notes(runs: StageRuns, *extra: str) -> list[str]:
    """Header lines every table shares: which split/volumes, how seeds are pooled, legend."""
    notes = [runs.split_description()]
    if any(runs.multi_seed(s) for s in runs.settings()):
        notes.append(SEED_NOTE)
    return [*notes, *extra, LEGEND]


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
    methods = runs.methods()
    with_random = (runs.frame["row"] == "sft_kd_random").any()
    with_equal = (runs.frame["row"] == "equal_compute").any()
    table = ReportTable(title)
    arch = f"teacher D{t_depth}, student D{s_depth}"
    table.notes = table_notes(
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
    header = ["Model"] + [f"{FRAMEWORKS[fw]} {m.upper()}" for fw in FRAMEWORKS for m in metrics]
    for setting in runs.settings():
        zf = runs.zero_filled(setting)
        seeds = runs.seeds(setting)

        def cells_of(
            row: str, method: str = "", _s: Setting = setting, _seeds: list[str] = seeds
        ) -> dict[str, Cell]:
            found = runs.find_seeds(_s, row, method, t_depth, s_depth)
            return {m: seed_cell(runs, found, m, _seeds) for m in metrics}

        na = {m: Cell(status="n/a") for m in metrics}
        entries: list[tuple[str, str, str, dict[str, dict[str, Cell]], bool]] = []
        zf_cells = {m: report_cell(runs, zf, m, "") for m in metrics}
        # Super-resolution: the network input is the interpolated low-resolution image.
        zf_name = "LR input" if setting.acceleration.startswith("sr") else "ZF"
        entries.append((zf_name, "zero_filled", "", {"std": zf_cells, "sft": dict(na)}, False))
        teacher = {"std": cells_of("teacher"), "sft": cells_of("sft_teacher")}
        entries.append(("Teacher", "teacher", "", teacher, False))
        entries.append(("Student", "student", "", {"std": cells_of("student"), "sft": na}, True))
        if with_equal:
            cells = {"std": dict(na), "sft": cells_of("equal_compute")}
            entries.append((EQUAL_COMPUTE, "equal_compute", "", cells, True))
        for method in methods:
            cells = {"std": cells_of("std_kd", method), "sft": cells_of("sft_kd", method)}
            entries.append((method_name(method), "kd", method, cells, True))
        if with_random:
            for method in methods:
                cells = {"std": dict(na), "sft": cells_of("sft_kd_random", method)}
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
        lead = section_lead(runs, setting)
        table.sections.append(Section(setting.label(), header, rows, lead=lead))
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


def _params(depth: int, cascades: int, channels: int, arch: str = "dccnn") -> int:
    from raykd.models.base import count_parameters
    from raykd.models.registry import build_model

    return count_parameters(build_model(arch, depth, cascades, channels))


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
    table = ReportTable("Table 8: compression (student depth), parameters, latency, quality")
    fws = {"orig": "Original", "std": "KD", "sft": "SFT-KD"}
    header = ["Model", "Parameters", "Latency (ms)"] + [
        f"{fws[fw]} {m.upper()}" for fw in fws for m in metrics
    ]
    table.notes = [
        f"Mean ± std over volumes unless pooled over seeds; KD method: "
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
    table.notes = table_notes(runs, *table.notes)
    for setting in runs.settings():
        seeds = runs.seeds(setting)
        teachers = runs.find_seeds(setting, "teacher", teacher_depth=t_depth)
        t_run = next(iter(teachers.values()), None)
        t_casc, t_ch = _arch_of(t_run, "teacher")
        t_arch = _arch_name(t_run, "teacher")
        t_params = _params(t_depth, t_casc, t_ch, t_arch) if t_depth else 0
        rows = []
        t_cells = {m: seed_cell(runs, teachers, m, seeds) for m in metrics}
        blank = [NOT_APPLICABLE] * (2 * len(metrics))
        rows.append(
            [
                f"Teacher ({model_label(t_arch, t_depth, t_casc)})",
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
            found = {
                "orig": runs.find_seeds(setting, "student", student_depth=depth),
                "std": runs.find_seeds(setting, "std_kd", method, t_depth, depth) if method else {},
                "sft": runs.find_seeds(setting, "sft_kd", method, t_depth, depth) if method else {},
            }
            any_run = next((r for f in found.values() for r in f.values()), None)
            casc, ch = _arch_of(any_run, "student")
            s_arch = _arch_name(any_run, "student")
            params = _params(depth, casc, ch, s_arch)
            ratio = f" ({100 * (1 - params / t_params):.1f}%)" if t_params else ""
            cells = {
                fw: {m: seed_cell(runs, f, m, seeds) for m in metrics} for fw, f in found.items()
            }
            for m in metrics:
                mark_best([cells[fw][m] for fw in fws], m)
            rows.append(
                [
                    f"Student ({model_label(s_arch, depth, casc)})",
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
        lead = section_lead(runs, setting)
        table.sections.append(Section(setting.label(), header, rows, lead=lead))
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
@dataclass
class Gap:
    """Teacher − student PSNR (dB) with its 95% CI (NaN bounds: too few units for a CI)."""

    gap: float = math.nan
    low: float = math.nan
    high: float = math.nan
    n_units: int = 0
    seeds: tuple[str, ...] = ()

    def text(self) -> str:
        if math.isnan(self.gap):
            return MISSING
        if math.isnan(self.low):
            return f"{self.gap:.2f} [n={self.n_units}, no CI]"
        return f"{self.gap:.2f} [{self.low:.2f}, {self.high:.2f}]"


def paired_gap(
    runs: StageRuns, teacher: dict[str, pd.Series], student: dict[str, pd.Series], what: str
) -> Gap:
    """Teacher − student volume PSNR from ``{seed: run}`` of each, paired per (seed, volume).

    The gap is the mean over seeds of the per-seed mean over volumes; its 95% CI the
    hierarchical bootstrap of :mod:`raykd.report.inference` (seeds, then volumes), given only
    from ``MIN_UNITS`` units on: slices are not resampled, they are not independent.
    """
    from raykd.errors import RaykdError

    try:
        pairs = unit_pairs(runs, student, teacher, "psnr")
    except RaykdError as exc:
        runs.warn_once(f"gap {what}: volumes cannot be paired ({exc}); gap missing")
        return Gap()
    groups = pairs.by_seed()
    if not groups:
        return Gap()
    n = sum(g.size for g in groups)
    if n < MIN_UNITS:
        return Gap(float(np.mean([g.mean() for g in groups])), n_units=n, seeds=tuple(pairs.seeds))
    gap, low, high = hierarchical_bootstrap(groups)
    return Gap(gap, low, high, n, tuple(pairs.seeds))


def gap_table(
    runs: StageRuns, student_depth: int | None = None, teacher_depth: int | None = None
) -> ReportTable:
    """Teacher PSNR − student PSNR (dB) with no KD, Std-KD and SFT-KD (and, when run, the
    equal-compute student and SFT-KD with random init), per method and setting, each with a
    95% bootstrap CI (:func:`paired_gap`).

    The reference is the plain teacher in every column (as in the paper's 0.56 → 0.53 →
    0.03 dB), so the columns are comparable; negative means the student beats the teacher.
    The headline per setting takes the best (smallest-gap) method of each framework and
    names it; the table lists every method and the mean over methods.
    """
    t_depth = teacher_depth or runs.teacher_depth()
    s_depth = student_depth or runs.student_depth()
    methods = runs.methods()
    with_equal = (runs.frame["row"] == "equal_compute").any()
    with_random = (runs.frame["row"] == "sft_kd_random").any()
    table = ReportTable("Teacher–student PSNR gap (dB)")
    table.notes = table_notes(
        runs,
        f"gap = volume PSNR(teacher D{t_depth}) − PSNR(student D{s_depth}) paired per (seed, "
        "volume), mean over volumes per seed, then over seeds; reference: the plain teacher in "
        "every column; negative = the student beats the teacher.",
        f"[low, high] = 95% hierarchical bootstrap CI ({RESAMPLES} resamples of seeds, then of "
        f"volumes within each seed, RNG seed {BOOTSTRAP_SEED}); 'n=…, no CI' = fewer than "
        f"{MIN_UNITS} (seed, volume) units, too few for a CI.",
        "Headline: the best (smallest-gap) method of each framework, named in brackets.",
    )
    cols = [("none", "no KD")]
    cols += [("equal", "equal compute")] if with_equal else []
    cols += [("std", "Std-KD"), ("sft", "SFT-KD")]
    cols += [("random", "SFT-KD random init")] if with_random else []
    header = ["Method"] + [name for _, name in cols]
    rows_of = {"std": "std_kd", "sft": "sft_kd", "random": "sft_kd_random"}

    def fmt(g: float) -> str:
        return MISSING if math.isnan(g) else f"{g:.2f}"

    for setting in runs.settings():
        seeds = runs.seeds(setting)
        teacher = runs.find_seeds(setting, "teacher", teacher_depth=t_depth)
        t_psnr = seed_cell(runs, teacher, "psnr", seeds)
        label = setting.label()

        def gap_of(row: str, method: str = "", _s: Setting = setting, _t=teacher) -> Gap:
            student = runs.find_seeds(_s, row, method, t_depth, s_depth)
            what = f"{_s.label()} teacher vs {row}{' ' + method if method else ''}"
            return paired_gap(runs, _t, student, what)

        shared = {"none": gap_of("student")}
        if with_equal:
            shared["equal"] = gap_of("equal_compute")
        gaps: dict[str, dict[str, Gap]] = {}
        for method in methods:
            gaps[method] = {**shared}
            for fw in ("std", "sft", "random"):
                if fw != "random" or with_random:
                    gaps[method][fw] = gap_of(rows_of[fw], method)
        rows = [[method_name(m)] + [g[k].text() for k, _ in cols] for m, g in gaps.items()]
        means = {
            k: _nanmean([g[k].gap for g in gaps.values()]) if k in rows_of else shared[k].gap
            for k, _ in cols
        }
        rows.append(["mean over methods"] + [fmt(means[k]) for k, _ in cols])
        points = {m: {k: g.gap for k, g in gm.items()} for m, gm in gaps.items()}
        best = {fw: _best_gap(points, fw) for fw in ("std", "sft")}
        no_kd = shared["none"]
        headline = (
            f"{label}: gap (dB) no KD {fmt(no_kd.gap)} → Std-KD {fmt(best['std'][1])} "
            f"({best['std'][0]}) → SFT-KD {fmt(best['sft'][1])} ({best['sft'][0]})"
        )
        table.summary.append(headline)
        lead = " ".join(x for x in (section_lead(runs, setting), f"**{headline}**") if x)
        table.sections.append(Section(label, header, rows, lead=lead))
        for method, g in gaps.items():
            for fw, name in cols:
                item = g[fw]
                table.records.append(
                    {
                        "dataset": setting.dataset,
                        "acceleration": setting.acceleration,
                        "seed": setting.seed,
                        "method": method,
                        "framework": name,
                        "gap_db": item.gap,
                        "ci_low": item.low,
                        "ci_high": item.high,
                        "ci": "hierarchical_bootstrap95" if not math.isnan(item.low) else "",
                        "n_units": item.n_units,
                        "n_seeds": len(item.seeds),
                        "seeds": ";".join(item.seeds),
                        "teacher_psnr": t_psnr.mean if t_psnr.status == "ok" else math.nan,
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
