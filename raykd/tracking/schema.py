"""What raykd writes to MLflow, in one place (the report layer reads exactly this).

Runs (all in one experiment per job unless ``--experiment`` says otherwise):

- job run: ``raykd.role=job`` (a grid or search invocation). Artifact
  ``<job>-<id>-stages.json``: ``{"rows": [{label, row, method, ..., stage_id, mlflow_run_id,
  val_psnr, ...}], "stages_trained": n, "stages_resumed": k, "stages_reused": m, ...}`` — every
  stage run the job used, and what *this* job did with it (trained from scratch, resumed from
  an interrupted job's ``last.pt``, reused); metrics ``stages_trained``, ``stages_resumed``,
  ``stages_reused``, ``wall_clock_s``.
- stage run: ``raykd.role=stage``, child of the job that *trained* it (reused stages are not
  retrained, so a later job lists them in its ``stages.json`` instead). Tags below; params =
  the flattened stage config without the sections its kind never reads
  (``precision``/``channels_last`` as requested, e.g. ``auto``) plus the compute path it
  resolved to on the worker — ``compute.device``, ``compute.cpu_capability``
  (amx | avx512_bf16 | avx512 | avx2 | other), ``compute.precision`` (fp32 | bf16 | fp16),
  ``compute.memory_format`` (channels_last | contiguous), ``compute.world_size`` (DDP ranks),
  ``compute.global_batch`` (= ``data.batch_size``) and ``compute.rank_batch``; metrics per
  epoch (``train_loss``, ``train_<term>``, ``val_loss``, ``val_psnr`` = mean over volumes of
  the volume PSNR (the same definition as ``final_val_psnr``), ``lr``, ``epoch_time_s``;
  step = epoch) and final, of the best checkpoint on whole volumes (``final_<split>_<metric>``
  for each of METRICS, ``final_<split>_<volume>_<metric>``, ``best_val_loss``, ``wall_clock_s``).
  The zero-filled input of the same volumes and slices is evaluated at stage finish too
  (``zero_filled_<split>_<metric>``, and the eval JSON's ``zero_filled`` entry in the same
  format): the report's ZF row reads it and never rebuilds a dataset; ``model_params`` is the
  trained network's parameter count (Table 8).
  Artifacts: ``eval/eval_<split>.json`` (per-volume and per-slice metrics,
  the paired data for Wilcoxon tests), ``examples/<split>_examples.npz`` (target, zero-filled,
  reconstruction of a few fixed slices), ``checkpoints/best.pt``, ``config.yaml``.
- trial run (searches): ``raykd.role=trial``, child of the search's job run, named by the
  sampled hyperparameters (params), the trial's objective as metrics, ``raykd.kd_run_id`` (its
  KD stage runs, one per seed); a trial ASHA stopped is KILLED with ``raykd.stopped``
  ("stopped at epoch k by ASHA"). The search's job run carries ``raykd.optuna_storage`` and
  ``raykd.optuna_study``.
- reuse link: ``raykd.role=reuse``, child of a job that reused a stage another job trained
  (``reused: <stage name>``; left out of the shared stages view, so a rerun shows each stage
  once), with ``raykd.source_run_id`` = the stage run, its raykd tags
  (not ``raykd.stage_id``) and final metrics. Reports read stage runs only, so a link never
  counts twice.

Names: job runs ``<preset>-<date time>``; stage runs ``<row>[-<method>]-D<depth>C<cascades>
[-w<kd weight>] · <dataset>-<acc>x-s<seed>`` (what tells stages apart first: the UI cuts names
at the right). Stage params: the config without the sections its kind never reads
(:func:`raykd.plan.identity.unused_sections`, the rule the identity uses: no ``kd.*`` on a
teacher). A KD run's description links its teacher's run. The job run's description
(``mlflow.note.content``) opens with the best row and a link to the stages view, then its
results table; ``best_val_<metric>`` metrics and ``raykd.best_label`` / ``raykd.best_run_id``
tags name its best student, registered as ``<experiment>-student`` (alias ``champion``; the
version's description names row, KD method, teacher and val PSNR). Its logged model belongs to
the job's experiment (artifacts under the store's artifact root, listed on the run's page).
Experiment tags: ``mlflow.experimentKind`` and the shared runs-table view
``mlflow.sharedViewState.raykd-stages`` (:mod:`raykd.tracking.ui`).
A stage re-registered in a new tracking store (trained under another) has
``raykd.source_run_id`` = its run there; ``<stage dir>/mlflow_runs.json`` maps tracking URI →
run id.
"""

from __future__ import annotations

from raykd.kinds import ROW_KINDS

TAG_ROLE = "raykd.role"  # job | stage | trial | reuse | comparison
TAG_KIND = "raykd.kind"  # teacher | sft | student | kd
# teacher | sft_teacher | student | equal_compute | std_kd | sft_kd | sft_kd_random
TAG_ROW = "raykd.row"
TAG_STAGE_ID = "raykd.stage_id"
TAG_TEACHER_STAGE = "raykd.teacher_stage"
TAG_TEACHER_RUN = "raykd.teacher_run_id"  # lineage: the MLflow run of the teacher
TAG_METHOD = "raykd.kd_method"
TAG_INIT = "raykd.kd_init"
TAG_DATASET = "raykd.dataset"
TAG_ACCELERATION = "raykd.acceleration"
TAG_STUDENT_DEPTH = "raykd.student_depth"
TAG_TEACHER_DEPTH = "raykd.teacher_depth"
TAG_SEED = "raykd.seed"
TAG_FOLD = "raykd.fold"  # cross-validation fold "0".."K-1" (absent: no folds)
TAG_BUDGET = "raykd.budget"  # budget scale of a budget study, e.g. "2" (absent: 1)
TAG_TASK = "raykd.task"  # recon | sr
TAG_SOURCE_RUN = "raykd.source_run_id"  # reuse link / re-registered run: the original run
TAG_REUSED_STAGE = "raykd.reused_stage"  # reuse link: the stage id it stands for

# Eval JSON key holding the zero-filled input's report ({"volumes": [...], "summary": {...}}).
EVAL_ZERO_FILLED = "zero_filled"
METRIC_PARAMS = "model_params"  # stage run: parameter count of the trained network

ROWS = ROW_KINDS  # raykd.kinds.RowKind's values
METRICS = ("psnr", "ssim", "nmse", "hfn", "hfen", "vif")


def stage_row(kind: str, teacher_kind: str | None = None, init: str | None = None) -> str:
    """The Table-1 row a stage belongs to, from what the stage is (not who asked for it)."""
    if kind == "teacher":
        return "teacher"
    if kind == "sft":
        return "sft_teacher"
    if kind == "student":
        return "student"
    if teacher_kind == "sft":
        return "sft_kd" if init == "sft" else "sft_kd_random"
    return "std_kd"


def final_metric(split: str, metric: str, volume: str | None = None) -> str:
    """``final_<split>[_<volume>]_<metric>``: the best checkpoint on a whole split (or volume)."""
    return f"final_{split}_{volume}_{metric}" if volume else f"final_{split}_{metric}"


def zero_filled_metric(split: str, metric: str) -> str:
    """``zero_filled_<split>_<metric>``: the zero-filled input on the stage's split."""
    return f"zero_filled_{split}_{metric}"


# Benchmark runs (``raykd.role=benchmark``, written by :mod:`raykd.deploy.latency`): per depth
# d, ``latency_ms_d<d>`` (median per-slice ms), ``latency_p10_ms_d<d>``, ``latency_p90_ms_d<d>``,
# ``params_d<d>``; ``speedup_d3_vs_d5``; params device, size, batch, repeats, cascades, channels.
LATENCY_MS = "latency_ms_d"
LATENCY_P10 = "latency_p10_ms_d"
LATENCY_P90 = "latency_p90_ms_d"
BENCH_PARAMS = "params_d"
SPEEDUP = "speedup_d3_vs_d5"
