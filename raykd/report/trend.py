"""Trends across a budget study, tested: does a lead shrink, grow or reverse as training gets
longer?

A run of point estimates proves nothing (a strictly monotone run of 3 noisy points happens 1 time
in 6 by chance). The verdict comes from a **paired test of the per-unit change** of the lead
between the smallest and the largest budget: per unit matched across the two budgets (the same
(seed, volume) without folds; the same test subject with folds) the lead L at the largest budget
minus L at the smallest, oriented so that negative means "towards zero" (times the sign of L's
estimate at the smallest budget). The change goes through the same unit-level test as a contrast
(:func:`raykd.report.inference.unit_test`: Wilcoxon + CI, subjects as units with folds), and the
report's trend tests form one Holm family (per dataset × acceleration). Verdicts:

* **shrinks**: adjusted p < α and the change's CI lies below 0;
* **reverses**: shrinks, and L's CIs at both ends exclude 0 with opposite signs;
* **grows**: adjusted p < α and the CI lies above 0;
* otherwise **no verdict**, with the estimates and the change's CI and p.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from raykd.report.inference import ALPHA, UnitPairs, UnitTest, judge, unit_test
from raykd.report.multiplicity import holm

RULE = (
    "Trend verdicts, per KD method and contrast, on the lead L (SFT-KD − Std-KD; control − "
    "SFT-KD): a paired test of the per-unit change of L between the smallest and the largest "
    "budget (units matched across the two budgets; test subjects with folds), oriented so that "
    "negative = towards zero: Wilcoxon signed-rank p, Holm-adjusted over the trend tests of the "
    "table, and the change's 95% CI. **shrinks**: adjusted p < 0.05 and the CI below 0; "
    "**reverses**: shrinks and L's CIs at both ends exclude 0 with opposite signs; **grows**: "
    "adjusted p < 0.05 and the CI above 0; otherwise **no verdict** (the estimates alone are "
    "not a trend)."
)


@dataclass(frozen=True)
class LeadPoint:
    """One budget point of a lead with its 95% CI (NaN bounds: no CI)."""

    budget: float
    lead: float
    low: float
    high: float


def change_pairs(first: UnitPairs, last: UnitPairs, sign: float) -> UnitPairs:
    """Units of both budgets, baseline = the lead ``sign × (candidate − baseline)`` at the first
    budget, candidate = the lead at the last; the lead is oriented by ``sign``."""
    lead_a = dict(zip(first.keys, sign * (first.candidate - first.baseline), strict=True))
    lead_b = dict(zip(last.keys, sign * (last.candidate - last.baseline), strict=True))
    keys = [k for k in first.keys if k in lead_b]
    unpaired = sorted({k[0] for k in set(lead_a) ^ set(lead_b)})
    return UnitPairs(
        keys,
        np.array([lead_a[k] for k in keys], dtype=np.float64),
        np.array([lead_b[k] for k in keys], dtype=np.float64),
        unpaired,
        {**first.subjects, **last.subjects},
    )


def _excludes_zero(p: LeadPoint) -> int:
    if math.isnan(p.low):
        return 0
    return 1 if p.low > 0 else (-1 if p.high < 0 else 0)


@dataclass
class Trend:
    """The tested change of one lead between the smallest and the largest budget."""

    points: list[LeadPoint]
    test: UnitTest | None  # change = oriented lead(last) − lead(first); None: not testable
    word: str = ""  # "shrinks" | "reverses" | "grows" | "no verdict …"


def trend_test(
    points: list[LeadPoint],
    first: UnitPairs | None,
    last: UnitPairs | None,
    lead_sign: float = 1.0,
) -> Trend:
    """The raw (family of one) change test of a lead whose per-budget ``points`` are given and
    whose units at the smallest and the largest budget are ``first`` and ``last`` (lead =
    ``lead_sign`` × their candidate − baseline)."""
    pts = sorted(points, key=lambda p: p.budget)
    if first is None or last is None or len(pts) < 2:
        return Trend(pts, None, "no verdict (fewer than 2 budget points with units)")
    orient = -1.0 if pts[0].lead < 0 else 1.0
    pairs = change_pairs(first, last, orient * lead_sign)
    if pairs.n == 0:
        return Trend(pts, None, "no verdict (no unit is present at both budgets)")
    names = ("smallest budget", "largest budget")
    return Trend(pts, unit_test(pairs, True, ALPHA, names))


def judge_trends(trends: list[Trend], alpha: float = ALPHA) -> None:
    """Holm across ``trends`` (their family), then each one's verdict word (in place)."""
    tested = [t for t in trends if t.test is not None]
    adjusted = holm([t.test.p_value for t in tested])
    for t, p in zip(tested, adjusted, strict=True):
        test = judge(t.test, p, alpha, ("smallest budget", "largest budget"), True, len(tested))
        t.test = test
        t.word = _word(t, alpha)


def _word(t: Trend, alpha: float) -> str:
    test = t.test
    assert test is not None
    if not test.testable:
        return f"no verdict ({test.verdict})"
    if test.better == "baseline":  # the lead at the largest budget is closer to zero
        ends = _excludes_zero(t.points[0]), _excludes_zero(t.points[-1])
        return "reverses" if ends[0] and ends[1] and ends[0] != ends[1] else "shrinks"
    if test.better == "candidate":
        return "grows"
    return "no verdict (the change between the budgets is not significant)"


def change_text(t: Trend) -> str:
    """``change −0.13 dB [−0.20, −0.05], p = 0.031, Holm-adjusted 0.12 (n = 6 units)``."""
    test = t.test
    if test is None:
        return ""
    ci = "" if math.isnan(test.ci_low) else f" [{test.ci_low:+.2f}, {test.ci_high:+.2f}]"
    p = "" if math.isnan(test.p_value) else f", p = {test.p_value:.3g}"
    adj = test.p_adjusted
    p += "" if math.isnan(adj) else f", Holm-adjusted {adj:.3g} over {test.family_size}"
    n = f"n = {test.n_units} {'subjects' if test.n_folds else 'units'}"
    return f"change (< 0: towards zero) {test.mean_diff:+.2f} dB{ci}{p}, {n}"
