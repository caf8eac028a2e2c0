"""The comparison's plain-language paragraph: which claims hold, on how many independent units.

Built from the records of :func:`raykd.report.stats.paired_table` (PSNR), the gap table and the
balance table, so the paragraph cannot disagree with them. Every verdict names its units
(seeds × volumes; test subjects with folds) and its Holm-adjusted p; a contrast with fewer than
:data:`~raykd.report.inference.MIN_UNITS` units (:data:`~raykd.report.subjects.MIN_SUBJECTS`
subjects) gets no verdict, and the paragraph says so instead of quoting a per-slice p-value.
"""

from __future__ import annotations

import math
from typing import Any

from raykd.report.folds import has_folds, replicates_text
from raykd.report.inference import ALPHA, MIN_UNITS, refusal
from raykd.report.runs import StageRuns
from raykd.report.stats import CONTRASTS, format_p
from raykd.report.subjects import MIN_SUBJECTS
from raykd.report.table_model import ReportTable, method_name


def _contrast(rec: dict[str, Any]):
    return next(c for c in CONTRASTS if c.key == rec["comparison"])


def claim_sentence(rec: dict[str, Any]) -> str:
    """One testable PSNR record as a plain claim ("X beats Y for AT (...)")."""
    c = _contrast(rec)
    who, whom, method = c.subject, c.object, method_name(rec["method"])
    if rec["better"] == "candidate":
        verb = "beats"
    elif rec["better"] == "baseline":
        verb = "is worse than"
    else:
        verb = "does not beat"
    evidence = (
        f"mean {rec['mean_diff']:+.2f} dB, 95% CI [{rec['ci_low']:+.2f}, {rec['ci_high']:+.2f}], "
        f"{format_p(rec['p_value'])}, {_adjusted(rec)}n = {rec['n_units']} units: {rec['units']}"
    )
    if rec["n_dropped"]:
        evidence += f", {rec['n_dropped']} undefined left out"
    return f"{who} {verb} {whom} for {method} ({evidence})"


def _adjusted(rec: dict[str, Any]) -> str:
    p, m = rec.get("p_adjusted", math.nan), rec.get("family_size", 1)
    if p is None or math.isnan(p) or m <= 1:
        return ""
    return f"Holm-adjusted over {m} tests p = {p:.3g}, "


def _grouped(recs: list[dict[str, Any]]) -> dict[str, list[str]]:
    """``{"SFT-KD vs Std-KD": [methods]}`` of records, in contrast order."""
    out: dict[str, list[str]] = {}
    for r in recs:
        c = _contrast(r)
        out.setdefault(f"{c.subject} vs {c.object}", []).append(method_name(r["method"]))
    return out


def summary_paragraph(
    runs: StageRuns,
    paired: ReportTable,
    gap: ReportTable | None = None,
    balance: str = "",
    alpha: float = ALPHA,
) -> str:
    """One paragraph stating which claims hold at ``alpha`` (PSNR), per setting."""
    parts = []
    for setting in runs.settings():
        recs = [
            r
            for r in paired.records
            if r["metric"] == "psnr"
            and (r["dataset"], r["acceleration"]) == (setting.dataset, setting.acceleration)
            and r.get("budget", "") == setting.budget
        ]
        seeds = runs.seeds(setting)
        split = "held-out test" if runs.split == "test" else "validation"
        unit = "one trained model pair (seed) on one volume"
        ci, need = "a seed-clustered 95% bootstrap CI", f"≥ {MIN_UNITS} units"
        if has_folds(seeds):
            unit = "one test subject (the mean over the (fold, seed) models that tested it)"
            ci, need = "a Student-t 95% CI over subjects", f"≥ {MIN_SUBJECTS} subjects"
        head = (
            f"On {setting.label()} ({split} volumes, {replicates_text(seeds)}; unit of inference: "
            f"{unit}; two-sided Wilcoxon signed-rank test on per-unit volume-PSNR differences "
            f"and {ci}, α = {alpha:g}, Holm-adjusted over the contrast × method tests of the "
            f"setting; a verdict needs {need}, adjusted p < {alpha:g} and a CI excluding 0)"
        )
        tested = [r for r in recs if r.get("testable")]
        claims = [claim_sentence(r) for r in tested]
        few: dict[tuple[int, str], list[dict[str, Any]]] = {}
        for r in recs:
            if "n_units" in r and not r.get("testable"):
                few.setdefault((r["n_units"], r["units"]), []).append(r)
        for (n, units), group in few.items():
            what = " and on ".join(f"{k} for {', '.join(m)}" for k, m in _grouped(group).items())
            why = group[0]["verdict"] if group[0].get("n_subjects") else refusal(n)
            claims.append(f"no verdict ({why}; {units}) on {what}")
        missing = [r for r in recs if "n_units" not in r]
        claims += [
            f"{what} for {', '.join(methods)} could not be tested (missing runs)"
            for what, methods in _grouped(missing).items()
        ]
        text = f"{head}: {'; '.join(claims) if claims else 'no KD runs to compare'}."
        text += _gap_sentence(gap, setting)
        parts.append(text)
    if balance:
        parts.append(balance)
    return " ".join(parts)


def _gap_sentence(gap: ReportTable | None, setting) -> str:
    gaps = [
        r
        for r in (gap.records if gap is not None else [])
        if r["framework"] == "no KD"
        and (r["dataset"], r["acceleration"]) == (setting.dataset, setting.acceleration)
        and r.get("budget", "") == setting.budget
    ]
    if not gaps or math.isnan(gaps[0]["gap_db"]):
        return ""
    g = gaps[0]
    if not math.isnan(g["ci_low"]):
        ci = f" (95% CI {g['ci_low']:.2f} to {g['ci_high']:.2f}, {g['n_units']} units)"
    else:
        ci = f" (no CI: {refusal(g['n_units'])})" if g["n_units"] else ""
    return f" Without KD the teacher–student gap is {g['gap_db']:.2f} dB{ci}."
