"""Paired statistics on per-slice metrics: Wilcoxon signed-rank tests (α = 0.05), a bootstrap
CI for mean paired differences, and the plain-language summary of which claims hold.

Three contrasts per KD method (:data:`CONTRASTS`): SFT-KD vs Std-KD, SFT-KD vs the
equal-compute control (a plain student trained for SFT + KD epochs: is SFT-KD's gain more than
its extra training?) and SFT initialisation vs random initialisation of the SFT-KD student.

Pairs are matched by (seed, volume, slice index) from the two runs' eval JSONs and pooled over
seeds into one test, so several seeds add evidence instead of giving separate, weaker tests.
Runs of one seed evaluated on different volumes or slices are an error, not a silently smaller
test; a seed that only one side has is left out with a warning. Slices where either value is
undefined (NaN, or an infinite PSNR) are left out and counted. The effect size is the median
paired difference candidate − baseline (dB for PSNR). A contrast whose runs are missing is
listed as missing, with a warning, never dropped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from raykd.errors import RaykdError
from raykd.report.collect import Setting, StageRuns, seed_key
from raykd.report.tables import (
    HIGHER_IS_BETTER,
    MISSING,
    ReportTable,
    Section,
    method_name,
    section_lead,
    table_notes,
)

ALPHA = 0.05


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


@dataclass
class SeedPairs:
    """Per-slice values of two rows paired by (seed, volume, slice), pooled over seeds."""

    seeds: list[str]
    keys: list[tuple[str, str, int]]
    baseline: np.ndarray
    candidate: np.ndarray
    unpaired: list[str]  # seeds that only one side has (or whose eval JSON is missing)

    @property
    def n(self) -> int:
        return len(self.keys)

    def differences(self) -> list[np.ndarray]:
        """Finite candidate − baseline differences, one array per seed (bootstrap strata)."""
        seed_of = np.array([k[0] for k in self.keys], dtype=object)
        diff = self.candidate - self.baseline
        keep = np.isfinite(diff)
        return [diff[(seed_of == s) & keep] for s in self.seeds]


def seed_pairs(
    runs: StageRuns,
    baseline: dict[str, Any],
    candidate: dict[str, Any],
    metric: str,
) -> SeedPairs:
    """Pair two ``{seed: run}`` maps (:meth:`StageRuns.find_seeds`) slice by slice.

    Only seeds both sides have are paired; within a seed the slices must align
    (:func:`paired_slices` raises otherwise).
    """
    seeds, keys, va, vb, unpaired = [], [], [], [], []
    for seed in sorted(set(baseline) | set(candidate), key=seed_key):
        a = runs.eval(baseline[seed]["run_id"]) if seed in baseline else None
        b = runs.eval(candidate[seed]["run_id"]) if seed in candidate else None
        if a is None or b is None:
            unpaired.append(seed)
            continue
        k, x, y = paired_slices(a, b, metric)
        seeds.append(seed)
        keys += [(seed, vol, sl) for vol, sl in k]
        va.append(x)
        vb.append(y)
    cat = (lambda v: np.concatenate(v)) if va else (lambda v: np.zeros(0))
    return SeedPairs(seeds, keys, cat(va), cat(vb), unpaired)


def bootstrap_ci(
    groups: list[np.ndarray],
    resamples: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Mean over groups of the group means, with a percentile bootstrap CI.

    Resamples within each group (stratified: every seed keeps its weight), with a seeded RNG
    so a report is reproducible. Resamples run in chunks to bound memory on big test sets.
    """
    if not groups or any(g.size == 0 for g in groups):
        raise RaykdError("bootstrap_ci: every group needs at least one value")
    rng = np.random.default_rng(seed)
    estimate = float(np.mean([g.mean() for g in groups]))
    boot = np.zeros(resamples)
    for g in groups:
        chunk = max(1, 2_000_000 // g.size)
        for start in range(0, resamples, chunk):
            k = min(chunk, resamples - start)
            boot[start : start + k] += g[rng.integers(0, g.size, (k, g.size))].mean(axis=1)
    boot /= len(groups)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(boot, [tail, 100 - tail])
    return estimate, float(low), float(high)


def pooled_test(
    runs: StageRuns,
    setting: Setting,
    contrast: Contrast,
    method: str,
    metric: str,
    t_depth: int | None,
    s_depth: int | None,
    alpha: float = ALPHA,
) -> dict[str, Any]:
    """One contrast × method × metric: the tidy record (``verdict`` 'missing run' if untestable)."""
    find = runs.find_seeds
    cand = find(setting, contrast.candidate, method, t_depth, s_depth)
    base_method = "" if contrast.baseline == "equal_compute" else method
    base = find(setting, contrast.baseline, base_method, t_depth, s_depth)
    record: dict[str, Any] = {
        "dataset": setting.dataset,
        "acceleration": setting.acceleration,
        "seed": setting.seed,
        "comparison": contrast.key,
        "label": contrast.label,
        "method": method,
        "metric": metric,
        "baseline_runs": ";".join(str(r["run_id"]) for r in base.values()),
        "candidate_runs": ";".join(str(r["run_id"]) for r in cand.values()),
        "split": runs.split,
    }
    pairs = seed_pairs(runs, base, cand, metric) if base and cand else None
    if pairs is None or pairs.n == 0:
        lacking = [n for n, f in ((contrast.baseline, base), (contrast.candidate, cand)) if not f]
        why = f"no {' / '.join(lacking)} run" if lacking else "no seed has both runs evaluated"
        runs.warn_once(
            f"comparison missing: {setting.label()} {contrast.label} for "
            f"{method_name(method)} cannot be tested ({why}); reported as missing"
        )
        return {**record, "seeds": "", "n_seeds": 0, "pairs_per_seed": "", "verdict": "missing run"}
    if pairs.unpaired:
        runs.warn_once(
            f"{setting.label()} {contrast.label} for {method_name(method)}: seed(s) "
            f"{', '.join(pairs.unpaired)} lack one of the runs; tested on seeds "
            f"{', '.join(pairs.seeds)}"
        )
    names = (contrast.baseline_name, contrast.candidate_name)
    res = wilcoxon_test(
        pairs.baseline, pairs.candidate, HIGHER_IS_BETTER.get(metric, True), alpha, names
    )
    per_seed = ";".join(str(sum(k[0] == seed for k in pairs.keys)) for seed in pairs.seeds)
    return {
        **record,
        "seeds": ";".join(pairs.seeds),
        "n_seeds": len(pairs.seeds),
        "pairs_per_seed": per_seed,
        **res.to_dict(),
    }


def wilcoxon_table(
    runs: StageRuns,
    metrics: tuple[str, ...] = ("psnr", "ssim", "hfn", "vif"),
    student_depth: int | None = None,
    teacher_depth: int | None = None,
    alpha: float = ALPHA,
) -> ReportTable:
    """Every contrast of :data:`CONTRASTS` per setting, method and metric, pooled over seeds."""
    t_depth = teacher_depth or runs.teacher_depth()
    s_depth = student_depth or runs.student_depth()
    table = ReportTable(f"Wilcoxon signed-rank tests on paired per-slice metrics (α = {alpha:g})")
    table.notes = table_notes(
        runs,
        "Pairs matched by (seed, volume, slice) and pooled over seeds into one two-sided test; "
        "Δ = median paired difference candidate − baseline (dB for PSNR; for HFN lower is "
        "better); slices with an undefined value are left out (column 'dropped').",
        "Contrasts: SFT-KD vs Std-KD; SFT-KD vs the equal-compute control (a plain student "
        "trained for SFT + KD epochs); SFT init vs random init (SFT-KD student initialisation).",
    )
    header = ["Comparison", "Method", "Metric", "seeds", "n", "dropped", "median Δ", "p-value"]
    header.append("verdict")
    for setting in runs.settings():
        rows = []
        for contrast in CONTRASTS:
            for method in runs.methods():
                for metric in metrics:
                    rec = pooled_test(runs, setting, contrast, method, metric, t_depth, s_depth)
                    table.records.append(rec)
                    row = [contrast.label, method_name(method), metric.upper()]
                    if "p_value" not in rec:
                        rows.append(row + [MISSING] * 5 + ["missing run"])
                        continue
                    d = 3 if metric == "psnr" else 5
                    med, p = rec["median_diff"], rec["p_value"]
                    rows.append(
                        row
                        + [
                            str(rec["n_seeds"]),
                            str(rec["n"]),
                            str(rec["n_dropped"]),
                            "—" if math.isnan(med) else f"{med:+.{d}f}",
                            "—" if math.isnan(p) else f"{p:.3g}",
                            rec["verdict"],
                        ]
                    )
        lead = section_lead(runs, setting)
        table.sections.append(Section(setting.label(), header, rows, lead=lead))
    return table


# ---- plain-language summary ------------------------------------------------------------------
def format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3g}"


def _evidence(rec: dict[str, Any]) -> str:
    counts = [int(c) for c in str(rec["pairs_per_seed"]).split(";")]
    k = len(counts)
    if len(set(counts)) == 1:
        size = f"{k} seed{'s' if k != 1 else ''} × {counts[0]} slices"
    else:
        size = f"{sum(counts)} slice pairs over {k} seeds"
    if rec["n_dropped"]:
        size += f", {rec['n_dropped']} undefined left out"
    return f"median {rec['median_diff']:+.2f} dB, {format_p(rec['p_value'])}, {size}"


def claim_sentence(rec: dict[str, Any], alpha: float = ALPHA) -> str:
    """One PSNR record of :func:`pooled_test` as a plain claim ("X beats Y for AT (...)")."""
    contrast = next(c for c in CONTRASTS if c.key == rec["comparison"])
    who, whom, method = contrast.subject, contrast.object, method_name(rec["method"])
    if "p_value" not in rec:
        return f"{who} vs {whom} for {method} could not be tested (missing runs)"
    p, med = rec["p_value"], rec["median_diff"]
    if math.isnan(p):
        return f"{who} vs {whom} for {method} could not be tested (no defined slice pairs)"
    direction = med if med != 0 else rec["mean_diff"]  # as wilcoxon_test's verdict
    if p < alpha and direction > 0:
        verb = "beats"
    elif p < alpha and direction < 0:
        verb = "is worse than"
    else:
        verb = "does not beat"
    return f"{who} {verb} {whom} for {method} ({_evidence(rec)})"


def summary_paragraph(
    runs: StageRuns,
    wilcoxon: ReportTable,
    gap: ReportTable | None = None,
    alpha: float = ALPHA,
) -> str:
    """One paragraph stating which claims hold at ``alpha`` (PSNR), per setting.

    Built from the Wilcoxon table's records, so the paragraph cannot disagree with the table.
    """
    parts = []
    for setting in runs.settings():
        recs = [
            r
            for r in wilcoxon.records
            if r["metric"] == "psnr"
            and (r["dataset"], r["acceleration"]) == (setting.dataset, setting.acceleration)
        ]
        seeds = runs.seeds(setting)
        split = "held-out test" if runs.split == "test" else "validation"
        seed_text = f"seed{'s' if len(seeds) != 1 else ''} {', '.join(seeds) or '?'}"
        head = (
            f"On {setting.label()} ({split} volumes, {seed_text}; two-sided Wilcoxon "
            f"signed-rank tests on per-slice PSNR pooled over seeds, α = {alpha:g})"
        )
        claims = [claim_sentence(r, alpha) for r in recs if "p_value" in r]
        untested: dict[str, list[str]] = {}
        for r in recs:
            if "p_value" not in r:
                c = next(c for c in CONTRASTS if c.key == r["comparison"])
                untested.setdefault(f"{c.subject} vs {c.object}", []).append(
                    method_name(r["method"])
                )
        claims += [
            f"{what} for {', '.join(methods)} could not be tested (missing runs)"
            for what, methods in untested.items()
        ]
        text = f"{head}: {'; '.join(claims) if claims else 'no KD runs to compare'}."
        gaps = [
            r
            for r in (gap.records if gap is not None else [])
            if r["framework"] == "no KD"
            and (r["dataset"], r["acceleration"]) == (setting.dataset, setting.acceleration)
        ]
        if gaps and not math.isnan(gaps[0]["gap_db"]):
            g = gaps[0]
            ci = (
                f" (95% CI {g['ci_low']:.2f} to {g['ci_high']:.2f})"
                if not math.isnan(g["ci_low"])
                else ""
            )
            text += f" Without KD the teacher–student gap is {g['gap_db']:.2f} dB{ci}."
        parts.append(text)
    return " ".join(parts)
