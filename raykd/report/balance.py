"""Loss balance of distillation runs: each weighted auxiliary term / the weighted reconstruction.

A KD term that is 10 000× the reconstruction term trains a feature matcher, not a reconstructor;
one at 1e-11× is a no-op. Either way a table row then measures the loss scale, not the method,
so the comparison shows the balance next to the results and says in words when it is off.

Contract with the trainer (issue 12): every stage run logs MLflow metrics ``train/ratio/<term>``
(``raykd.tracking`` stores them as ``train_ratio_<term>``; both names are read) = weighted term /
weighted reconstruction term, step 0 measured before training, step k = epoch k's mean. Terms:
``kd``, ``out`` for KD stages; ``rec_s``, ``imit`` for the SFT teacher.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from raykd.kinds import RowKind
from raykd.report.cells import table_notes
from raykd.report.records import Setting
from raykd.report.runs import StageRuns
from raykd.report.table_model import MISSING, ReportTable, Section, method_name

DOMINATES = 10.0  # weighted term > 10× reconstruction: the term drives training
VANISHES = 1e-3  # < 1e-3×: the term has no effect on training
PREFIXES = ("train/ratio/", "train_ratio_")
KD_ROWS = [r for r in RowKind if r.is_kd_row]


@dataclass
class TermBalance:
    """Start (first logged step, 0 = before training) and end (last epoch) ratio of one term."""

    run_id: str
    model: str
    seed: str
    term: str
    start: float
    end: float
    start_step: int
    end_step: int

    def problems(self) -> list[str]:
        """Out-of-range ratios in words ('' when the term is balanced at start and end)."""
        out = []
        for when, value in (("start", self.start), ("end", self.end)):
            if value > DOMINATES:
                out.append(f"dominates at the {when} ({value:.3g}×, > {DOMINATES:g}×)")
            elif value < VANISHES:
                out.append(f"vanishes at the {when} ({value:.3g}×, < {VANISHES:g}×)")
        return out

    def sentence(self) -> str:
        seed = f" seed {self.seed}" if self.seed else ""
        what = " and ".join(self.problems())
        term = f"the weighted '{self.term}' term"
        return f"{self.model}{seed}: {term} {what} relative to reconstruction"


def ratio_keys(metrics: dict[str, float]) -> dict[str, str]:
    """``{term: metric key}`` of a run's logged ratio metrics (``train/ratio/`` wins)."""
    out: dict[str, str] = {}
    for prefix in reversed(PREFIXES):
        for key in metrics:
            if key.startswith(prefix) and len(key) > len(prefix):
                out[key[len(prefix) :]] = key
    return dict(sorted(out.items()))


def run_balance(runs: StageRuns, run_id: str, model: str, seed: str) -> list[TermBalance]:
    """Every ratio term of one run ([] when the run logged none)."""
    metrics = runs.client.get_run(run_id).data.metrics
    out = []
    for term, key in ratio_keys(metrics).items():
        hist = [(s, v) for s, v in runs.history(run_id, key) if math.isfinite(v)]
        if hist:
            (s0, v0), (s1, v1) = hist[0], hist[-1]
            out.append(TermBalance(run_id, model, seed, term, v0, v1, s0, s1))
    return out


def _model(row: str, method: str) -> str:
    return "SFT teacher" if row == "sft_teacher" else f"{method_name(method)} {RowKind(row).label}"


def balance_table(
    runs: StageRuns, student_depth: int | None = None, teacher_depth: int | None = None
) -> ReportTable:
    """Start → end ratio of every auxiliary term per KD row (and the SFT teacher), per seed.

    Out-of-range terms are warned about (:class:`~raykd.report.ReportWarning`) and listed in
    ``table.summary`` as sentences; runs without ratio metrics are counted and warned once.
    """
    t_depth = teacher_depth or runs.teacher_depth()
    s_depth = student_depth or runs.student_depth()
    table = ReportTable("Loss balance: weighted auxiliary term / weighted reconstruction term")
    table.notes = table_notes(
        runs,
        "start = before training (step 0), end = mean over the last epoch (MLflow metrics "
        "train/ratio/<term>); terms kd, out (KD stages), imit (SFT teacher's imitation term).",
        f"A term dominates above {DOMINATES:g}× and vanishes below {VANISHES:g}×: such a row "
        "measures the loss scale rather than the distillation method.",
    )
    header = ["Model", "seed", "term", "start", "end", "balance"]
    unlogged: list[str] = []
    for setting in runs.settings():
        rows = []
        items = [("sft_teacher", "")] + [(r, m) for r in KD_ROWS for m in runs.methods()]
        for row, method in items:
            for seed, run in runs.find_seeds(setting, row, method, t_depth, s_depth, True).items():
                model = _model(row, method)
                terms = run_balance(runs, run["run_id"], model, seed)
                if not terms:
                    unlogged.append(f"{setting.label()} {model} seed {seed}")
                    rows.append([model, seed, MISSING, MISSING, MISSING, "no ratio metrics"])
                for t in terms:
                    issues = t.problems()
                    if issues:
                        runs.warn_once(f"loss balance {setting.label()}: {t.sentence()}")
                        table.summary.append(f"{setting.label()}: {t.sentence()}")
                    status = "; ".join(issues) or "ok"
                    rows.append([model, seed, t.term, f"{t.start:.3g}", f"{t.end:.3g}", status])
                    table.records.append(_record(setting, row, method, t, status))
        table.sections.append(Section(setting.label(), header, rows))
    if unlogged:
        runs.warn_once(
            f"loss balance unknown for {len(unlogged)} distillation run(s) without train/ratio "
            f"metrics (trained before ratios were logged?), e.g. {unlogged[0]}"
        )
    return table


def _record(setting: Setting, row: str, method: str, t: TermBalance, status: str) -> dict:
    rec: dict[str, Any] = asdict(t)
    return {
        "dataset": setting.dataset,
        "acceleration": setting.acceleration,
        "row": row,
        "method": method,
        **rec,
        "dominates": t.start > DOMINATES or t.end > DOMINATES,
        "vanishes": t.start < VANISHES or t.end < VANISHES,
        "status": status,
    }


def balance_sentence(table: ReportTable, limit: int = 4) -> str:
    """The summary paragraph's words on balance ('' when every logged term is in range)."""
    bad = [r for r in table.records if r["dominates"] or r["vanishes"]]
    if not bad:
        return ""
    runs = len({r["run_id"] for r in bad})
    items = [s.split(": ", 1)[1] for s in table.summary[:limit]]
    extra = len(table.summary) - limit
    more = f"; and {extra} more (see balance.md)" if extra > 0 else ""
    return (
        f"Loss balance is off in {runs} distillation run(s): {'; '.join(items)}{more}. Results "
        "of those rows reflect the loss scale, not the distillation method."
    )
