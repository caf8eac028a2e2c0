"""Find stage runs in MLflow and fetch what the report needs, following ``tracking/schema.py``.

Sources: one or more experiments (every run tagged ``raykd.role=stage``) or a job run (the
runs its ``stages.json`` artifact lists, which includes reused stages trained by earlier jobs,
plus its stage descendants). Per-volume and per-slice numbers come from the
``eval/eval_<split>.json`` artifacts, not from run metrics: they carry the std over volumes and
the paired per-slice values the Wilcoxon tests need.

The split is chosen once for the whole report (``test`` when every evaluated run has it, else
``val``), so a table never mixes splits; :meth:`StageRuns.split_description` names the volumes
it covers (the tables' headers say whether they are held out).

Seeds are pooled: a setting is one dataset × acceleration block whatever the seeds, and
:meth:`StageRuns.find_seeds` returns one run per seed, so the tables can report the spread over
training seeds instead of one seed's luck.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raykd.errors import RaykdError
from raykd.report import warn
from raykd.tracking import schema as S

PARENT_TAG = "mlflow.parentRunId"
SPLITS = ("test", "val")
METRICS = S.METRICS
# Tag / param keys under which a search job may record its Optuna study (first match wins).
STUDY_STORAGE_KEYS = ("raykd.optuna_storage", "optuna_storage", "optuna.storage", "storage")
STUDY_NAME_KEYS = ("raykd.optuna_study", "optuna_study", "optuna.study", "study_name", "study")
# Rows trained without a teacher: their teacher depth is not part of their identity.
NO_TEACHER_ROWS = ("student", "equal_compute")


@dataclass(frozen=True, order=True)
class Setting:
    """One dataset × acceleration block of the tables (``seed`` restricts it to one seed)."""

    dataset: str
    acceleration: str
    seed: str = ""

    def label(self, with_seed: bool = False) -> str:
        acc = self.acceleration
        # Super-resolution settings are tagged 'sr<scale>' ('sr2' → "SR x2").
        text = f"{self.dataset} SR x{acc[2:]}" if acc.startswith("sr") else f"{self.dataset} {acc}x"
        return f"{text} seed {self.seed}" if with_seed and self.seed else text


def _int_or_none(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def seed_key(value: str) -> tuple[float, str]:
    """Sort key for seed tags: numeric order (9 before 10), untagged/odd ones last."""
    try:
        return float(value), value
    except ValueError:
        return float("inf"), value


def _acc_key(value: str) -> float:
    try:
        return 100 + float(value[2:]) if value.startswith("sr") else float(value)
    except ValueError:
        return float("inf")


def default_root() -> Path:
    """The jobs' run directory: ``$RAYKD_HOME`` or ``~/raykd-runs`` (as the grid/search jobs)."""
    from raykd.paths import default_run_root

    return default_run_root()


def resolve_uri(tracking_uri: str | None, root: str | Path | None = None) -> str:
    """``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<root>/mlflow.db``.

    Unlike :func:`raykd.tracking.default_tracking_uri` this never creates a store: reading a
    store that is not there is a user error, not an empty report.
    """
    import os

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        db = Path(root or default_root()).expanduser().resolve() / "mlflow.db"
        uri = f"sqlite:///{db}"
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.is_file():
            raise RaykdError(
                f"no MLflow store at {db} (tracking URI {uri}); pass --tracking-uri or set "
                "MLFLOW_TRACKING_URI to the store the runs were logged to"
            )
    return uri


def make_client(tracking_uri: str):
    """An ``MlflowClient`` with unreachable stores turned into a clear RaykdError."""
    import os

    from mlflow.tracking import MlflowClient

    # One progress bar per downloaded JSON would bury the report's own output.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as exc:  # MLflow raises many types for broken stores
        raise RaykdError(
            f"MLflow tracking store {tracking_uri} cannot be read ({type(exc).__name__}: "
            f"{str(exc)[:300]})"
        ) from exc
    return client


def resolve_experiments(client, experiments: list[str]) -> list[str]:
    """Experiment names (or numeric ids) → ids; unknown ones are an error listing what exists."""
    ids = []
    for name in experiments:
        exp = client.get_experiment_by_name(name)
        if exp is None and name.isdigit():
            try:
                exp = client.get_experiment(name)
            except Exception:
                exp = None
        if exp is None or exp.lifecycle_stage == "deleted":
            known = sorted(e.name for e in client.search_experiments())
            raise RaykdError(f"experiment '{name}' not found in the MLflow store; known: {known}")
        ids.append(exp.experiment_id)
    return ids


def search_all(client, experiment_ids: list[str], filter_string: str) -> list:
    """Every matching run (MLflow pages results)."""
    runs, token = [], None
    while True:
        page = client.search_runs(
            experiment_ids, filter_string=filter_string, max_results=1000, page_token=token
        )
        runs.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return runs


def _descendants(client, run, depth: int = 3) -> list:
    """Child runs up to ``depth`` levels (search job → trial → stage)."""
    out, frontier = [], [run]
    for _ in range(depth):
        nxt = []
        for parent in frontier:
            nxt.extend(
                search_all(
                    client,
                    [parent.info.experiment_id],
                    f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'",
                )
            )
        out.extend(nxt)
        frontier = nxt
        if not frontier:
            break
    return out


def _best_trial_only(client, job, runs: dict[str, Any]) -> dict[str, Any]:
    """A search job's tables: its best trial's stage runs and the teachers *they* learned from
    (lineage), never a teacher another trial trained with other weights."""
    tags = job.data.tags
    if not any(tags.get(k) for k in STUDY_NAME_KEYS) or not tags.get("raykd.best_run_id"):
        return runs
    try:
        trial = client.get_run(tags["raykd.best_run_id"])
    except Exception:
        return runs
    todo = [r for r in trial.data.tags.get("raykd.kd_run_id", "").split(",") if r]
    keep: dict[str, Any] = {}
    while todo:
        run_id = todo.pop()
        if run_id in keep:
            continue
        try:
            keep[run_id] = runs.get(run_id) or client.get_run(run_id)
        except Exception:
            continue
        if teacher := keep[run_id].data.tags.get(S.TAG_TEACHER_RUN):
            todo.append(teacher)
    if not keep:
        return runs
    warn(
        f"search job {job.info.run_id}: tables show its best trial ({trial.info.run_name}) "
        "with the teacher runs it learned from; every trial is in the Optuna figures"
    )
    return keep


def _stages_json(client, run_id: str, tmp: Path) -> list[dict[str, Any]]:
    """Entries of a job run's stage list: ``stages.json`` (schema) or the job summary
    ``<job>-<id>-stages.json`` (``{"rows": [{"mlflow_run_id": ...}, ...]}``); [] if none.

    Each entry gets a ``run_id`` (None for a row that failed before it had a run).
    """
    names = [f.path for f in client.list_artifacts(run_id) if f.path.endswith("stages.json")]
    entries: list[dict[str, Any]] = []
    for name in names:
        path = Path(client.download_artifacts(run_id, name, str(tmp)))
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise RaykdError(f"run {run_id}: {name} is not valid JSON ({exc})") from exc
        if isinstance(data, dict):
            data = data.get("stages", data.get("rows", []))
        if not isinstance(data, list):
            raise RaykdError(f"run {run_id}: {name} must hold a list of {{'run_id': ...}}")
        for d in data:
            if isinstance(d, dict):
                entries.append({**d, "run_id": d.get("run_id") or d.get("mlflow_run_id")})
    return entries


def _row_of(run) -> dict[str, Any]:
    """One tidy record of a stage run from its tags and params (tags win, params fill in)."""
    tags, params = run.data.tags, run.data.params
    kind = tags.get(S.TAG_KIND) or params.get("kind", "")
    row = tags.get(S.TAG_ROW) or (
        S.stage_row(kind) if kind in ("teacher", "sft", "student") else ""
    )
    dataset = tags.get(S.TAG_DATASET) or Path(params.get("data.source", "unknown")).name
    acc = tags.get(S.TAG_ACCELERATION) or params.get("data.mask.acceleration", "")
    acc = f"{float(acc):g}" if _int_or_none(acc) is not None else (acc or "?")
    t_depth = tags.get(S.TAG_TEACHER_DEPTH) or (
        params.get("teacher.depth", "") if kind != "student" else ""
    )
    s_depth = tags.get(S.TAG_STUDENT_DEPTH) or (
        params.get("student.depth", "") if kind != "teacher" else ""
    )
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "experiment_id": run.info.experiment_id,
        "status": run.info.status,
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
        "parent_run_id": tags.get(PARENT_TAG, ""),
        "stage_id": tags.get(S.TAG_STAGE_ID, ""),
        "kind": kind,
        "row": row,
        "method": (tags.get(S.TAG_METHOD) or "").lower(),
        "init": tags.get(S.TAG_INIT, ""),
        "dataset": dataset,
        "acceleration": acc,
        "seed": tags.get(S.TAG_SEED) or params.get("seed", ""),
        "teacher_depth": _int_or_none(t_depth),
        "student_depth": _int_or_none(s_depth),
        "teacher_cascades": _int_or_none(params.get("teacher.cascades")),
        "teacher_channels": _int_or_none(params.get("teacher.channels")),
        "student_cascades": _int_or_none(params.get("student.cascades")),
        "student_channels": _int_or_none(params.get("student.channels")),
        "teacher_arch": params.get("teacher.arch") or "dccnn",
        "student_arch": params.get("student.arch") or "dccnn",
        "teacher_run_id": tags.get(S.TAG_TEACHER_RUN, ""),
    }


def volume_summary(report: dict[str, Any], metric: str) -> tuple[float, float, int]:
    """Mean ± sample std (ddof=1, as :func:`raykd.metrics.summarise`) over volumes, and n."""
    # null = undefined for that volume (strict-JSON NaN) and left out; a missing key is an error
    values = [v["metrics"][metric] for v in report["volumes"]]
    vals = np.array([float(x) for x in values if x is not None], dtype=np.float64)
    if vals.size == 0:
        return float("nan"), float("nan"), 0
    with np.errstate(invalid="ignore"):
        std = float(np.std(vals, ddof=1)) if vals.size > 1 else 0.0
    return float(np.mean(vals)), std, int(vals.size)


class StageRuns:
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
        self.client = client
        self.source = source
        self.experiment_ids = experiment_ids
        self.job_runs = job_runs or []
        self._tmp = tempfile.TemporaryDirectory(prefix="raykd-report-")
        self.cache = Path(cache_dir) if cache_dir else Path(self._tmp.name)
        self.cache.mkdir(parents=True, exist_ok=True)
        self._evals: dict[tuple[str, str], dict[str, Any] | None] = {}
        self._zf: dict[tuple[str, str], dict[str, Any] | None] = {}
        self._warned: set[str] = set()
        records = [_row_of(r) for r in runs]
        self.frame = pd.DataFrame.from_records(records)
        self.available = {r.info.run_id: self._eval_splits(r.info.run_id) for r in runs}
        self.split = split or self._pick_split()
        self._add_metrics()

    # ---- construction helpers -------------------------------------------------------------
    def _eval_splits(self, run_id: str) -> set[str]:
        try:
            files = self.client.list_artifacts(run_id, "eval")
        except Exception:
            return set()
        found = set()
        for f in files:
            name = Path(f.path).name
            if name.startswith("eval_") and name.endswith(".json"):
                found.add(name[len("eval_") : -len(".json")])
        return found

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

    def warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            warn(message)

    # ---- artifacts -----------------------------------------------------------------------
    def _download(self, run_id: str, path: str) -> Path | None:
        dst = self.cache / run_id
        local = dst / path
        if local.is_file():
            return local
        dst.mkdir(parents=True, exist_ok=True)
        try:
            return Path(self.client.download_artifacts(run_id, path, str(dst)))
        except Exception:
            return None

    def eval(
        self, run_id: str, quiet: bool = False, split: str | None = None
    ) -> dict[str, Any] | None:
        """The run's ``eval/eval_<split>.json`` (None, with a warning, when it is missing).

        ``split`` defaults to the report's split; another one is only read for checks (e.g.
        that test volumes were not the validation volumes used for model selection).
        """
        split = split or self.split
        key = (run_id, split)
        if key not in self._evals:
            report = None
            if split in self.available.get(run_id, set()):
                path = self._download(run_id, f"eval/eval_{split}.json")
                if path is not None:
                    try:
                        report = json.loads(path.read_text())
                    except json.JSONDecodeError as exc:
                        self.warn_once(f"run {run_id}: eval_{split}.json unreadable ({exc})")
                if report is not None and not isinstance(report.get("volumes"), list):
                    self.warn_once(f"run {run_id}: eval_{split}.json has no 'volumes' list")
                    report = None
            self._evals[key] = report
        report = self._evals[key]
        if report is None and not quiet:
            self.warn_once(
                f"run {run_id} ({self.describe(run_id)}): no eval/eval_{split}.json "
                "artifact; its numbers are reported as missing"
            )
        return report

    def examples(self, run_id: str) -> dict[str, np.ndarray] | None:
        """The run's example reconstructions (``examples/<split>_examples.npz``, else val's)."""
        for split in dict.fromkeys([self.split, "val"]):
            path = self._download(run_id, f"examples/{split}_examples.npz")
            if path is not None:
                with np.load(path, allow_pickle=False) as data:
                    return {k: data[k] for k in data.files}
        self.warn_once(f"run {run_id} ({self.describe(run_id)}): no example reconstructions")
        return None

    def history(self, run_id: str, key: str = "val_loss") -> list[tuple[int, float]]:
        """Per-epoch values of a metric, sorted by step."""
        hist = self.client.get_metric_history(run_id, key)
        return sorted((int(m.step), float(m.value)) for m in hist)

    def run_config(self, run_id: str) -> dict[str, Any] | None:
        """The stage config: the ``config.yaml`` artifact, else rebuilt from the run params."""
        from raykd.train.config import yaml_load

        path = self._download(run_id, "config.yaml")
        if path is not None:
            data = yaml_load(path.read_text())
            if isinstance(data, dict):
                return data
        params = self.client.get_run(run_id).data.params
        if not params:
            return None
        tree: dict[str, Any] = {}
        for key, text in params.items():
            value = None if text == "None" else yaml_load(text)
            node = tree
            *parents, leaf = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        return tree

    # ---- lookup -------------------------------------------------------------------------------
    def describe(self, run_id: str) -> str:
        hit = self.frame[self.frame["run_id"] == run_id]
        if hit.empty:
            return "unknown run"
        r = hit.iloc[0]
        method = f" {r['method']}" if r["method"] else ""
        return f"{Setting(r['dataset'], r['acceleration']).label()} {r['row']}{method}"

    def settings(self) -> list[Setting]:
        """Dataset × acceleration blocks, sorted; seeds are pooled inside a block."""
        keys = {Setting(r["dataset"], r["acceleration"]) for _, r in self.frame.iterrows()}
        return sorted(keys, key=lambda s: (s.dataset, _acc_key(s.acceleration)))

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

    def _selection_overlap(self, setting: Setting | None = None) -> list[str]:
        """Test volumes that some run also validated on (so they chose its best checkpoint)."""
        frame = self.frame if setting is None else self.in_setting(setting)
        test = set(self.split_volumes(setting))
        overlap: set[str] = set()
        for run_id in frame["run_id"]:
            val = self.eval(run_id, quiet=True, split="val")
            if val is not None:
                overlap |= test & {str(v.get("volume", "?")) for v in val["volumes"]}
        return sorted(overlap)

    def split_description(self) -> str:
        """The sentence a table header uses to say which volumes its numbers come from.

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
        if setting.seed:
            mask &= f["seed"] == setting.seed
        return f[mask]

    def methods(self) -> list[str]:
        """Every KD method that appears in any setting (so a gap shows as missing, not absent)."""
        kd = self.frame[self.frame["row"].isin(["std_kd", "sft_kd", "sft_kd_random"])]
        return sorted(m for m in kd["method"].unique() if m)

    def teacher_depth(self) -> int | None:
        """The teacher depth of the tables: 5 (the paper's D5C5) if present, else most common."""
        return _preferred(self.frame["teacher_depth"], 5)

    def student_depth(self) -> int | None:
        """Table 1's student depth: 3 (the paper's D3C5) if present, else the most common."""
        students = self.frame[self.frame["kind"].isin(["student", "kd"])]
        return _preferred(students["student_depth"], 3)

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
        if row in ("std_kd", "sft_kd", "sft_kd_random"):
            f = f[f["method"] == method]
        if row not in NO_TEACHER_ROWS and teacher_depth is not None:
            f = f[f["teacher_depth"] == teacher_depth]
        if row != "teacher" and student_depth is not None:
            f = f[f["student_depth"] == student_depth]
        what = _cell_name(setting, row, method, teacher_depth, student_depth)
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
            what = _cell_name(setting, row, method, teacher_depth, student_depth)
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
        """Zero-filled metrics in the eval-JSON format, recomputed from the volume files.

        Volumes and slices come from an eval JSON of the setting; size, mask and slice subset
        from that run's logged config. Cached per dataset × acceleration. Missing volume files
        make zero-filled missing (with a warning), never zero.
        """
        key = (setting.dataset, setting.acceleration)
        if key not in self._zf:
            self._zf[key] = self._compute_zero_filled(setting)
        return self._zf[key]

    def _compute_zero_filled(self, setting: Setting) -> dict[str, Any] | None:
        from raykd.data.dataset import SliceDataset
        from raykd.data.sources import build_mask, build_sr_mask
        from raykd.train.config import DataConfig
        from raykd.train.evaluate import evaluate_model

        label = setting.label()
        candidates = self.in_setting(setting)
        candidates = candidates[candidates["status"] == "FINISHED"]
        order = {"teacher": 0, "student": 1, "sft_teacher": 2}
        candidates = candidates.assign(
            _o=candidates["row"].map(lambda r: order.get(r, 3))
        ).sort_values("_o")
        for run_id in candidates["run_id"]:
            report = self.eval(run_id, quiet=True)
            if report is None:
                continue
            cfg = self.run_config(run_id)
            if not cfg or "data" not in cfg:
                continue
            paths = [Path(v["path"]) for v in report["volumes"]]
            gone = [str(p) for p in paths if not p.is_file()]
            if gone:
                self.warn_once(
                    f"zero-filled for {label}: volume files no longer exist ({gone[:3]}); "
                    "zero-filled is reported as missing"
                )
                return None
            try:
                data = DataConfig.model_validate(cfg["data"])
                mask = build_mask(data.mask) if data.sr is None else build_sr_mask(data.sr)
                dataset = SliceDataset(
                    paths, data.size, mask, max_slices=data.max_slices_per_volume, sr=data.sr
                )
                expected = [list(map(int, v["slices"])) for v in report["volumes"]]
                got = [list(v.slice_ids) for v in dataset.volumes]
                if expected != got:
                    self.warn_once(
                        f"zero-filled for {label}: the volume files no longer give the "
                        "evaluated slices; zero-filled is reported as missing"
                    )
                    return None
                return evaluate_model(None, dataset, progress=False)
            except Exception as exc:  # config of another version, unreadable volume, ...
                self.warn_once(
                    f"zero-filled for {label}: cannot be recomputed ({type(exc).__name__}: "
                    f"{str(exc)[:200]}); reported as missing"
                )
                return None
        self.warn_once(
            f"zero-filled for {label}: no finished run with an eval JSON and a logged config; "
            "reported as missing"
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

    def close(self) -> None:
        """Delete the downloaded artifacts."""
        self._tmp.cleanup()

    def __enter__(self) -> StageRuns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _preferred(values: pd.Series, default: int) -> int | None:
    vals = [int(v) for v in values.dropna()]
    if not vals:
        return None
    return default if default in vals else Counter(vals).most_common(1)[0][0]


def _cell_name(
    setting: Setting, row: str, method: str, t_depth: int | None, s_depth: int | None
) -> str:
    parts = [setting.label(with_seed=True), row]
    if method:
        parts.append(method)
    if t_depth is not None and row not in NO_TEACHER_ROWS:
        parts.append(f"teacher D{t_depth}")
    if s_depth is not None and row != "teacher":
        parts.append(f"student D{s_depth}")
    return " ".join(parts)


def collect(
    tracking_uri: str,
    experiments: list[str] | None = None,
    parent_run_id: str | None = None,
    split: str | None = None,
    cache_dir: str | Path | None = None,
) -> StageRuns:
    """Stage runs of ``experiments`` (names or ids) or of the job run ``parent_run_id``."""
    if split is not None and split not in SPLITS:
        raise RaykdError(f"split '{split}': expected one of {SPLITS}")
    client = make_client(tracking_uri)
    if not experiments and not parent_run_id:
        with_stages = sorted(
            {
                e.name
                for e in client.search_experiments()
                if search_all(client, [e.experiment_id], f"tags.`{S.TAG_ROLE}` = 'stage'")
            }
        )
        raise RaykdError(
            "compare: give at least one --experiment or a --parent-run; experiments with "
            f"stage runs in {tracking_uri}: {with_stages or 'none'}"
        )
    runs: dict[str, Any] = {}
    job_runs = []
    exp_ids: list[str] = []
    if experiments:
        exp_ids = resolve_experiments(client, list(experiments))
        for run in search_all(client, exp_ids, f"tags.`{S.TAG_ROLE}` = 'stage'"):
            runs[run.info.run_id] = run
        job_runs = search_all(client, exp_ids, f"tags.`{S.TAG_ROLE}` = 'job'")
    if parent_run_id:
        try:
            parent = client.get_run(parent_run_id)
        except Exception as exc:
            raise RaykdError(f"parent run '{parent_run_id}' not found in {tracking_uri}") from exc
        job_runs.append(parent)
        if parent.info.experiment_id not in exp_ids:
            exp_ids.append(parent.info.experiment_id)
        with tempfile.TemporaryDirectory() as tmp:
            listed = _stages_json(client, parent_run_id, Path(tmp))
        # A search trial's entry names the stage runs it trained (its trial run is not one).
        listed = [{"run_id": rid} for e in listed for rid in e.get("stage_run_ids") or []] + [
            e for e in listed if not e.get("stage_run_ids")
        ]
        for entry in listed:
            if not entry["run_id"]:
                label = entry.get("label") or entry.get("row") or "?"
                if entry.get("stopped"):  # early stopping is a result, not a failure
                    warn(f"job {parent_run_id}: {label} was {entry['stopped']}")
                    continue
                why = f": {entry['error'][:200]}" if entry.get("error") else ""
                warn(f"job {parent_run_id}: row {label} has no stage run (it failed{why})")
                continue
            try:
                run = client.get_run(entry["run_id"])
            except Exception:
                warn(
                    f"stages.json of {parent_run_id} lists run {entry['run_id']}, which is not "
                    "in the store; its numbers are reported as missing"
                )
                continue
            runs[run.info.run_id] = run
        for run in _descendants(client, parent):
            if run.data.tags.get(S.TAG_ROLE) == "stage":
                runs[run.info.run_id] = run
            elif run.data.tags.get(S.TAG_ROLE) == "job":
                job_runs.append(run)
        runs = _best_trial_only(client, parent, runs)
    if not runs:
        where = f"experiments {experiments}" if experiments else f"job run {parent_run_id}"
        raise RaykdError(
            f"no stage runs (tag {S.TAG_ROLE}=stage) found in {where}; is this the experiment "
            "a grid job logged to?"
        )
    source = ", ".join(experiments or []) or f"run {parent_run_id}"
    return StageRuns(client, list(runs.values()), source, exp_ids, split, job_runs, cache_dir)
