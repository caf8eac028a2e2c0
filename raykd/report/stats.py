"""Paired comparisons of rows per KD method: unit-level tests (the evidence) and a per-slice
Wilcoxon test (descriptive only), as the paired-tests table.

Three contrasts per KD method (:data:`CONTRASTS`): SFT-KD vs Std-KD, SFT-KD vs the
equal-compute control (a plain student trained for SFT + KD epochs: is SFT-KD's gain more than
its extra training?) and SFT initialisation vs random initialisation of the SFT-KD student.

The evidence is :mod:`raykd.report.inference`: pairs of (seed, volume) units (test subjects
with folds, :mod:`raykd.report.subjects`), a Wilcoxon test on their differences plus a CI, and
no verdict below :data:`~raykd.report.inference.MIN_UNITS` units; verdicts use Holm-adjusted p
over the family of one setting and metric (:func:`judge_family`). The per-slice test pairs
(seed, volume, slice) and pools seeds; its p-value treats correlated slices as independent, so
it is reported as a description of how consistent the per-slice differences are, never as a
verdict.

Runs of one seed evaluated on different volumes or slices are an error, not a silently smaller
test; a seed that only one side has is left out with a warning. Values that are undefined
(NaN, or an infinite PSNR) are left out and counted. A contrast whose runs are missing is
listed as missing, with a warning, never dropped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from raykd.errors import RaykdError
from raykd.report.cells import section_lead, table_notes
from raykd.report.folds import has_folds
from raykd.report.inference import (
    ALPHA,
    MIN_UNITS,
    UnitPairs,
    UnitTest,
    judge,
    unit_pairs,
    unit_test,
)
from raykd.report.multiplicity import METHOD, adjust_records
from raykd.report.records import Setting
from raykd.report.runs import StageRuns
from raykd.report.slices import slice_pairs
from raykd.report.subjects import MIN_SUBJECTS, TRAINING_LEVEL
from raykd.report.table_model import HIGHER_IS_BETTER, MISSING, ReportTable, Section, method_name


@dataclass(frozen=True)
class Contrast:
    """One claim to test: ``candidate`` row better than ``baseline`` row (per KD method)."""

    key: str
    label: str
    candidate: str  # schema row
    baseline: str  # schema row
    candidate_name: str
    baseline_name: str
    # How the summary states the claim: "<subject> beats <object> for <method>".
    subject: str
    object: str


CONTRASTS = (
    Contrast(
        "sft_vs_std", "SFT-KD vs Std-KD", "sft_kd", "std_kd", "SFT-KD", "Std-KD",
        "SFT-KD", "Std-KD",
    ),
    Contrast(
        "sft_vs_equal_compute", "SFT-KD vs equal compute", "sft_kd", "equal_compute",
        "SFT-KD", "equal compute", "SFT-KD", "the equal-compute control",
    ),
    Contrast(
        "sft_init_vs_random_init", "SFT init vs random init", "sft_kd", "sft_kd_random",
        "SFT init", "random init", "SFT-KD with SFT initialisation", "random initialisation",
    ),
)  # fmt: skip


@dataclass
class WilcoxonResult:
    n: int
    n_dropped: int
    statistic: float
    p_value: float
    median_diff: float
    mean_diff: float
    significant: bool
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def wilcoxon_test(
    std_kd: np.ndarray,
    sft_kd: np.ndarray,
    higher_is_better: bool = True,
    alpha: float = ALPHA,
    names: tuple[str, str] = ("Std-KD", "SFT-KD"),
) -> WilcoxonResult:
    """Two-sided Wilcoxon signed-rank test of paired values (differences second − first).

    The first array is the baseline, the second the candidate; ``names`` (baseline, candidate)
    word the verdict. All-zero differences give p = 1 (no evidence of a difference; scipy
    would warn and divide by zero in its normal approximation).
    """
    a, b = np.asarray(std_kd, dtype=np.float64), np.asarray(sft_kd, dtype=np.float64)
    if a.shape != b.shape:
        raise RaykdError(f"paired values must have the same length, got {a.size} and {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    dropped = int((~keep).sum())
    a, b = a[keep], b[keep]
    diff = b - a
    n = int(diff.size)
    if n == 0:
        return WilcoxonResult(
            0,
            dropped,
            math.nan,
            math.nan,
            math.nan,
            math.nan,
            False,
            "not testable (no defined pairs)",
        )
    median, mean = float(np.median(diff)), float(np.mean(diff))
    if not np.any(diff != 0):
        statistic, p = 0.0, 1.0
    else:
        res = stats.wilcoxon(b, a)
        statistic, p = float(res.statistic), float(res.pvalue)
    significant = bool(p < alpha)
    if not significant:
        verdict = f"no significant difference (p ≥ {alpha:g})"
    else:
        direction = median if median != 0 else mean
        sft_better = direction > 0 if higher_is_better else direction < 0
        verdict = f"{names[1] if sft_better else names[0]} better (p < {alpha:g})"
    return WilcoxonResult(n, dropped, statistic, p, median, mean, significant, verdict)


def contrast_test(
    runs: StageRuns,
    setting: Setting,
    contrast: Contrast,
    method: str,
    metric: str,
    t_depth: int | None,
    s_depth: int | None,
    alpha: float = ALPHA,
) -> dict[str, Any]:
    """One contrast × method × metric: the tidy record (``verdict`` 'missing run' if untestable).

    Unit-level fields (``n_units``, ``mean_diff``, ``ci_low``/``ci_high``, ``p_value``,
    ``verdict``) carry the evidence; ``slice_*`` fields the descriptive per-slice test.
    """
    find = runs.find_seeds
    cand = find(setting, contrast.candidate, method, t_depth, s_depth)
    base_method = "" if contrast.baseline == "equal_compute" else method
    base = find(setting, contrast.baseline, base_method, t_depth, s_depth)
    record: dict[str, Any] = {
        "dataset": setting.dataset,
        "acceleration": setting.acceleration,
        "seed": setting.seed,
        **({"budget": setting.budget} if setting.budget else {}),
        "comparison": contrast.key,
        "label": contrast.label,
        "method": method,
        "metric": metric,
        "baseline_runs": ";".join(str(r["run_id"]) for r in base.values()),
        "candidate_runs": ";".join(str(r["run_id"]) for r in cand.values()),
        "split": runs.split,
    }
    units = unit_pairs(runs, base, cand, metric) if base and cand else None
    if units is None or units.n == 0:
        _warn_missing(runs, setting, contrast, method, base, cand)
        return {**record, "seeds": "", "n_seeds": 0, "verdict": "missing run"}
    if units.unpaired:
        runs.warn_once(
            f"{setting.label()} {contrast.label} for {method_name(method)}: seed(s) "
            f"{', '.join(units.unpaired)} lack one of the runs; tested on seeds "
            f"{', '.join(units.seeds)}"
        )
    names = (contrast.baseline_name, contrast.candidate_name)
    higher = HIGHER_IS_BETTER.get(metric, True)
    res = unit_test(units, higher, alpha, names)
    slices = slice_pairs(runs, base, cand, metric)
    desc = wilcoxon_test(slices.baseline, slices.candidate, higher, alpha, names)
    return {
        **record,
        "seeds": ";".join(units.seeds),
        **res.to_dict(),
        "units": res.units,
        "min_units": MIN_UNITS,
        "slice_n": desc.n,
        "slice_dropped": desc.n_dropped,
        "slice_median_diff": desc.median_diff,
        "slice_p_value": desc.p_value,
    }


def contrast_pairs(
    runs: StageRuns,
    setting: Setting,
    contrast: Contrast,
    method: str,
    metric: str,
    t_depth: int | None,
    s_depth: int | None,
) -> UnitPairs | None:
    """The units of :func:`contrast_test` (None where a side has no run); no warnings."""
    cand = runs.find_seeds(setting, contrast.candidate, method, t_depth, s_depth)
    base_method = "" if contrast.baseline == "equal_compute" else method
    base = runs.find_seeds(setting, contrast.baseline, base_method, t_depth, s_depth)
    try:
        return unit_pairs(runs, base, cand, metric) if base and cand else None
    except RaykdError:
        return None


def _warn_missing(runs: StageRuns, setting: Setting, contrast: Contrast, method: str, base, cand):
    lacking = [n for n, f in ((contrast.baseline, base), (contrast.candidate, cand)) if not f]
    why = f"no {' / '.join(lacking)} run" if lacking else "no seed has both runs evaluated"
    runs.warn_once(
        f"comparison missing: {setting.label()} {contrast.label} for "
        f"{method_name(method)} cannot be tested ({why}); reported as missing"
    )


FAMILY = (
    "Family of tests: the contrast × KD method tests of one setting and one metric (each row "
    f"block of a section); p adj = {METHOD}'s step-down adjustment across that family, and "
    "verdicts use it."
)


def judge_family(records: list[dict[str, Any]], alpha: float = ALPHA) -> None:
    """Holm-adjust the unit-level p of every testable-or-not record per family (setting ×
    metric) and draw each verdict again from its adjusted p (records updated in place)."""

    def family(rec: dict[str, Any]):
        if "n_units" not in rec:
            return None
        return (rec["dataset"], rec["acceleration"], rec.get("budget", ""), rec["metric"])

    adjust_records(records, family)
    adjust_records(records, family, "train_p", "train_p_adjusted")
    fields = UnitTest.__dataclass_fields__
    for rec in records:
        if "n_units" not in rec or math.isnan(rec.get("p_adjusted", math.nan)):
            continue
        contrast = next(c for c in CONTRASTS if c.key == rec["comparison"])
        names = (contrast.baseline_name, contrast.candidate_name)
        t = UnitTest(**{k: rec[k] for k in fields if k in rec})
        higher = HIGHER_IS_BETTER.get(rec["metric"], True)
        size = int(rec.get("family_size", 1))
        rec.update(judge(t, rec["p_adjusted"], alpha, names, higher, size).to_dict())


def _unit_note(folds: bool, alpha: float) -> str:
    if folds:
        return (
            "Unit of inference = one test subject (cross-validation: seeds of a fold share its "
            "test and training subjects, so they are not independent units); value = the mean "
            "over the (fold, seed) models that tested the subject of their mean over its "
            "volumes. Δ = candidate − baseline; [95% CI] Student's t over subjects; p = "
            f"two-sided Wilcoxon signed-rank test on the per-subject differences. Verdict: "
            f"Holm-adjusted p < {alpha:g} and a CI that excludes 0; none below {MIN_SUBJECTS} "
            "subjects (the smallest two-sided Wilcoxon p on n units is 2/2^n). Column "
            f"'{TRAINING_LEVEL}': the (fold, seed) models with the subjects held fixed (no claim "
            "beyond these subjects): mean [95% t CI from the between-seed spread], p, p adj."
        )
    return (
        "Unit = one trained model pair (seed) on one volume, value = the volume's metric (volume "
        "PSNR as in Table 1). Δ = candidate − baseline (dB for PSNR; for HFN lower is better); "
        "mean Δ over seeds of the per-seed mean over volumes, [95% CI] a hierarchical bootstrap "
        "(seeds, then volumes within each seed); p = two-sided Wilcoxon signed-rank test on the "
        f"unit differences. Verdict: Holm-adjusted p < {alpha:g} and a CI that excludes 0; none "
        f"below {MIN_UNITS} units (an exact two-sided signed-rank test cannot reach p < 0.05 "
        "there)."
    )


def paired_table(
    runs: StageRuns,
    metrics: tuple[str, ...] = ("psnr", "ssim", "hfn", "vif"),
    student_depth: int | None = None,
    teacher_depth: int | None = None,
    alpha: float = ALPHA,
) -> ReportTable:
    """Every contrast of :data:`CONTRASTS` per setting, method and metric, Holm-adjusted per
    family (:func:`judge_family`)."""
    t_depth = teacher_depth or runs.teacher_depth()
    s_depth = student_depth or runs.student_depth()
    folds = has_folds(list(runs.frame["seed"]))
    unit = "test-subject" if folds else "(seed, volume)"
    table = ReportTable(f"Paired tests over {unit} units (α = {alpha:g}, {METHOD}-adjusted)")
    table.notes = table_notes(
        runs,
        _unit_note(folds, alpha),
        FAMILY,
        "Per-slice columns are descriptive only: (seed, volume, slice) pairs pooled over seeds; "
        "slices of one volume are not independent, so that p-value overstates the evidence.",
        "Contrasts: SFT-KD vs Std-KD; SFT-KD vs the equal-compute control (a plain student "
        "trained for SFT + KD epochs); SFT init vs random init (SFT-KD student initialisation).",
    )
    header = ["Comparison", "Method", "Metric", "units", "n", "mean Δ [95% CI]", "p", "p adj"]
    header += ["verdict"] + ([TRAINING_LEVEL] if folds else [])
    header += ["slices", "slice median Δ", "slice p (descriptive)"]
    # A contrast whose row the job never trained at all (e.g. no sft_kd_random row requested)
    # is left out, as Table 1 leaves out its rows; a row missing for some methods only is
    # reported as missing.
    present = set(runs.frame["row"])
    contrasts = [c for c in CONTRASTS if {c.candidate, c.baseline} <= present]
    for setting in runs.settings():
        recs = [
            (contrast, method, metric, test)
            for contrast in contrasts
            for method in runs.methods()
            for metric in metrics
            for test in [contrast_test(runs, setting, contrast, method, metric, t_depth, s_depth)]
        ]
        judge_family([r[-1] for r in recs], alpha)
        rows = []
        for contrast, method, metric, rec in recs:
            table.records.append(rec)
            row = [contrast.label, method_name(method), metric.upper()]
            if "n_units" not in rec:
                width = len(header) - len(row)
                rows.append(row + [MISSING] * 5 + ["missing run"] + [MISSING] * (width - 6))
                continue
            rows.append(row + _cells(rec, 3 if metric == "psnr" else 5, folds))
        lead = section_lead(runs, setting)
        table.sections.append(Section(setting.label(), header, rows, lead=lead))
    return table


def _num(x: float, fmt: str) -> str:
    return "—" if x is None or math.isnan(x) else format(x, fmt)


def _cells(rec: dict[str, Any], d: int, folds: bool = False) -> list[str]:
    mean = _num(rec["mean_diff"], f"+.{d}f")
    if not math.isnan(rec["ci_low"]):
        mean += f" [{rec['ci_low']:+.{d}f}, {rec['ci_high']:+.{d}f}]"
    cells = [rec["units"], str(rec["n_units"]), mean, _num(rec["p_value"], ".3g")]
    cells += [_num(rec.get("p_adjusted", math.nan), ".3g"), rec["verdict"]]
    if folds:
        cells.append(training_cell(rec, d))
    return cells + [
        str(rec["slice_n"]),
        _num(rec["slice_median_diff"], f"+.{d}f"),
        _num(rec["slice_p_value"], ".3g"),
    ]


def training_cell(rec: dict[str, Any], d: int = 3) -> str:
    """``+0.21 [+0.10, +0.32], p = 0.01, p adj = 0.04 (df 3)`` of the training-randomness
    analysis on fixed subjects (— without the spread of ≥ 2 seeds on a subject)."""
    mean, low = rec.get("train_mean", math.nan), rec.get("train_low", math.nan)
    if mean is None or math.isnan(mean):
        return MISSING
    if math.isnan(low):
        return f"{mean:+.{d}f} (no spread: one seed per subject)"
    return (
        f"{mean:+.{d}f} [{low:+.{d}f}, {rec['train_high']:+.{d}f}], p = {rec['train_p']:.3g}, "
        f"p adj = {_num(rec.get('train_p_adjusted', math.nan), '.3g')} (df {rec['train_df']})"
    )


def format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3g}"
