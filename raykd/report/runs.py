"""The stage runs of one report: a tidy frame, the split choice, seed pooling and cell lookup.

The split is chosen once for the whole report (``test`` when every evaluated run has it, else
``val``), so a table never mixes splits; :meth:`StageRuns.split_description` names the volumes
it covers (the tables' headers say whether they are held out).

Seeds are pooled: a setting is one dataset × acceleration block whatever the seeds, and
:meth:`StageRuns.find_seeds` returns one run per seed, so the tables can report the spread over
training seeds instead of one seed's luck.

Cross-validation folds (``raykd.fold``) make each (fold, seed) a replicate keyed
``"<fold>/<seed>"`` in the ``seed`` column (the tag's own value stays in ``seed_tag``); budget
scales (``raykd.budget``) split settings (see :mod:`raykd.report.folds`).

The zero-filled baseline is read, never computed: every stage logs the zero-filled input's
report of its split in its eval JSON (``zero_filled``, :data:`raykd.tracking.schema
.EVAL_ZERO_FILLED`); :meth:`StageRuns.zero_filled` takes it from any run of the setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raykd.kinds import RowKind
from raykd.report import warn
from raykd.report.artifacts import ArtifactReader
from raykd.report.folds import merge_fold_reports, unit_key
from raykd.report.records import (
    KD_ROWS,
    METRICS,
    NO_TEACHER_ROWS,
    Setting,
    acc_key,
    cell_name,
    preferred,
    row_of,
    seed_key,
    volume_summary,
)
from raykd.report.store import search_all
from raykd.tracking import schema as S

# Tag / param keys under which a search job may record its Optuna study (first match wins).
STUDY_STORAGE_KEYS = ("raykd.optuna_storage", "optuna_storage", "optuna.storage", "storage")
STUDY_NAME_KEYS = ("raykd.optuna_study", "optuna_study", "optuna.study", "study_name", "study")


class StageRuns(ArtifactReader):
    """Stage runs of one report: a tidy frame plus lazily downloaded artifacts."""

    def __init__(
        self,
        client,
        runs: list,
        source: str,
        experiment_ids: list[str],
        split: str | None = None,
        job_runs: list | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__(client, cache_dir)
        self.source = source
        self.experiment_ids = experiment_ids
        self.job_runs = job_runs or []
        self._zf: dict[tuple[str, ...], dict[str, Any] | None] = {}
        self.frame = pd.DataFrame.from_records([row_of(r) for r in runs])
        self._replicates()
        self.available = {r.info.run_id: self.eval_splits(r.info.run_id) for r in runs}
        self.split = split or self._pick_split()
        self._add_metrics()

    def _replicates(self) -> None:
        """Fold runs: replicate key fold/seed; budgets: "" unless the store has a budget study."""
        f = self.frame
        f["seed_tag"] = f["seed"]
        if (f["fold"] != "").any():
            if (f["fold"] == "").any():
                warn(
                    "some stage runs carry raykd.fold and some do not; the latter are "
                    "replicates of their own (no fold) and pair only with each other"
                )
            f["seed"] = [unit_key(k, s) for k, s in zip(f["fold"], f["seed_tag"], strict=True)]
        if set(f["budget"]) == {"1"}:
            f["budget"] = ""

    def _pick_split(self) -> str:
        with_eval = [s for s in self.available.values() if s]
        if with_eval and all("test" in s for s in with_eval):
            return "test"
        if any("test" in s for s in with_eval):
            warn(
                "some runs have eval_test.json but not all; the tables use the validation "
                "split (eval_val.json) so that every row is on the same volumes"
            )
        return "val"

    def _add_metrics(self) -> None:
        for metric in METRICS:
            self.frame[f"{metric}_mean"] = np.nan
            self.frame[f"{metric}_std"] = np.nan
        self.frame["n_volumes"] = 0
        self.frame["split"] = self.split
        for i, run_id in enumerate(self.frame["run_id"]):
            report = self.eval(run_id, quiet=True)
            if report is None:
                continue
            self.frame.loc[i, "n_volumes"] = len(report["volumes"])
            for metric in METRICS:
                if all(metric in v["metrics"] for v in report["volumes"]):
                    mean, std, _ = volume_summary(report, metric)
                    self.frame.loc[i, f"{metric}_mean"] = mean
                    self.frame.loc[i, f"{metric}_std"] = std

    # ---- lookup -------------------------------------------------------------------------------
    def describe(self, run_id: str) -> str:
        hit = self.frame[self.frame["run_id"] == run_id]
        if hit.empty:
            return "unknown run"
        r = hit.iloc[0]
        method = f" {r['method']}" if r["method"] else ""
        return f"{Setting(r['dataset'], r['acceleration']).label()} {r['row']}{method}"

    def settings(self) -> list[Setting]:
        """Dataset × acceleration (× budget) blocks, sorted; seeds are pooled inside a block."""
        keys = {
            Setting(r["dataset"], r["acceleration"], budget=r["budget"])
            for _, r in self.frame.iterrows()
        }
        return sorted(
            keys, key=lambda s: (s.dataset, acc_key(s.acceleration), float(s.budget or 1))
        )

    def seeds(self, setting: Setting) -> list[str]:
        """Seeds with any stage run (finished or not) in the setting, numeric order.

        Failed seeds count: a row that lacks a seed another row has is then reported as
        incomplete instead of the seed silently vanishing from the pooled numbers.
        """
        if setting.seed:
            return [setting.seed]
        return sorted(set(self.in_setting(setting)["seed"]), key=seed_key)

    def multi_seed(self, setting: Setting) -> bool:
        return len(self.seeds(setting)) > 1

    def split_volumes(self, setting: Setting | None = None) -> list[str]:
        """Volume names of the report's split, from the eval JSONs of the (setting's) runs."""
        frame = self.frame if setting is None else self.in_setting(setting)
        names: set[str] = set()
        for run_id in frame["run_id"]:
            report = self.eval(run_id, quiet=True)
            if report is not None:
                names.update(str(v.get("volume", "?")) for v in report["volumes"])
        return sorted(names)

    def split_slices(self, setting: Setting | None = None) -> str:
        """How many slices each run's numbers average over, e.g. ``4 slices`` (a job
        with ``max_slices_per_volume`` evaluates a subset; ``raykd evaluate`` all of them)."""
        frame = self.frame if setting is None else self.in_setting(setting)
        counts: set[int] = set()
        for run_id in frame["run_id"]:
            report = self.eval(run_id, quiet=True)
            if report is not None:
                counts.add(sum(len(v.get("slices") or []) for v in report["volumes"]))
        if not counts:
            return "slices not recorded"
        if len(counts) == 1:
            n = counts.pop()
            return f"{n} slice{'' if n == 1 else 's'}"
        return f"{min(counts)} to {max(counts)} slices (runs differ)"

    def _selection_overlap(self, setting: Setting | None = None) -> list[str]:
        """Test volumes that some run also validated on (so they chose its best checkpoint)."""
        frame = self.frame if setting is None else self.in_setting(setting)
        overlap: set[str] = set()
        for _, fold in frame.groupby("fold"):  # a fold tests and selects on its own subjects
            test: set[str] = set()
            for run_id in fold["run_id"]:
                report = self.eval(run_id, quiet=True)
                test |= {str(v.get("volume", "?")) for v in (report or {}).get("volumes", [])}
            for run_id in fold["run_id"]:
                val = self.eval(run_id, quiet=True, split="val")
                if val is not None:
                    overlap |= test & {str(v.get("volume", "?")) for v in val["volumes"]}
        return sorted(overlap)

    def split_description(self) -> str:
        """What a table header says its numbers come from: split, volumes, slices per run."""
        return f"{self._split_sentence()} Each run's numbers average {self.split_slices()}."

    def _split_sentence(self) -> str:
        """The sentence that says which volumes the numbers come from.

        Test volumes are disjoint from training volumes by construction (the data split refuses
        an overlap); that they were not validation volumes — used to pick the best checkpoint —
        is checked here against the runs' ``eval_val.json``, and a violation is said loudly.
        """
        per_setting = {s.label(): self.split_volumes(s) for s in self.settings()}
        groups = {tuple(v) for v in per_setting.values()}
        if len(groups) <= 1:
            names = ", ".join(self.split_volumes()) or "none recorded"
        else:
            names = "; ".join(f"{k}: {', '.join(v) or 'none'}" for k, v in per_setting.items())
        if self.split != "test":
            return (
                f"Split: validation (eval_val.json), volumes {names}; these volumes also chose "
                "each run's best checkpoint, so the numbers are not a held-out test."
            )
        overlap = self._selection_overlap()
        if overlap:
            self.warn_once(
                f"test volumes {overlap} are also validation volumes of some runs (they chose "
                "the best checkpoint); the test numbers are not held out"
            )
            return (
                f"Split: test (eval_test.json), volumes {names}; NOT held out: "
                f"{', '.join(overlap)} also served as validation volumes for model selection."
            )
        return (
            f"Split: test (eval_test.json) — computed on held-out test volumes {names} never "
            "used for training or model selection."
        )

    def in_setting(self, setting: Setting) -> pd.DataFrame:
        f = self.frame
        mask = (f["dataset"] == setting.dataset) & (f["acceleration"] == setting.acceleration)
        mask &= f["budget"] == setting.budget
        if setting.seed:
            mask &= f["seed"] == setting.seed
        return f[mask]

    def methods(self) -> list[str]:
        """Every KD method that appears in any setting (so a gap shows as missing, not absent)."""
        kd = self.frame[self.frame["row"].isin(KD_ROWS)]
        return sorted(m for m in kd["method"].unique() if m)

    def teacher_depth(self) -> int | None:
        """The teacher depth of the tables: 5 (the paper's D5C5) if present, else most common."""
        return preferred(self.frame["teacher_depth"], 5)

    def student_depth(self) -> int | None:
        """Table 1's student depth: 3 (the paper's D3C5) if present, else the most common."""
        students = self.frame[self.frame["kind"].isin(["student", "kd"])]
        return preferred(students["student_depth"], 3)

    def student_depths(self) -> list[int]:
        students = self.frame[self.frame["kind"].isin(["student", "kd"])]
        return sorted({int(d) for d in students["student_depth"].dropna()}, reverse=True)

    def find(
        self,
        setting: Setting,
        row: str,
        method: str = "",
        teacher_depth: int | None = None,
        student_depth: int | None = None,
        quiet: bool = False,
        seed: str | None = None,
    ) -> pd.Series | None:
        """The finished run for one table cell, or None with a warning (never a silent gap).

        ``seed`` picks one seed; without it a setting that spans several seeds gives its first
        seed's run (a representative, e.g. for figures); tables use :meth:`find_seeds`.
        """
        if seed is None and not setting.seed:
            seeds = self.seeds(setting)
            seed = seeds[0] if len(seeds) > 1 else None
        f = self.in_setting(setting)
        if seed is not None:  # filtered here: an untagged seed ("") must not mean "all seeds"
            f = f[f["seed"] == seed]
            setting = Setting(setting.dataset, setting.acceleration, seed or "untagged")
        f = f[f["row"] == row]
        if row in KD_ROWS:
            f = f[f["method"] == method]
        if row not in NO_TEACHER_ROWS and teacher_depth is not None:
            f = f[f["teacher_depth"] == teacher_depth]
        if row != "teacher" and student_depth is not None:
            f = f[f["student_depth"] == student_depth]
        what = cell_name(setting, row, method, teacher_depth, student_depth)
        finished = f[f["status"] == "FINISHED"]
        if finished.empty:
            if not quiet:
                states = ", ".join(sorted(set(f["status"])))
                extra = f" (runs exist but are {states})" if states else ""
                self.warn_once(f"missing run: {what}{extra}; shown as —")
            return None
        if len(finished) > 1:
            finished = finished.sort_values("end_time")
            self.warn_once(
                f"{len(finished)} finished runs for {what}; using the latest "
                f"({finished.iloc[-1]['run_id']})"
            )
        return finished.iloc[-1]

    def find_seeds(
        self,
        setting: Setting,
        row: str,
        method: str = "",
        teacher_depth: int | None = None,
        student_depth: int | None = None,
        quiet: bool = False,
    ) -> dict[str, pd.Series]:
        """``{seed: run}`` of one table cell over the setting's seeds.

        A seed without a finished run is left out with a warning naming it (and, when no seed
        has one, the single-seed "missing run" warning), so pooled numbers say what they omit.
        """
        seeds = self.seeds(setting)
        if len(seeds) <= 1:
            run = self.find(setting, row, method, teacher_depth, student_depth, quiet)
            return {} if run is None else {str(run["seed"]): run}
        found = {}
        for seed in seeds:
            run = self.find(setting, row, method, teacher_depth, student_depth, True, seed)
            if run is not None:
                found[seed] = run
        lacking = [s for s in seeds if s not in found]
        if lacking and not quiet:
            what = cell_name(setting, row, method, teacher_depth, student_depth)
            if not found:
                self.warn_once(f"missing run: {what} (no finished run for any seed); shown as —")
            else:
                self.warn_once(
                    f"missing run: {what} for seed(s) {', '.join(lacking)} of "
                    f"{', '.join(seeds)}; its numbers pool the other seeds (marked ‡)"
                )
        return found

    # ---- zero-filled -------------------------------------------------------------------------
    def zero_filled(self, setting: Setting) -> dict[str, Any] | None:
        """The zero-filled input's report (eval-JSON format) on the report's split, as a stage
        of the setting logged it when it finished; cached per dataset × acceleration.

        Runs finished before stages logged it have none: zero-filled is then missing, with one
        warning saying why (it is never recomputed here).
        """
        key = (setting.dataset, setting.acceleration, setting.budget)
        if key not in self._zf:
            self._zf[key] = self._logged_zero_filled(setting)
        return self._zf[key]

    def _logged_zero_filled(self, setting: Setting) -> dict[str, Any] | None:
        candidates = self.in_setting(setting)
        candidates = candidates[candidates["status"] == "FINISHED"]
        order = {RowKind.TEACHER: 0, RowKind.STUDENT: 1, RowKind.SFT_TEACHER: 2}
        candidates = candidates.assign(
            _o=candidates["row"].map(lambda r: order.get(r, 3))
        ).sort_values("_o", kind="stable")
        per_fold: dict[str, dict[str, Any]] = {}  # folds test different subjects: merge them
        for run_id, fold in zip(candidates["run_id"], candidates["fold"], strict=True):
            report = self.eval(run_id, quiet=True)
            zf = None if report is None else report.get(S.EVAL_ZERO_FILLED)
            if isinstance(zf, dict) and isinstance(zf.get("volumes"), list):
                per_fold.setdefault(fold, zf)
        if len(per_fold) == 1:
            return next(iter(per_fold.values()))
        if per_fold:
            return merge_fold_reports(per_fold)
        self.warn_once(
            f"zero-filled for {setting.label()}: no stage run of this setting logged zero-filled "
            f"metrics for the {self.split} split (runs finished before stages logged them at "
            "stage finish); reported as missing"
        )
        return None

    # ---- searches ----------------------------------------------------------------------------
    def study(self) -> tuple[str, str] | None:
        """(storage URL, study name) of an Optuna search recorded on a job run, if any."""
        for run in self.job_runs:
            meta = {**run.data.params, **run.data.tags}
            storage = next((meta[k] for k in STUDY_STORAGE_KEYS if meta.get(k)), None)
            name = next((meta[k] for k in STUDY_NAME_KEYS if meta.get(k)), None)
            if storage and name:
                return storage, name
        return None

    def trial_runs(self) -> list:
        ids = self.experiment_ids
        return search_all(self.client, ids, f"tags.`{S.TAG_ROLE}` = 'trial'") if ids else []

    def __enter__(self) -> StageRuns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
