"""Which stage runs a report reads: those of experiments, or those a job run lists.

Sources: one or more experiments (every run tagged ``raykd.role=stage``) or a job run (the
runs its ``stages.json`` artifact lists, which includes reused stages trained by earlier jobs,
plus its stage descendants; a search job's tables keep its best trial and that trial's
teachers). The runs found become a :class:`~raykd.report.runs.StageRuns`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from raykd.errors import RaykdError
from raykd.report import warn
from raykd.report.records import SPLITS
from raykd.report.runs import STUDY_NAME_KEYS, StageRuns
from raykd.report.store import PARENT_TAG, make_client, resolve_experiments, search_all
from raykd.tracking import schema as S


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
        _refuse_no_selection(client, tracking_uri)
    runs: dict[str, Any] = {}
    job_runs = []
    exp_ids: list[str] = []
    if experiments:
        exp_ids = resolve_experiments(client, list(experiments))
        for run in search_all(client, exp_ids, f"tags.`{S.TAG_ROLE}` = 'stage'"):
            runs[run.info.run_id] = run
        job_runs = search_all(client, exp_ids, f"tags.`{S.TAG_ROLE}` = 'job'")
    if parent_run_id:
        parent, of_job, jobs = _job_runs(client, tracking_uri, parent_run_id)
        job_runs += jobs
        if parent.info.experiment_id not in exp_ids:
            exp_ids.append(parent.info.experiment_id)
        runs = _best_trial_only(client, parent, {**runs, **of_job})
    if not runs:
        where = f"experiments {experiments}" if experiments else f"job run {parent_run_id}"
        raise RaykdError(
            f"no stage runs (tag {S.TAG_ROLE}=stage) found in {where}; is this the experiment "
            "a grid job logged to?"
        )
    source = ", ".join(experiments or []) or f"run {parent_run_id}"
    return StageRuns(client, list(runs.values()), source, exp_ids, split, job_runs, cache_dir)


def _refuse_no_selection(client, tracking_uri: str) -> None:
    """No experiment and no job run given: say which experiments hold stage runs."""
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


def _job_runs(client, tracking_uri: str, parent_run_id: str) -> tuple[Any, dict[str, Any], list]:
    """(the job run, its stage runs by id, the job runs under it): the runs its stages.json
    lists and every stage run below it in the run tree."""
    try:
        parent = client.get_run(parent_run_id)
    except Exception as exc:
        raise RaykdError(f"parent run '{parent_run_id}' not found in {tracking_uri}") from exc
    runs: dict[str, Any] = {}
    job_runs = [parent]
    with tempfile.TemporaryDirectory() as tmp:
        listed = _stages_json(client, parent_run_id, Path(tmp))
    # A search trial's entry names the stage runs it trained (its trial run is not one).
    listed = [{"run_id": rid} for e in listed for rid in e.get("stage_run_ids") or []] + [
        e for e in listed if not e.get("stage_run_ids")
    ]
    for entry in listed:
        run = _listed_run(client, parent_run_id, entry)
        if run is not None:
            runs[run.info.run_id] = run
    for run in _descendants(client, parent):
        if run.data.tags.get(S.TAG_ROLE) == "stage":
            runs[run.info.run_id] = run
        elif run.data.tags.get(S.TAG_ROLE) == "job":
            job_runs.append(run)
    return parent, runs, job_runs


def _listed_run(client, parent_run_id: str, entry: dict[str, Any]):
    """The stage run a stages.json entry names, or None with a warning saying why not."""
    if not entry["run_id"]:
        label = entry.get("label") or entry.get("row") or "?"
        if entry.get("stopped"):  # early stopping is a result, not a failure
            warn(f"job {parent_run_id}: {label} was {entry['stopped']}")
            return None
        why = f": {entry['error'][:200]}" if entry.get("error") else ""
        warn(f"job {parent_run_id}: row {label} has no stage run (it failed{why})")
        return None
    try:
        return client.get_run(entry["run_id"])
    except Exception:
        warn(
            f"stages.json of {parent_run_id} lists run {entry['run_id']}, which is not "
            "in the store; its numbers are reported as missing"
        )
        return None
