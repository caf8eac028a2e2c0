"""Wilcoxon signed-rank tests of SFT-KD vs Std-KD on paired per-slice metrics (α = 0.05).

Pairs are matched by (volume, slice index) from the two runs' eval JSONs; runs evaluated on
different volumes or slices are an error, not a silently smaller test. Slices where either
value is undefined (NaN, or an infinite PSNR) are left out and counted. The effect size is the
median paired difference SFT-KD − Std-KD (dB for PSNR).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from raykd.errors import RaykdError
from raykd.report.collect import StageRuns
from raykd.report.tables import HIGHER_IS_BETTER, MISSING, ReportTable, Section, method_name

ALPHA = 0.05


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


def slice_values(report: dict[str, Any], metric: str) -> dict[tuple[str, int], float]:
    """``{(volume, slice index): value}`` of one metric from an eval JSON."""
    out: dict[tuple[str, int], float] = {}
    for vol in report["volumes"]:
        values = vol.get("per_slice", {}).get(metric)
        slices = vol.get("slices")
        if values is None or slices is None:
            raise RaykdError(
                f"eval JSON volume {vol.get('volume')}: no per-slice '{metric}' values or "
                "slice list; re-evaluate the run (per-slice metrics are needed for the test)"
            )
        if len(values) != len(slices):
            raise RaykdError(
                f"eval JSON volume {vol['volume']}: {len(values)} per-slice '{metric}' values "
                f"for {len(slices)} slices"
            )
        for s, v in zip(slices, values, strict=True):
            out[(str(vol["volume"]), int(s))] = float(v)
    return out


def paired_slices(
    a: dict[str, Any], b: dict[str, Any], metric: str
) -> tuple[list[tuple[str, int]], np.ndarray, np.ndarray]:
    """Aligned per-slice values of two eval JSONs; an error if their slices differ."""
    va, vb = slice_values(a, metric), slice_values(b, metric)
    if set(va) != set(vb):
        only_a = sorted(set(va) - set(vb))[:5]
        only_b = sorted(set(vb) - set(va))[:5]
        raise RaykdError(
            f"per-slice '{metric}' pairs do not align: slices only in the first run "
            f"{only_a}, only in the second {only_b}; both runs must be evaluated on the same "
            "volumes and slices"
        )
    keys = sorted(va)
    return keys, np.array([va[k] for k in keys]), np.array([vb[k] for k in keys])


def wilcoxon_test(
    std_kd: np.ndarray, sft_kd: np.ndarray, higher_is_better: bool = True, alpha: float = ALPHA
) -> WilcoxonResult:
    """Two-sided Wilcoxon signed-rank test of paired values (differences SFT-KD − Std-KD).

    All-zero differences give p = 1 (no evidence of a difference; scipy would warn and divide
    by zero in its normal approximation).
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
        verdict = f"{'SFT-KD' if sft_better else 'Std-KD'} better (p < {alpha:g})"
    return WilcoxonResult(n, dropped, statistic, p, median, mean, significant, verdict)


def wilcoxon_table(
    runs: StageRuns,
    metrics: tuple[str, ...] = ("psnr", "ssim", "hfn", "vif"),
    student_depth: int | None = None,
    teacher_depth: int | None = None,
    alpha: float = ALPHA,
) -> ReportTable:
    """SFT-KD vs Std-KD per setting, method and metric on paired per-slice values."""
    t_depth = teacher_depth or runs.teacher_depth()
    s_depth = student_depth or runs.student_depth()
    multi_seed = any(s.seed for s in runs.settings())
    table = ReportTable(f"Wilcoxon signed-rank tests: SFT-KD vs Std-KD (α = {alpha:g})")
    table.notes = [
        f"Paired per-slice values of the {runs.split} split, matched by (volume, slice); "
        "two-sided test; Δ = median paired difference SFT-KD − Std-KD (dB for PSNR); "
        "slices with an undefined value are left out (column 'dropped').",
        f"{MISSING} = a run of the pair is missing (see the warnings).",
    ]
    header = ["Method", "Metric", "n", "dropped", "median Δ", "p-value", "verdict"]
    for setting in runs.settings():
        rows = []
        for method in runs.methods():
            std_run = runs.find(setting, "std_kd", method, t_depth, s_depth)
            sft_run = runs.find(setting, "sft_kd", method, t_depth, s_depth)
            a = runs.eval(std_run["run_id"]) if std_run is not None else None
            b = runs.eval(sft_run["run_id"]) if sft_run is not None else None
            for metric in metrics:
                base = {
                    "dataset": setting.dataset,
                    "acceleration": setting.acceleration,
                    "seed": setting.seed,
                    "method": method,
                    "metric": metric,
                    "std_kd_run": std_run["run_id"] if std_run is not None else "",
                    "sft_kd_run": sft_run["run_id"] if sft_run is not None else "",
                    "split": runs.split,
                }
                if a is None or b is None:
                    rows.append([method_name(method), metric.upper()] + [MISSING] * 5)
                    table.records.append({**base, "verdict": "missing run"})
                    continue
                _, va, vb = paired_slices(a, b, metric)
                res = wilcoxon_test(va, vb, HIGHER_IS_BETTER.get(metric, True), alpha)
                d = 3 if metric == "psnr" else 5
                rows.append(
                    [
                        method_name(method),
                        metric.upper(),
                        str(res.n),
                        str(res.n_dropped),
                        "—" if math.isnan(res.median_diff) else f"{res.median_diff:+.{d}f}",
                        "—" if math.isnan(res.p_value) else f"{res.p_value:.3g}",
                        res.verdict,
                    ]
                )
                table.records.append({**base, **res.to_dict()})
        table.sections.append(Section(setting.label(multi_seed), header, rows))
    return table
