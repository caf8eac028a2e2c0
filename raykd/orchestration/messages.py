"""The values that cross process boundaries: driver → Tune trial → Ray Train worker, and back.

Each is a frozen pydantic model that refuses unknown keys. Tune's ``param_space`` and Ray Train's
``train_loop_config`` must be dicts, so a sender passes ``model.model_dump(mode="json")`` and the
receiver's first act is ``Model.model_validate(...)``; results come back through files
(``result.json``: :class:`StageResult`) or a Tune metric holding :data:`ROW_RESULTS` JSON. No
Ray, no MLflow here: the types are tested without either.

- :class:`ContextSpec`: what rebuilds a stage context inside a trial (no live clients);
- :class:`GridTrial` / :class:`SearchTrial`: a Tune trial's config;
- :class:`ChainRequest` of :class:`PlannedStage` (each with its :class:`RunSpec`): what the
  Train workers of one chain train;
- :class:`StageResult`: a finished stage's ``result.json``;
- :class:`RowResult`: one grid row's (or search trial's) outcome; :class:`JobSummary`: a job's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter

from raykd.orchestration.cluster import TrialResources
from raykd.plan.presets import GridSpec
from raykd.plan.rows import Row
from raykd.plan.search_space import SearchSpec
from raykd.train.config import StageConfig

RESULT_FILE = "result.json"


class Message(BaseModel):
    """Frozen, strict; NaN/inf survive JSON (a diverged metric stays a number, not ``null``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")


class FaultInjection(Message):
    """Tests: SIGKILL rank ``rank`` once (``marker`` remembers it) after epoch
    ``kill_after_epoch`` of a stage of ``kind`` (any kind if None): after the epoch's report to
    Ray, or (``before_report``) after it is written and logged but before its checkpoint
    reaches Ray."""

    kill_after_epoch: int
    marker: str
    kind: str | None = None
    when: Literal["before_report", "after_report"] = "after_report"
    rank: int = 0


class ContextSpec(Message):
    """Plain data that rebuilds a stage context inside a Tune trial (no live clients pickled)."""

    root: str
    tracking_uri: str | None
    experiment: str | None
    resources: TrialResources
    parent_run_id: str | None = None
    max_failures: int = 2
    local: bool = False
    fault_injection: FaultInjection | None = None
    numbers: dict[str, int] = {}


class GridTrial(Message):
    """A grid trial's config: the spec, its rows (one, or all of a seed) and the context."""

    spec: GridSpec
    rows: list[Row]
    ctx: ContextSpec


class SearchTrial(Message):
    """A search trial's config: the space, the grid it samples around, the context, and the
    point Optuna sampled (Tune puts sampled values at the top level of the config)."""

    search: SearchSpec
    base: GridSpec
    ctx: ContextSpec
    params: dict[str, Any] = {}

    @classmethod
    def from_tune(cls, config: dict[str, Any]) -> SearchTrial:
        fixed = ("search", "base", "ctx")
        sampled = {k: v for k, v in config.items() if k not in fixed}
        return cls.model_validate({**{k: config[k] for k in fixed}, "params": sampled})

    def param_space(self) -> dict[str, Any]:
        """Tune's ``param_space`` (Optuna adds the sampled keys)."""
        return self.model_dump(mode="json", exclude={"params"})


class RunSpec(Message):
    """The MLflow run a stage opens on rank 0 when it starts (its true start time)."""

    name: str
    tags: dict[str, str]
    params: dict[str, Any]
    parent_run_id: str | None = None


class PlannedStage(Message):
    """One stage of a chain: its final config, folder, run (existing id or the spec to open one),
    its teacher stage (a KD run's lineage) and the console line that names it."""

    stage: StageConfig
    output_dir: str
    mlflow_run_id: str | None = None
    run_spec: RunSpec | None = None
    teacher_stage: str | None = None
    announce: str = ""

    @property
    def name(self) -> str:
        return self.stage.name or ""

    @property
    def result_path(self) -> Path:
        return Path(self.output_dir) / RESULT_FILE


class ChainRequest(Message):
    """What every Ray Train worker of one chain gets: the stages in order and where to log."""

    stages: list[PlannedStage]
    threads: int = 1
    use_gpu: bool = False  # each rank must get a CUDA device from Ray (never a CPU fallback)
    tracking_uri: str | None = None
    experiment: str | None = None
    eval_splits: tuple[str, ...] = ("val",)
    fault_injection: FaultInjection | None = None
    root: str  # the stage store: recovery events and the tracking journal
    job: str | None = None


class ChainState(Message):
    """Beside the ``last.pt`` of a Ray Train checkpoint: the stage of the chain it belongs to."""

    stage: str


class StageResult(Message):
    """A finished stage's ``result.json`` (rank 0 writes it last: its presence means done).

    Files written before stage times were recorded lack ``started_at`` … ``pid``.
    """

    best_checkpoint: str
    best_val_loss: float
    best_epoch: int
    metrics: dict[str, dict[str, float | None]]
    lineage: dict[str, Any] = {}
    compute: dict[str, str] | None = None
    # Set-up, training and evaluation inside the worker: the job subtracts it from the stage's
    # wall-clock to report Ray's start/stop overhead.
    compute_s: float | None = None
    mlflow_run_id: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    node_id: str = ""
    host: str = ""
    pid: int | None = None

    def write(self, output_dir: str | Path) -> Path:
        path = Path(output_dir) / RESULT_FILE
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=1))
        return path

    @classmethod
    def read(cls, output_dir: str | Path) -> StageResult | None:
        """The stage's result, or None while it has not finished."""
        path = Path(output_dir) / RESULT_FILE
        if not path.is_file():
            return None
        return cls.model_validate(json.loads(path.read_text()))


class RowResult(Message):
    """One grid row's outcome (or a search trial's: no ``row``, its KD runs in
    ``stage_run_ids``): validation metrics of its best checkpoint, or why it has none."""

    label: str
    row: Row | None = None
    val: dict[str, float | None] = {}
    scope: str = ""  # what ``val`` averages over, e.g. "split val: 1 volume, 4 slices"
    stage_id: str | None = None
    mlflow_run_id: str | None = None
    error: str | None = None
    stopped: str | None = None  # early stopping (a result, not a failure)
    trial_run_id: str | None = None  # a search trial's own run (not a stage run)
    stage_run_ids: tuple[str, ...] = ()

    @property
    def psnr(self) -> float | None:
        return self.val.get("psnr")

    @property
    def ssim(self) -> float | None:
        return self.val.get("ssim")

    @property
    def ok(self) -> bool:
        """Finished with a validation PSNR (a NaN is a number the run produced)."""
        return self.psnr is not None and not self.error

    @property
    def run(self) -> str:
        """The run that stands for the row: its stage run, else its search trial's run."""
        return self.mlflow_run_id or self.trial_run_id or ""

    @property
    def is_student(self) -> bool:
        from raykd.kinds import RowKind

        return self.row is not None and RowKind(self.row.kind).is_student_row

    def summary_entry(self) -> dict[str, Any]:
        """The row in the job summary file (``<job>-<id>-stages.json``, flat as the report's
        reader expects, see :mod:`raykd.tracking.schema`)."""
        entry = self.row.model_dump(mode="json") if self.row else {}
        entry["label"] = self.label
        entry |= {f"val_{k}": v for k, v in self.val.items()}
        rest = self.model_dump(mode="json", exclude={"row", "label", "val"}, exclude_defaults=True)
        return entry | rest


ROW_RESULTS: TypeAdapter[list[RowResult]] = TypeAdapter(list[RowResult])


class RegisteredModel(Message):
    """The best student as an MLflow model version (the ``champion`` alias follows the best)."""

    name: str
    version: str
    label: str
    run_id: str


class JobSummary(Message):
    """What a job did, as logged (``<job>-<id>-stages.json``) and printed at its end."""

    job_run_id: str
    wall_clock_s: float
    # Everything but the stages' own set-up/training/evaluation: Ray start-up, Tune and Train
    # scheduling, worker start/stop, MLflow calls.
    overhead_s: float
    overhead_fraction: float | None
    stage_overhead_s: float
    stages_trained: int
    stages_resumed: int
    stages_reused: int
    recovery: dict[str, Any]  # tracking outages, repairs, stage restarts (tracking_repair)
    compute_paths: dict[str, int]  # how the trained stages computed (precision/memory format)
    rows: list[RowResult]
    warnings: list[str] = []
    registered_model: RegisteredModel | None = None
    summary_file: str = ""

    @property
    def best(self) -> RowResult | None:
        return best_row(self.rows)

    def file_data(self) -> dict[str, Any]:
        """The summary file's content: rows flat, as the report reads them."""
        data = self.model_dump(mode="json", exclude={"rows", "summary_file"}, exclude_none=True)
        return data | {"rows": [r.summary_entry() for r in self.rows]}


def best_row(rows: list[RowResult]) -> RowResult | None:
    """The student row (else any row) with the best validation PSNR."""
    ok = [r for r in rows if r.ok and not math.isnan(r.psnr or 0.0)]
    pool = [r for r in ok if r.is_student] or ok
    return max(pool, key=lambda r: r.psnr or 0.0) if pool else None


class TrialReport(Message):
    """A search trial's final Tune report: its objectives (means over seeds) and its stages."""

    val_psnr: float
    val_loss: float
    val_ssim: float
    student_params: int
    seeds: int
    stage_id: str  # the KD stage of each seed, comma-separated
    kd_run_id: str  # their MLflow runs, comma-separated

    def tune_metrics(self) -> dict[str, Any]:
        """What ``tune.report`` gets: the fields, plus the per-epoch names ("/") Train reports,
        which the searcher and scheduler watch."""
        return self.model_dump() | {"val/psnr": self.val_psnr, "val/loss": self.val_loss}

    @classmethod
    def from_tune(cls, metrics: dict[str, Any]) -> TrialReport | None:
        """The trial's final report out of Tune's last result (None: it never sent one)."""
        if not all(k in metrics for k in cls.model_fields):
            return None
        return cls.model_validate({k: metrics[k] for k in cls.model_fields})


class TrialOutcome(Message):
    """One search trial: the point it sampled and its report, or why it has none."""

    trial: str
    params: dict[str, Any]
    report: TrialReport | None = None
    error: str | None = None
    stopped: str | None = None  # stopped early by the scheduler (a result, not a failure)
    run_id: str | None = None  # the trial's own MLflow run

    def value(self, metric: str) -> float | None:
        """The trial's value of an objective (None without a final report)."""
        return getattr(self.report, metric) if self.report is not None else None

    @property
    def done(self) -> bool:
        return self.report is not None and not self.error


class SearchOutcome(Message):
    """A search's trials, its Optuna study and the best trial (one objective) or the
    Pareto-optimal ones (several)."""

    trials: list[TrialOutcome]
    study_name: str
    storage: str  # the study's Optuna storage URL
    best: TrialOutcome | None = None
    pareto: list[TrialOutcome] = []
