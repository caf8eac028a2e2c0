"""A stage's MLflow run in *this* tracking store: names, re-registration, reuse links.

The stage store (``<root>/stages``) outlives tracking stores: a later job may log to a new
sqlite file or a server that never saw the run a stage was trained under. Such a stage is
re-registered in the current store from what its directory holds (config, per-epoch metrics,
eval JSON, examples, checkpoint, lineage), and ``<stage>/mlflow_runs.json`` remembers its run
id per tracking URI, so it is re-registered once per store.

A job that reuses a stage trained under another job gets a light child run (``raykd.role =
reuse``) that links to the run that trained it and carries its final metrics, so every job's
tree shows all its rows. The report layer reads ``raykd.role = stage`` runs only, so links are
never counted twice.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from raykd.errors import RaykdError
from raykd.orchestration.identity import StageRecord, StageStore
from raykd.paths import write_atomic
from raykd.plan.identity import used_config
from raykd.strict_json import read_jsonl
from raykd.tracking import Tracking
from raykd.tracking import schema as S
from raykd.tracking.mlflow_store import NOTE_TAG, PARENT_TAG

if TYPE_CHECKING:
    from raykd.orchestration.messages import PlannedStage
    from raykd.train.config import StageConfig

RUNS_FILE = "mlflow_runs.json"
TAGS_FILE = "run_tags.json"  # the tags a stage's run was created with (for re-registration)
TAG_SOURCE_RUN = S.TAG_SOURCE_RUN
TAG_REUSED_STAGE = S.TAG_REUSED_STAGE
FINAL_KEYS = ("final_", "best_val_loss", "wall_clock_s")


def stage_run_name(cfg, tags: dict[str, str]) -> str:
    """What a stage is, what tells it apart first, e.g. ``sft_kd-at-D3C5 · sunnybrook-4x-s42``
    (never a bare hash): the MLflow run table cuts long names at the right."""
    dataset = tags.get(S.TAG_DATASET) or Path(str(cfg.data.source)).name or "data"
    dataset = Path(dataset).name
    acc = tags.get(S.TAG_ACCELERATION, "")
    acc = acc if acc.startswith("sr") else f"{acc}x"
    row = tags.get(S.TAG_ROW, cfg.kind)
    part = cfg.teacher if cfg.kind in ("teacher", "sft") else cfg.student
    arch = f"D{part.depth}C{part.cascades}"
    if cfg.kind == "sft":
        arch += f"+D{cfg.student.depth}"  # the student branches it was trained with
    method = f"-{tags[S.TAG_METHOD]}" if tags.get(S.TAG_METHOD) else ""
    study = f"-b{tags[S.TAG_BUDGET]}" if tags.get(S.TAG_BUDGET) else ""
    study += f"-f{tags[S.TAG_FOLD]}" if tags.get(S.TAG_FOLD) else ""
    return f"{row}{method}-{arch}{_weights(cfg)} · {dataset}-{acc}{study}-s{cfg.seed}"


def _weights(cfg) -> str:
    """Loss weights that differ from the defaults (search trials vary them), e.g. ``-w1.59``."""
    from raykd.train.config import CANONICAL_KD_WEIGHTS

    out = ""
    if cfg.kind == "kd":
        default = CANONICAL_KD_WEIGHTS.get(cfg.kd.method, 1.0)
        if cfg.kd.weight is not None and abs(cfg.kd.weight - default) > 1e-12:
            out += f"-w{cfg.kd.weight:.3g}"
        if cfg.kd.output_weight:
            out += f"-out{cfg.kd.output_weight:.3g}"
    if cfg.kind == "sft" and (cfg.sft.w_s != 1.0 or cfg.sft.w_imit != 1.0):
        out += f"-ws{cfg.sft.w_s:.3g}-wi{cfg.sft.w_imit:.3g}"
    return out


def run_link(experiment_id: str, run_id: str, name: str) -> str:
    """A markdown link to a run's page, relative to the MLflow UI (descriptions render it)."""
    return f"[{name}](#/experiments/{experiment_id}/runs/{run_id})"


def teacher_note(tracking: Tracking, teacher_run_id: str) -> str:
    """A KD run's description: the teacher it learned from, as a link to the teacher's run."""
    try:
        teacher = tracking.client.get_run(teacher_run_id)
    except Exception:  # a lineage id from another store: say so rather than fail the stage
        return f"Distilled from teacher run `{teacher_run_id}` (not in this tracking store)."
    link = run_link(teacher.info.experiment_id, teacher_run_id, teacher.info.run_name)
    return f"Distilled from teacher run {link}."


def known_runs(stage_dir: str | Path) -> dict[str, str]:
    """Tracking URI → run id of this stage in that store."""
    path = Path(stage_dir) / RUNS_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def remember_run(stage_dir: str | Path, uri: str, run_id: str) -> None:
    path = Path(stage_dir) / RUNS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**known_runs(stage_dir), uri: run_id}
    write_atomic(path, json.dumps(data, indent=1))


def open_stage_run(
    uri: str | None, experiment: str | None, stage: PlannedStage, created: dict[str, str]
) -> PlannedStage:
    """Rank 0, as a stage starts: its MLflow run (created now, so its start time is true;
    continued if a killed run of it exists). ``created``: runs opened earlier in the chain,
    by stage name, for a KD run's lineage tag."""
    spec = stage.run_spec
    if spec is None or not uri:
        return stage
    tracking = Tracking(uri, experiment)
    run_id = stage.mlflow_run_id or known_runs(stage.output_dir).get(uri)
    if run_id and tracking.run_exists(run_id):
        tracking.client.update_run(run_id, status="RUNNING")
    else:
        tags = dict(spec.tags)
        if not tags.get(S.TAG_TEACHER_RUN) and stage.teacher_stage in created:
            tags[S.TAG_TEACHER_RUN] = created[stage.teacher_stage]
        if tags.get(S.TAG_TEACHER_RUN):
            tags[NOTE_TAG] = teacher_note(tracking, tags[S.TAG_TEACHER_RUN])
        run_id = tracking.start_run(spec.name, tags, spec.parent_run_id, spec.params)
        remember_run(stage.output_dir, uri, run_id)
    created[stage.name] = run_id
    return stage.model_copy(update={"mlflow_run_id": run_id})


def resolve_run(
    record: StageRecord, store: StageStore, tracking: Tracking, parent_run_id: str | None
) -> str:
    """The run of ``record`` in ``tracking``'s store, re-registering it there if unknown."""
    known = known_runs(record.output_dir).get(tracking.uri)
    if known and tracking.run_exists(known):
        return known
    if record.mlflow_run_id and tracking.run_exists(record.mlflow_run_id):
        return record.mlflow_run_id
    with store.lock(f"mlflow-{record.stage_id}", poll_s=0.2):
        known = known_runs(record.output_dir).get(tracking.uri)
        if known and tracking.run_exists(known):
            return known
        teacher_run = ""
        if record.teacher_stage and (teacher := store.get(record.teacher_stage)) is not None:
            teacher_run = resolve_run(teacher, store, tracking, parent_run_id)
        try:
            run_id = reregister(record, tracking, parent_run_id, teacher_run)
        except (OSError, ValueError, KeyError, yaml.YAMLError) as exc:
            raise RaykdError(
                f"stage {record.stage_id} ({record.output_dir}) was tracked as run "
                f"{record.mlflow_run_id} in another MLflow store and cannot be re-registered in "
                f"{tracking.uri} ({type(exc).__name__}: {exc}); pass --tracking-uri of the store "
                "it was trained under, or use a new --root to retrain"
            ) from exc
        remember_run(record.output_dir, tracking.uri, run_id)
        return run_id


def log_eval(tracking: Tracking, run_id: str, split: str, report: dict[str, Any]) -> None:
    """A split's eval report as metrics: the model's summary and per-volume values, and the
    zero-filled input's summary when the report carries it (stages finished before that don't)."""
    summary = {S.final_metric(split, k): v[0] for k, v in report["summary"].items()}
    zero_filled = report.get(S.EVAL_ZERO_FILLED)
    if isinstance(zero_filled, dict) and "summary" in zero_filled:
        summary |= {S.zero_filled_metric(split, k): v[0] for k, v in zero_filled["summary"].items()}
    tracking.log_metrics(run_id, summary)
    for vol in report.get("volumes", []):
        tracking.log_metrics(
            run_id, {S.final_metric(split, k, vol["volume"]): v for k, v in vol["metrics"].items()}
        )


def reregister(
    record: StageRecord, tracking: Tracking, parent_run_id: str | None, teacher_run: str
) -> str:
    """Log a finished stage into ``tracking`` from its directory (params, metrics, artifacts,
    lineage); the run keeps the stage's true start and end times."""
    from raykd.train.config import StageConfig

    out = Path(record.output_dir)
    cfg = StageConfig.model_validate(yaml.safe_load((out / "config.yaml").read_text()))
    teacher_kind = record.teacher_stage.split("-", 1)[0] if record.teacher_stage else None
    tags = stage_tags(cfg, record.stage_id, record.teacher_stage, teacher_kind, teacher_run)
    if (out / TAGS_FILE).is_file():  # the original's extra tags (dataset, row), not its lineage
        saved = json.loads((out / TAGS_FILE).read_text())
        tags = {**saved, **{k: v for k, v in tags.items() if v or k not in saved}}
        tags[S.TAG_TEACHER_RUN] = teacher_run
    tags[TAG_SOURCE_RUN] = record.mlflow_run_id or ""
    tags[NOTE_TAG] = (
        f"Re-registered from the stage store (`{out}`): trained under run "
        f"`{record.mlflow_run_id}` of another tracking store."
    )
    if teacher_run:
        tags[NOTE_TAG] += "\n\n" + teacher_note(tracking, teacher_run)
    end = record.finished_at or time.time()
    start = end - (record.wall_clock_s or record.compute_s or 0.0)
    run_id = tracking.start_run(
        stage_run_name(cfg, tags), tags, parent_run_id, used_config(cfg), start_time=start
    )
    for m in read_jsonl(out / "metrics.jsonl"):
        tracking.log_metrics(run_id, m, step=int(m.get("epoch", 0)))
    for split in ("val", "test"):
        path = out / f"eval_{split}.json"
        if not path.is_file():
            continue
        log_eval(tracking, run_id, split, json.loads(path.read_text()))
        tracking.log_artifact(run_id, path, "eval")
        if (examples := out / f"{split}_examples.npz").is_file():
            tracking.log_artifact(run_id, examples, "examples")
    tracking.log_metrics(
        run_id, {"best_val_loss": record.best_val_loss, "wall_clock_s": record.wall_clock_s or 0}
    )
    if Path(record.best_checkpoint).is_file():
        tracking.log_artifact(run_id, record.best_checkpoint, "checkpoints")
    tracking.log_artifact(run_id, out / "config.yaml")
    tracking.end_run(run_id, "FINISHED", end_time=end)
    return run_id


def link_reuse(
    tracking: Tracking, parent_run_id: str, stage_id: str, run_id: str, store: StageStore
) -> None:
    """Once per job and stage: a child run of the job that points at the stage's run."""
    source = tracking.client.get_run(run_id)
    if source.data.tags.get(PARENT_TAG) == parent_run_id:
        return  # trained (or re-registered) under this job: already in its tree
    with store.lock(f"link-{parent_run_id[:12]}-{stage_id}", poll_s=0.2):
        existing = tracking.runs(
            f"tags.`{TAG_REUSED_STAGE}` = '{stage_id}' and tags.`{PARENT_TAG}` = '{parent_run_id}'"
        )
        if existing:
            return
        tags: dict[str, Any] = {
            k: v for k, v in source.data.tags.items() if k.startswith("raykd.") and v
        }
        tags.update(
            {
                S.TAG_ROLE: "reuse",
                TAG_SOURCE_RUN: run_id,
                TAG_REUSED_STAGE: stage_id,
                NOTE_TAG: (
                    "Reused, not retrained: trained as run "
                    f"{run_link(source.info.experiment_id, run_id, source.info.run_name)}."
                ),
            }
        )
        tags.pop(S.TAG_STAGE_ID, None)  # only the run that trained it carries the stage id
        if git := source.data.tags.get("mlflow.source.git.commit"):
            tags["mlflow.source.git.commit"] = git
        name = f"reused: {source.info.run_name}"  # a prefix: the table cuts names at the right
        link = tracking.start_run(name, tags, parent_run_id)
        final = {k: v for k, v in source.data.metrics.items() if k.startswith(FINAL_KEYS)}
        tracking.log_metrics(link, final)
        tracking.end_run(link)


def mark_stopped(tracking: Tracking, stage_id: str, why: str) -> None:
    """Close the unfinished run of a stage a scheduler stopped as KILLED, saying why, without
    moving its end time past the stage's last logged metric."""
    for run in tracking.runs(f"tags.`{S.TAG_STAGE_ID}` = '{stage_id}'"):
        if run.info.status not in ("RUNNING", "FAILED"):
            continue
        end = run.info.end_time
        if run.info.status == "RUNNING":  # its process was killed: end at its last metric
            history = tracking.client.get_metric_history(run.info.run_id, "val_psnr")
            end = max((m.timestamp for m in history), default=run.info.start_time)
        tracking.set_tags(run.info.run_id, {"raykd.stopped": why, NOTE_TAG: why})
        tracking.end_run(run.info.run_id, "KILLED", end_time=(end or 0) / 1000)


def stage_tags(
    cfg: StageConfig,
    stage_id: str,
    teacher_id: str | None = None,
    teacher_kind: str | None = None,
    teacher_run: str = "",
) -> dict[str, str]:
    kd = cfg.kind == "kd"
    return {
        S.TAG_ROLE: "stage",
        S.TAG_KIND: cfg.kind,
        S.TAG_ROW: S.stage_row(cfg.kind, teacher_kind, cfg.kd.init),
        S.TAG_STAGE_ID: stage_id,
        S.TAG_TEACHER_STAGE: teacher_id or "",
        S.TAG_TEACHER_RUN: teacher_run,
        S.TAG_METHOD: cfg.kd.method if kd else "",
        S.TAG_INIT: cfg.kd.init if kd else "",
        S.TAG_SEED: str(cfg.seed),
        # Super-resolution settings are told apart from accelerations: 'sr2', 'sr4'.
        S.TAG_ACCELERATION: (
            f"sr{cfg.data.sr.scale}" if cfg.data.sr else f"{cfg.data.mask.acceleration:g}"
        ),
        S.TAG_TEACHER_DEPTH: str(cfg.teacher.depth) if cfg.kind != "student" else "",
        S.TAG_STUDENT_DEPTH: str(cfg.student.depth) if cfg.kind != "teacher" else "",
        S.TAG_TASK: cfg.task,
    }


def existing_run(tracking: Tracking | None, stage_id: str) -> str | None:
    """An unfinished MLflow run for this stage (driver killed earlier): continue it."""
    if tracking is None:
        return None
    try:
        runs = tracking.runs(f"tags.`raykd.stage_id` = '{stage_id}'")
    except Exception:  # an outage: the stage opens (or journals) its run when it starts
        return None
    for run in runs:
        if run.info.status in ("RUNNING", "KILLED", "FAILED"):
            return run.info.run_id
    return None


def retire_damaged_run(tracking: Tracking | None, stage_id: str, reason: str) -> None:
    """The finished MLflow run of a stage found damaged goes to MLflow's trash (restorable),
    tagged with why, so the retrained stage is the only run of that stage id."""
    if tracking is None:
        return
    for run in tracking.runs(f"tags.`raykd.stage_id` = '{stage_id}'"):
        tracking.set_tags(run.info.run_id, {"raykd.damaged": reason[:4000]})
        tracking.client.delete_run(run.info.run_id)
