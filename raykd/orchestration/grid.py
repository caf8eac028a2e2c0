"""The paper's grid: datasets × accelerations × seeds × {teacher, SFT teacher, student,
Std-KD × methods, SFT-KD × methods}, as Ray Tune trials over the stage graph.

Each Tune trial is one Table-1 row, or every row of one seed; it asks
:func:`~raykd.orchestration.runner.ensure_stages` for the rows' dependencies (teacher or SFT
teacher) and then for their own stages, so every distinct stage trains once and is reused by
every row, job run and search that needs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raykd.errors import ConfigError
from raykd.train.config import StageConfig, format_validation_error, validate_config

GRID_FILE = Path(__file__).resolve().parents[2] / "search_spaces" / "paper_grid.yaml"
RowName = Literal[
    "teacher", "sft_teacher", "student", "equal_compute", "std_kd", "sft_kd", "sft_kd_random"
]
# The equal-compute control is a default row: without it SFT-KD's extra training reads as a gain.
DEFAULT_ROWS: list[str] = ["teacher", "sft_teacher", "student", "equal_compute", "std_kd", "sft_kd"]

# Built-in dataset settings: where the volumes are, the split by volume, native size, masks.
DATASETS: dict[str, dict[str, Any]] = {
    "mni152": {"source": "mni152", "size": [240, 240], "mask_dir": "brain_240"},
    "sunnybrook": {
        "source": "sunnybrook",
        "train": ["0101", "0201", "0301"],
        "val": ["0401"],
        "size": [150, 150],
        "mask_dir": "cardiac_150",
    },
}


class Epochs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    teacher: int = Field(150, ge=1)
    sft: int = Field(150, ge=1)
    student: int = Field(150, ge=1)
    kd: int = Field(150, ge=1)


class GridSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    datasets: list[str] = ["mni152"]
    accelerations: list[float] = [4.0]
    methods: list[str] = ["at", "fitnets", "fsp", "sp", "cc"]
    student_depths: list[int] = [3]
    teacher_depth: int = Field(5, ge=2)
    cascades: int = Field(5, ge=2)
    seeds: int = Field(1, ge=1)
    first_seed: int = 42
    size: tuple[int, int] | None = None
    channels: int = Field(32, ge=1)
    max_slices_per_volume: int | None = None
    epochs: Epochs = Epochs()
    batch_size: int = Field(4, ge=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    rows: list[RowName] = DEFAULT_ROWS
    kd_weights: dict[str, float] = {}  # fixed KD weight per method (overrides kd_balance)
    # Balance ratio r: each KD weight is calibrated before training so that weighted KD = r × L1
    # (kd.balance); None: the method's canonical (classification) weight.
    kd_balance: float | None = Field(None, gt=0)
    w_s: float = 1.0
    w_imit: float = 1.0
    imit_balance: float | None = Field(None, gt=0)  # the same for the SFT imitation weight
    data_path: str | None = None  # overrides the source of a built-in dataset (e.g. Sunnybrook)
    test: list[str] | None = None  # held-out test volumes of the (single) dataset
    trial_unit: Literal["row", "seed"] = "row"  # Tune trial = one row, or all rows of a seed
    # Task and architectures (paper Appendix B / Table 6). For task 'sr', ``accelerations`` are
    # the super-resolution scales (2, 4) and inputs are made by ``sr_degradation``.
    task: Literal["recon", "sr"] = "recon"
    sr_degradation: Literal["kspace", "image"] = "kspace"
    teacher_arch: Literal["dccnn", "dcunet", "vdsr"] = "dccnn"
    student_arch: Literal["dccnn", "dcunet", "vdsr"] = "dccnn"
    teacher_taps: list[str] | None = None  # KD tap mapping ('{c}' = every block); None: defaults
    student_taps: list[str] | None = None

    def seed_list(self) -> list[int]:
        return [self.first_seed + i for i in range(self.seeds)]

    def budget_warnings(self) -> list[str]:
        """Where student rows get unequal epochs (plain student vs KD rows); shipped presets
        never do, an explicit override may."""
        students = {r for r in self.rows if r in ("student", "std_kd", "sft_kd", "sft_kd_random")}
        if len(students) > 1 and self.epochs.student != self.epochs.kd:
            return [
                f"unequal budgets: plain student {self.epochs.student} epochs vs KD students "
                f"{self.epochs.kd} epochs; comparisons between these rows are not at equal training"
            ]
        return []


def load_preset(name: str, overrides: dict[str, Any] | None = None) -> GridSpec:
    presets = yaml.safe_load(GRID_FILE.read_text())["presets"]
    if name not in presets:
        raise ConfigError(f"unknown preset '{name}'; expected one of {sorted(presets)}")
    data = {**presets[name], **{k: v for k, v in (overrides or {}).items() if v is not None}}
    try:
        spec = GridSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"{GRID_FILE} preset '{name}'")) from None
    for ds in spec.datasets:
        if ds not in DATASETS and not Path(ds).expanduser().is_dir():
            raise ConfigError(
                f"dataset '{ds}': not a built-in ({sorted(DATASETS)}) and not a folder of h5"
            )
    from raykd.distill import available_kd_methods

    unknown = sorted(set(spec.methods) - set(available_kd_methods()))
    if unknown:
        raise ConfigError(f"unknown KD method(s) {unknown}; expected {available_kd_methods()}")
    if spec.task == "sr":
        bad = [a for a in spec.accelerations if a != int(a) or a < 2]
        if bad:
            raise ConfigError(
                f"preset '{name}': task 'sr' reads accelerations as super-resolution scales; "
                f"expected integers >= 2, got {bad}"
            )
    return spec


def grid_rows(spec: GridSpec) -> list[dict[str, Any]]:
    """One dict per Table-1 row (a Tune trial)."""
    rows = []
    for dataset in spec.datasets:
        for acc in spec.accelerations:
            for seed in spec.seed_list():
                for row in spec.rows:
                    # The plain teacher has no student part: one row whatever the depths.
                    depths = spec.student_depths[:1] if row == "teacher" else spec.student_depths
                    methods = spec.methods if row.endswith("kd") or "kd_" in row else [None]
                    rows += [
                        {
                            "dataset": dataset,
                            "acceleration": acc,
                            "seed": seed,
                            "row": row,
                            "student_depth": depth,
                            "method": method,
                        }
                        for depth in depths
                        for method in methods
                    ]
    return rows


def row_label(row: dict[str, Any]) -> str:
    parts = [row["dataset"], f"{row['acceleration']:g}x", f"s{row['seed']}", row["row"]]
    if row["row"] != "teacher":
        parts.append(f"D{row['student_depth']}")
    if row["method"]:
        parts.append(row["method"])
    return "/".join(parts)


def stage_config(spec: GridSpec, row: dict[str, Any], kind: str, **extra: Any) -> StageConfig:
    """The StageConfig of one stage of a row (``kind``: teacher | sft | student | kd)."""
    ds = DATASETS.get(row["dataset"], {"source": row["dataset"]})
    source = spec.data_path if (spec.data_path and row["dataset"] in DATASETS) else ds["source"]
    size = list(spec.size) if spec.size else ds.get("size", [240, 240])
    acc = row["acceleration"]
    mask: dict[str, Any] = {"kind": "cartesian", "acceleration": acc, "seed": 0}
    sr = spec.task == "sr"
    if not sr and "mask_dir" in ds and size == ds["size"] and float(acc) in (4.0, 5.0):
        from raykd.paths import shared_data_dir

        rel = f"masks/{ds['mask_dir']}/mask_{int(acc)}x.npy"
        if (shared_data_dir() / rel).is_file():  # the paper's fixed masks when available
            mask = {"kind": "file", "path": f"shared:{rel}", "acceleration": acc}
    if min(size) < 100:  # tiny smoke shapes: keep 10 low rows feasible
        mask["num_low"] = 4
    data = {
        "source": source,
        "size": size,
        "mask": mask,
        "batch_size": spec.batch_size,
        "max_slices_per_volume": spec.max_slices_per_volume,
    }
    for split in ("train", "val"):
        if split in ds and source == ds["source"]:
            data[split] = ds[split]
    if spec.test:
        data["test"] = spec.test
    if sr:
        data["sr"] = {"scale": int(acc), "degradation": spec.sr_degradation}
        data["mask"] = {"kind": "cartesian", "acceleration": 1.0}  # unused: the SR mask replaces it
    model = {"cascades": spec.cascades, "channels": spec.channels}
    cfg: dict[str, Any] = {
        "kind": kind,
        "seed": row["seed"],
        "data": data,
        "teacher": {**model, "arch": spec.teacher_arch, "depth": spec.teacher_depth},
        "student": {**model, "arch": spec.student_arch, "depth": row["student_depth"]},
        "optim": {"epochs": getattr(spec.epochs, kind)},
        "sft": {
            "w_s": spec.w_s,
            "w_imit": spec.w_imit,
            **({"balance": {"ratio": spec.imit_balance}} if spec.imit_balance else {}),
        },
        "precision": spec.precision,
        "progress": False,
    }
    if kind == "kd":
        method = row["method"]
        cfg["kd"] = {
            "method": method,
            "init": "sft" if row["row"] == "sft_kd" else "random",
            **({"weight": spec.kd_weights[method]} if method in spec.kd_weights else {}),
            **(
                {"balance": {"ratio": spec.kd_balance}}
                if spec.kd_balance is not None and method not in spec.kd_weights
                else {}
            ),
            "teacher_taps": spec.teacher_taps,
            "student_taps": spec.student_taps,
        }
        cfg["teacher_checkpoint"] = "resolved-by-the-stage-graph"
    for key, value in extra.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return validate_config(cfg, f"grid row {row_label(row)}")


def row_requests(spec: GridSpec, row: dict[str, Any], **extra: Any) -> list:
    """The stages one row needs, dependencies first; the last one is the row's own stage."""
    from raykd.orchestration.runner import StageRequest

    tags = {"raykd.dataset": row["dataset"]}
    if row["row"] == "equal_compute":
        # Control for SFT-KD: a plain student trained for as many epochs as an SFT-KD student's
        # blocks receive (SFT epochs + KD epochs), so extra training is not credited to SFT.
        epochs = spec.epochs.sft + spec.epochs.kd
        cfg = stage_config(spec, row, "student", **{"optim.epochs": epochs, **extra})
        return [StageRequest(cfg, tags={**tags, "raykd.row": "equal_compute"})]
    kind = {"teacher": "teacher", "sft_teacher": "sft", "student": "student"}.get(row["row"], "kd")
    if kind != "kd":
        return [StageRequest(stage_config(spec, row, kind, **extra), tags=tags)]
    teacher_kind = "teacher" if row["row"] == "std_kd" else "sft"
    teacher = StageRequest(stage_config(spec, row, teacher_kind), tags=tags)
    own = StageRequest(stage_config(spec, row, "kd", **extra), teacher.stage_id, tags=tags)
    return [teacher, own]


def run_rows(
    spec: GridSpec, rows: list[dict[str, Any]], ctx, tune_report: bool = False, **extra
) -> list:
    """Train (or reuse) everything the rows need; returns each row's own StageRecord.

    Two chains: first the teachers any row depends on, then every other missing stage. With one
    row per trial, concurrent trials thus share a teacher without waiting for each other's
    students; with all rows of a seed in one trial, the seed costs two Ray Train starts.
    """
    from raykd.orchestration.runner import ensure_stages

    per_row = [row_requests(spec, row, **extra) for row in rows]
    deps = [req for reqs in per_row for req in reqs[:-1]]
    if deps:
        ensure_stages(deps, ctx)
    own = [reqs[-1] for reqs in per_row]
    records = ensure_stages(deps + own, ctx, tune_report=tune_report)
    return [records[req.stage_id] for req in own]


def run_row(spec: GridSpec, row: dict[str, Any], ctx, tune_report: bool = False, **extra):
    """Train (or reuse) everything one row needs; returns the row's own StageRecord."""
    return run_rows(spec, [row], ctx, tune_report, **extra)[0]


def grid_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: one grid row, or all rows of one setting and seed.

    Reports each row's result (label, stage, MLflow run, validation metrics) as JSON so a
    multi-row trial still yields one table row per grid row.
    """
    import json

    from ray import tune

    from raykd.orchestration.runner import context_from_dict

    spec = GridSpec.model_validate(config["spec"])
    ctx = context_from_dict(config["ctx"])
    entries = []
    records = run_rows(spec, config["rows"], ctx)
    for row, record in zip(config["rows"], records, strict=True):
        val = (record.metrics or {}).get("val", {})
        entries.append(
            {
                **row,
                "label": row_label(row),
                **{f"val_{k}": v for k, v in val.items()},
                "stage_id": record.stage_id,
                "mlflow_run_id": record.mlflow_run_id or "",
            }
        )
    last = entries[-1]
    tune.report(
        {
            **{k: v for k, v in last.items() if k.startswith("val_")},
            "rows_json": json.dumps(entries),
        }
    )


def trial_groups(spec: GridSpec, rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows per Tune trial: one each, or every row of a (dataset, acceleration, seed) together.

    One trial per row lets a GPU cluster run KD rows in parallel; one per seed saves a trial
    start per row where trials run one at a time anyway (a small CPU box).
    """
    if spec.trial_unit == "row":
        return [[r] for r in rows]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["acceleration"], r["seed"]), []).append(r)
    return list(groups.values())


def run_grid(spec: GridSpec, job) -> list[dict[str, Any]]:
    """Run every row of ``spec`` through Tune trials; returns one result dict per row."""
    import hashlib
    import json

    from ray import tune

    from raykd.orchestration.job import tune_trainable
    from raykd.orchestration.runner import context_to_dict

    rows = grid_rows(spec)
    groups = trial_groups(spec, rows)
    spec_d = spec.model_dump(mode="json")
    name = "grid-" + hashlib.sha256(json_dumps(spec_d).encode()).hexdigest()[:10]
    storage = job.root / "tune"
    # A killed grid is resumed by running it again: finished stages are reused from the stage
    # store and unfinished ones continue from their last Ray Train checkpoint.
    tuner = tune.Tuner(
        tune_trainable(grid_trial),
        param_space={
            "spec": spec_d,
            "ctx": context_to_dict(job.ctx),
            "rows": tune.grid_search(groups),
        },
        tune_config=tune.TuneConfig(max_concurrent_trials=job.resources.concurrency),
        run_config=tune.RunConfig(name=f"{name}-{job.run_id[:8]}", storage_path=str(storage)),
    )
    results = tuner.fit()
    out: list[dict[str, Any]] = []
    for result in results:
        metrics = dict(result.metrics or {})
        if "rows_json" in metrics:
            out.extend(json.loads(metrics["rows_json"]))
            continue
        # The trial failed before reporting: one failed entry per row it owned.
        for row in (result.config or {}).get("rows", []):
            out.append(
                {
                    **row,
                    "label": row_label(row),
                    "error": str(result.error)[:500] if result.error else "no result",
                }
            )
    order = {row_label(r): i for i, r in enumerate(rows)}
    return sorted(out, key=lambda e: order.get(e["label"], len(order)))


def json_dumps(data: Any) -> str:
    import json

    return json.dumps(data, sort_keys=True)
