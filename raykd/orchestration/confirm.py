"""Confirmed searches (``--confirm K``): re-train the search's top-K configurations and the
default with fresh seeds and test each against the default over (seed, volume) units.

The best of N noisy trials is biased upward: a search's winner is the trial that was lucky as
well as good. Here its top-K distinct configurations and the default (the search space's
``default``, else the base preset's values) train again with N seeds the search never used,
through the grid's stage machinery (:func:`~raykd.orchestration.grid.run_rows`: a teacher
shared by the configurations trains once per seed and is reused), and are evaluated on the
held-out test split (the validation split where the preset has none, which the search itself
selected on: said so). Each configuration is compared with the default by the report's
unit-level test (:func:`raykd.report.inference.unit_test`: Wilcoxon on the unit differences
and a seed-clustered bootstrap CI, no verdict below ``MIN_UNITS`` units).

The K candidates are one family: per metric, p is Holm-adjusted across the K comparisons and
verdicts use it. Each is judged on the objective the search ranked by (``val_psnr`` → PSNR,
``val_ssim`` → SSIM; ``val_loss``, with no per-volume value, falls back to PSNR, said so), PSNR
reported as a second line otherwise. The winner is the best candidate the test finds better
than the default; else none beats the default beyond its spread.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raykd.orchestration.messages import SearchOutcome, TrialOutcome
from raykd.plan.presets import GridSpec
from raykd.plan.search_space import SearchSpec, default_params, trial_name, trial_row_and_spec
from raykd.report.inference import (
    ALPHA,
    MIN_UNITS,
    UnitPairs,
    UnitTest,
    judge,
    unit_test,
    volume_values,
)
from raykd.report.multiplicity import holm
from raykd.report.table_model import HIGHER_IS_BETTER

METRICS = ("psnr", "ssim")
# The per-volume metric a search objective is judged on (others: PSNR, said so).
OBJECTIVE_METRIC = {"val_psnr": "psnr", "val_ssim": "ssim"}
DEFAULT_LABEL = "default"
NONE_BEATS = "none beats the default beyond its spread"


@dataclass
class ConfigResult:
    """One re-trained configuration: its units' values and, unless it is the default, its
    unit-level tests against the default (per metric)."""

    label: str  # "#1" (search rank) or "default"
    params: dict[str, Any]
    search_value: float | None  # the search's objective for it (None: the default)
    stage_ids: list[str]  # its own stage per seed
    teacher_ids: list[str]  # the stage each own stage learned from, per seed
    values: dict[str, dict[tuple[str, str], float]]  # metric -> {(seed, volume): value}
    tests: dict[str, UnitTest] = field(default_factory=dict)  # metric -> test vs default
    shown: str = ""  # how the table names its parameters (default: ``params``)

    @property
    def name(self) -> str:
        return f"{self.label} ({trial_name(self.params)})"

    def mean(self, metric: str) -> float:
        """Mean over seeds of the per-seed mean over volumes (the report's estimate)."""
        per_seed: dict[str, list[float]] = {}
        for (seed, _), v in self.values[metric].items():
            if math.isfinite(v):
                per_seed.setdefault(seed, []).append(v)
        means = [sum(v) / len(v) for v in per_seed.values()]
        return sum(means) / len(means) if means else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "params": self.params,
            "search_value": self.search_value,
            "stage_ids": self.stage_ids,
            "teacher_ids": self.teacher_ids,
            "n_units": len(self.values[METRICS[0]]),
            **{f"mean_{m}": self.mean(m) for m in METRICS},
            "vs_default": {m: asdict(t) for m, t in self.tests.items()},
        }


@dataclass
class Confirmation:
    """The confirmation of one search: every configuration, the winner (or None), the verdict."""

    search: str
    metric: str  # the search objective the top-K were ranked by
    split: str  # "test", or "val" where the preset has no test split
    seeds: list[int]
    configs: list[ConfigResult]  # the default first
    winner: str | None
    verdict: str

    @property
    def split_note(self) -> str:
        if self.split == "test":
            return "split test (held out: the search never saw it)"
        return (
            "split val: the preset has no test split, and the search selected on this split "
            "(other seeds, same volumes)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "search": self.search,
            "metric": self.metric,
            "split": self.split,
            "seeds": self.seeds,
            "winner": self.winner,
            "verdict": self.verdict,
            "configs": [c.to_dict() for c in self.configs],
        }


def top_configs(out: SearchOutcome, search: SearchSpec, k: int) -> list[TrialOutcome]:
    """The search's ``k`` best distinct configurations by its (first) objective, best first
    (finished trials with a finite value only)."""
    metric = search.objectives[0].metric
    sign = 1 if search.objectives[0].mode == "max" else -1
    done = [t for t in out.trials if not t.error and _finite_value(t, metric)]
    seen: set[str] = set()
    best: list[TrialOutcome] = []
    for t in sorted(done, key=lambda t: -sign * (t.value(metric) or 0.0)):
        key = json.dumps(t.params, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            best.append(t)
    return best[:k]


def _finite_value(t: TrialOutcome, metric: str) -> bool:
    value = t.value(metric)
    return isinstance(value, int | float) and math.isfinite(value)


def describe_default(search: SearchSpec, base: GridSpec) -> str:
    """The default's value of every searched parameter, as it trains (the preset's included),
    e.g. ``method=at kd_balance=0.1 output_weight=0 w_imit=1 w_s=1``."""
    spec, row, over = trial_row_and_spec(search, base, default_params(search, base))
    values = {
        "method": row.method,
        "kd_balance": spec.kd_balance,
        "imit_balance": spec.imit_balance,
        "kd_weight_scale": 1.0,  # the canonical weight
        "output_weight": over.kd_output_weight or 0.0,
        "w_imit": spec.w_imit,
        "w_s": spec.w_s,
        "student_depth": row.student_depth,
        "acceleration": row.acceleration,
    }
    return trial_name({k: values[k] for k in search.params})


def confirm_seeds(base: GridSpec, n: int) -> list[int]:
    """``n`` seeds after the search's own: the confirmation never re-uses a search model."""
    start = max(base.seed_list()) + 1
    return list(range(start, start + n))


def compare(default: ConfigResult, cand: ConfigResult, metric: str) -> UnitTest:
    """The report's unit-level test of ``cand`` against ``default`` (differences cand − default)
    over the (seed, volume) units both have."""
    a, b = default.values[metric], cand.values[metric]
    keys = sorted(set(a) & set(b))
    unpaired = sorted({k[0] for k in set(a) ^ set(b)})
    pairs = UnitPairs(
        keys,
        np.array([a[k] for k in keys], dtype=np.float64),
        np.array([b[k] for k in keys], dtype=np.float64),
        unpaired,
    )
    return unit_test(pairs, HIGHER_IS_BETTER.get(metric, True), names=(DEFAULT_LABEL, cand.label))


def judged_metric(objective: str) -> str:
    """The per-volume metric a search ranked by ``objective`` is confirmed on."""
    return OBJECTIVE_METRIC.get(objective, "psnr")


def adjust_candidates(configs: list[ConfigResult], alpha: float = ALPHA) -> None:
    """Holm across the candidates (every config but the default), per metric; each test is
    judged again on its adjusted p (in place)."""
    cands = [c for c in configs if c.label != DEFAULT_LABEL]
    for m in METRICS:
        tested = [c for c in cands if m in c.tests]
        adjusted = holm([c.tests[m].p_value for c in tested])
        higher = HIGHER_IS_BETTER.get(m, True)
        for c, p in zip(tested, adjusted, strict=True):
            names = (DEFAULT_LABEL, c.label)
            c.tests[m] = judge(c.tests[m], p, alpha, names, higher, len(tested))


def choose_winner(configs: list[ConfigResult], metric: str = "psnr") -> tuple[str | None, str]:
    """The confirmed winner (the candidate with the largest mean difference among those the
    unit-level test finds better than the default) and the verdict line."""
    cands = [c for c in configs if c.label != DEFAULT_LABEL and metric in c.tests]
    if not cands:
        return None, f"{NONE_BEATS}: no configuration to confirm"
    better = [c for c in cands if c.tests[metric].better == "candidate"]
    if better:
        higher = HIGHER_IS_BETTER.get(metric, True)
        win = max(better, key=lambda c: c.tests[metric].mean_diff * (1 if higher else -1))
        return win.label, f"confirmed winner: {win.name}, {_effect(win.tests[metric], metric)}"
    sign = 1 if HIGHER_IS_BETTER.get(metric, True) else -1
    top = max(cands, key=lambda c: _finite(sign * c.tests[metric].mean_diff))
    test = top.tests[metric]
    if not test.testable:
        return None, (
            f"no confirmed winner: {test.n_units} units per configuration, a verdict needs "
            f"≥ {MIN_UNITS} (more --confirm-seeds or test volumes); best {top.name}: "
            f"{_effect(test, metric)}"
        )
    return None, f"{NONE_BEATS} (closest: {top.name}, {_effect(test, metric)})"


def _finite(x: float) -> float:  # noqa: D103
    return x if math.isfinite(x) else -math.inf


def _effect(t: UnitTest, metric: str) -> str:
    unit = " dB" if metric == "psnr" else ""
    d = 2 if metric == "psnr" else 4
    text = f"{metric.upper()} {t.mean_diff:+.{d}f}{unit} vs default"
    if math.isfinite(t.ci_low):
        text += f" [95% CI {t.ci_low:+.{d}f}, {t.ci_high:+.{d}f}], p = {t.p_value:.3g}"
        if math.isfinite(t.p_adjusted) and t.family_size > 1:
            text += f", Holm-adjusted over {t.family_size} candidates {t.p_adjusted:.3g}"
    return f"{text}, {t.n_units} units ({t.units})"


def second_line(configs: list[ConfigResult], judged: str) -> str:
    """The PSNR line reported beside a verdict judged on another metric ("" when PSNR)."""
    if judged == "psnr":
        return ""
    parts = [
        f"{c.label} {_effect(c.tests['psnr'], 'psnr')}: {c.tests['psnr'].verdict}"
        for c in configs
        if c.label != DEFAULT_LABEL and "psnr" in c.tests
    ]
    return "PSNR (reported, not the judged objective): " + "; ".join(parts)


def train_configs(
    search: SearchSpec,
    base: GridSpec,
    configs: list[tuple[str, dict[str, Any], float | None]],
    seeds: list[int],
    ctx,
) -> tuple[list[ConfigResult], str]:
    """Train (or reuse) every (label, params, search value) configuration with ``seeds``
    through :func:`~raykd.orchestration.grid.run_rows`; returns the results and the split they
    are evaluated on (``test`` when every stage has a test evaluation, else ``val``)."""
    from raykd.orchestration.grid import run_rows, stage_numbers

    planned, numbers = [], {}
    for label, params, value in configs:
        spec, row, over = trial_row_and_spec(search, base, params)
        rows = [row.model_copy(update={"seed": s}) for s in seeds]
        planned.append((label, params, value, spec, rows, over))
        for sid in stage_numbers(spec, [rows], over):  # "stage k/N" over the confirmation
            numbers.setdefault(sid, len(numbers) + 1)
    ctx.numbers = numbers
    trained = []
    for label, params, value, spec, rows, over in planned:
        trained.append((label, params, value, run_rows(spec, rows, ctx, overrides=over)))
    dirs = [Path(r.output_dir) for *_, records in trained for r in records]
    split = "test" if all((d / "eval_test.json").is_file() for d in dirs) else "val"
    results = []
    for label, params, value, records in trained:
        values: dict[str, dict[tuple[str, str], float]] = {m: {} for m in METRICS}
        for seed, record in zip(seeds, records, strict=True):
            report = json.loads((Path(record.output_dir) / f"eval_{split}.json").read_text())
            for m in METRICS:
                for vol, v in volume_values(report, m).items():
                    values[m][(str(seed), vol)] = v
        stage_ids = [r.stage_id for r in records]
        teachers = [r.teacher_stage or "" for r in records]
        results.append(ConfigResult(label, params, value, stage_ids, teachers, values))
    return results, split


def format_table(conf: Confirmation) -> str:
    """The confirmation as a Markdown table (what the console prints and the job run keeps)."""
    metric, judged = conf.metric, judged_metric(conf.metric)
    fallback = "" if conf.metric in OBJECTIVE_METRIC else f" ({metric} has no per-volume value)"
    lines = [
        f"Confirmed search '{conf.search}': top {len(conf.configs) - 1} by {metric} and the "
        f"default, re-trained with seeds {', '.join(map(str, conf.seeds))}; {conf.split_note}. "
        "Unit = one seed on one volume; Δ = config − default, mean over seeds of the per-seed "
        "mean over volumes, [95% CI] seed-clustered bootstrap, p = Wilcoxon signed-rank on the "
        f"unit differences, p adj = Holm across the {len(conf.configs) - 1} candidates (the "
        f"family), per metric; verdicts on {judged.upper()}{fallback} with the adjusted p; no "
        f"verdict below {MIN_UNITS} units.",
        "",
        f"| config | parameters | search {metric} | units | PSNR (dB) | SSIM | Δ PSNR [95% CI] "
        f"| p | p adj | Δ SSIM [95% CI] | p | p adj | verdict ({judged.upper()}) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in conf.configs:
        search_v = "—" if c.search_value is None else f"{c.search_value:.3f}"
        n = len(c.values[METRICS[0]])
        cells = [c.label, c.shown or trial_name(c.params), search_v, str(n)]
        cells += [f"{c.mean('psnr'):.3f}", f"{c.mean('ssim'):.4f}"]
        for m, d in (("psnr", 3), ("ssim", 4)):
            t = c.tests.get(m)
            cells += _test_cells(t, d) if t else ["—", "—", "—"]
        cells.append(c.tests[judged].verdict if judged in c.tests else "(baseline)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _test_cells(t: UnitTest, d: int) -> list[str]:
    if not math.isfinite(t.mean_diff):
        return ["—", "—", "—"]
    diff = f"{t.mean_diff:+.{d}f}"
    if math.isfinite(t.ci_low):
        diff += f" [{t.ci_low:+.{d}f}, {t.ci_high:+.{d}f}]"
    p = f"{t.p_value:.3g}" if math.isfinite(t.p_value) else "—"
    return [diff, p, f"{t.p_adjusted:.3g}" if math.isfinite(t.p_adjusted) else "—"]


def log_confirmation(job, conf: Confirmation, table: str) -> list[Path]:
    """Metrics, tags and the table (Markdown) and result (JSON) on the search's job run."""
    from raykd.train.evaluate import json_safe

    stem = job.root / f"confirm-{conf.search}-{job.run_id[:8]}"
    md, js = stem.with_suffix(".md"), stem.with_suffix(".json")
    md.write_text(f"{table}\n\n{conf.verdict}\n")
    js.write_text(json.dumps(json_safe(conf.to_dict())[0], indent=1, allow_nan=False))
    if job.tracking is None:
        return [md, js]
    metrics: dict[str, float] = {}
    for c in conf.configs:
        key = "confirm_default" if c.label == DEFAULT_LABEL else f"confirm_top{c.label[1:]}"
        for m in METRICS:
            metrics[f"{key}_{m}"] = c.mean(m)
            if (t := c.tests.get(m)) is not None:
                metrics |= {f"{key}_delta_{m}": t.mean_diff, f"{key}_p_{m}": t.p_value}
                metrics[f"{key}_p_holm_{m}"] = t.p_adjusted
                metrics |= {f"{key}_ci_low_{m}": t.ci_low, f"{key}_ci_high_{m}": t.ci_high}
    job.tracking.log_metrics(job.run_id, metrics)
    winner = next((c for c in conf.configs if c.label == conf.winner), None)
    tags = {
        "raykd.confirm.verdict": conf.verdict,
        "raykd.confirm.winner": trial_name(winner.params) if winner else "none",
        "raykd.confirm.seeds": ",".join(map(str, conf.seeds)),
        "raykd.confirm.split": conf.split,
    }
    job.tracking.set_tags(job.run_id, tags)
    for path in (md, js):
        job.tracking.log_artifact(job.run_id, path, "confirm")
    return [md, js]


def confirm_search(
    search: SearchSpec, base: GridSpec, job, out: SearchOutcome, k: int, n: int
) -> Confirmation | None:
    """``--confirm K --confirm-seeds N`` after :func:`~raykd.orchestration.search.run_search`:
    re-train, test, print the table and the verdict line, log them; None when ``k`` is 0."""
    from raykd.orchestration.cluster import say

    if k <= 0:
        return None
    tops = top_configs(out, search, k)
    if not tops:
        say("confirm: no finished trial to confirm")
        return None
    seeds = confirm_seeds(base, n)
    metric = search.objectives[0].metric
    say(
        f"confirming the top {len(tops)} configuration(s) and the default with seeds "
        f"{', '.join(map(str, seeds))} ({(len(tops) + 1) * n} {search.row} rows)"
    )
    configs = [(DEFAULT_LABEL, default_params(search, base), None)]
    configs += [(f"#{i + 1}", t.params, t.value(metric)) for i, t in enumerate(tops)]
    results, split = train_configs(search, base, configs, seeds, job.ctx)
    results[0].shown = describe_default(search, base)
    for c in results[1:]:
        c.tests = {m: compare(results[0], c, m) for m in METRICS}
    adjust_candidates(results)
    judged = judged_metric(metric)
    winner, verdict = choose_winner(results, judged)
    verdict = "\n".join(x for x in (verdict, second_line(results, judged)) if x)
    conf = Confirmation(search.name, metric, split, seeds, results, winner, verdict)
    table = format_table(conf)
    print(table)
    print(verdict)
    log_confirmation(job, conf, table)
    return conf
