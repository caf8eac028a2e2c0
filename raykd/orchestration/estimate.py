"""What a job will cost before it runs: per-epoch costs measured, then scheduled on a cluster.

Each stage's cost comes from, in this order: finished stages of the same shape in the store
(``metrics.jsonl``'s ``epoch_time_s``, ``done.json``'s compute and wall-clock times), an earlier
calibration cached in ``<root>/calibration.json``, or a short timed calibration here (a few real
training steps of the stage kind at its shapes, in this process). The graph, critical path and
schedule come from :mod:`raykd.plan.cost`. No Ray here: ``--plan`` answers without a cluster.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from raykd.kinds import STAGE_KINDS
from raykd.plan.cost import ClusterShape, StageNode, critical_path, shape_key, simulate
from raykd.plan.presets import GridSpec
from raykd.plan.rows import Row
from raykd.plan.stages import row_requests
from raykd.strict_json import read_jsonl

# Ray Train's start/stop per stage when nothing measured says otherwise (ray-notes: 8-15 s to
# the first training line, ~1.7 s teardown with the fast health check).
DEFAULT_START_S = 12.0
CALIBRATION_FILE = "calibration.json"


@dataclass
class Cost:
    """One stage shape's cost on one worker: seconds per epoch and per stage (set-up,
    evaluation, Ray start/stop), and where the numbers come from."""

    epoch_s: float
    fixed_s: float
    source: str

    def stage_s(self, epochs: int, workers: int) -> float:
        """Ideal DDP scaling: the epoch splits over the workers, the fixed part does not."""
        return self.fixed_s + epochs * self.epoch_s / max(1, workers)


def _epoch_times(stage_dir: Path) -> list[float]:
    records = read_jsonl(stage_dir / "metrics.jsonl")
    return [float(r["epoch_time_s"]) for r in records if r.get("epoch_time_s") is not None]


def stored_costs(root: Path) -> dict[str, Cost]:
    """Per-epoch costs of the finished stages under ``root``, by shape (per worker: a stage
    trained on W workers counts W times its epoch time)."""
    from raykd.train.config import load_config

    found: dict[str, list[tuple[float, float]]] = {}
    for done in sorted((root / "stages").glob("*/done.json")):
        try:
            record = json.loads(done.read_text())
            cfg = load_config(done.parent / "config.yaml")
        except Exception:  # a partial or foreign folder: no measurement, never a failure
            continue
        epochs = _epoch_times(done.parent)
        if not epochs:
            continue
        world = int((record.get("compute") or {}).get("compute.world_size", 1))
        compute = record.get("compute_s") or sum(epochs)
        wall = record.get("wall_clock_s") or compute
        fixed = max(0.0, compute - sum(epochs)) + max(0.0, wall - compute)
        found.setdefault(shape_key(cfg), []).append((statistics.median(epochs) * world, fixed))
    return {
        key: Cost(
            statistics.median(e for e, _ in v),
            statistics.median(f for _, f in v),
            f"store ({len(v)} stage(s))",
        )
        for key, v in found.items()
    }


_DATASETS: dict[str, dict] = {}  # data config -> built datasets (shared by a plan's shapes)


def calibrate(cfg, steps: int = 2, teacher_ckpt: str | None = None) -> tuple[Cost, str | None]:
    """Time ``steps`` real training steps of two slices each (after a warm-up step) of ``cfg``
    at its shapes, here; an epoch costs that per training slice (a CPU step's cost grows with
    the batch) plus a third of it per validation slice (forward only).

    Returns the cost and, for a teacher/SFT stage, a checkpoint a KD calibration can load.
    """
    import torch

    from raykd.data.sources import build_datasets
    from raykd.train.checkpoint import save_checkpoint
    from raykd.train.loop import Trainer

    tmp = Path(tempfile.mkdtemp(prefix="raykd-calibrate-"))
    key = cfg.data.model_dump_json()
    if key not in _DATASETS:
        _DATASETS[key] = build_datasets(cfg.data)
    datasets = _DATASETS[key]
    update = {"output_dir": str(tmp / cfg.kind), "progress": False, "resume": False}
    update["device"] = calibration_device(cfg.device)
    if cfg.kind == "kd":
        update["teacher_checkpoint"] = teacher_ckpt
    batch_size = min(2, cfg.data.batch_size)  # some KD methods (cc, sp) need 2 slices
    update["data"] = cfg.data.model_copy(update={"batch_size": batch_size})
    cfg = cfg.model_copy(update=update)
    trainer = Trainer(cfg, datasets=datasets)
    batch = trainer._batch(next(iter(trainer._loader(datasets["train"]))))
    trainer.step(*batch)  # warm-up
    _sync(trainer.device)  # CUDA kernels are asynchronous: the warm-up ends before timing
    t0 = time.perf_counter()
    for _ in range(steps):
        loss, _terms = trainer.step(*batch)
    loss.item()
    _sync(trainer.device)
    slice_s = (time.perf_counter() - t0) / steps / batch_size
    n_train, n_val = len(datasets["train"]), len(datasets.get("val") or [])
    epoch_s = n_train * slice_s + n_val * slice_s / 3
    ckpt = None
    if cfg.kind in ("teacher", "sft"):
        ckpt = str(save_checkpoint(tmp / "teacher.pt", trainer._payload(0, full=False)))
    where = _machine_key(trainer.device)
    if trainer.device.type == "cpu":
        where += f", {torch.get_num_threads()} thread(s)"
    source = f"calibrated here ({steps} timed 2-slice steps, {where})"
    return Cost(epoch_s, DEFAULT_START_S + 2 * epoch_s / 3, source), ckpt


def calibration_device(planned: str) -> str:
    """Where a plan times a stage: this machine's GPU for a GPU stage when it has one, else its
    CPU (the result names which: ``_machine_key``)."""
    import torch

    return "cuda" if planned.startswith("cuda") and torch.cuda.is_available() else "cpu"


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _machine_key(device=None) -> str:
    """The device class a calibration ran on: ``cpu-<class>`` or ``cuda-<GPU model>``."""
    import torch

    from raykd.train.precision import device_label

    return device_label(device if device is not None else torch.device("cpu"))


def stage_costs(
    nodes: dict[str, StageNode], configs: dict[str, object], root: Path, steps: int = 2
) -> dict[str, Cost]:
    """A cost for every shape the graph trains: the store's, the cached calibration's, else a
    fresh calibration (cached for the next plan). Shapes that cannot be calibrated (missing
    data) get none."""
    costs = stored_costs(root)
    cache_path = root / CALIBRATION_FILE
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    wanted = {n.shape: n for n in nodes.values() if not n.stored}
    teacher_ckpt: dict[str, str] = {}
    order = sorted(wanted, key=lambda s: STAGE_KINDS.index(s.split("|")[0]))
    for shape in order:
        if shape in costs:
            continue
        import torch

        planned = configs[wanted[shape].stage_id].device
        dev = torch.device(calibration_device(planned))
        key = f"{_machine_key(dev)}|{shape}"
        if key in cache:
            costs[shape] = Cost(**{**cache[key], "source": cache[key]["source"] + ", cached"})
            continue
        node = wanted[shape]
        cfg = configs[node.stage_id]
        try:
            ckpt = None
            if node.kind == "kd":
                ckpt = teacher_ckpt.get(nodes[node.teacher].shape) if node.teacher else None
                if ckpt is None:  # its teacher was measured, not calibrated: calibrate it now
                    _, ckpt = calibrate(configs[node.teacher], 1)
            cost, made = calibrate(cfg, steps, ckpt)
        except Exception as exc:  # noqa: BLE001 - a plan reports what it could not measure
            costs[shape] = Cost(math.nan, math.nan, f"no estimate ({type(exc).__name__}: {exc})")
            continue
        if made:
            teacher_ckpt[shape] = made
        costs[shape] = cost
        cache[key] = asdict(cost)
    if cache:
        cache_path.write_text(json.dumps(cache, indent=1))
    return costs


def this_machine() -> ClusterShape:
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ClusterShape(1, os.cpu_count() or 1, gpus)


def cpus_per_worker(cluster: ClusterShape, workers: dict[str, int], per_gpu: int = 1) -> int:
    """As :func:`~raykd.orchestration.sizing.size_trials` sizes workers: a worker's share of
    its GPU node's CPUs (``per_gpu`` workers per GPU), else up to 4 CPUs per trial split over
    its workers."""
    if cluster.gpus_per_node:
        return max(1, cluster.cpus_per_node // (cluster.gpus_per_node * per_gpu))
    return max(1, min(4, cluster.cpus_per_node) // max(workers.values(), default=1))


def _cpu_speed_note(cluster: ClusterShape, costs: dict[str, Cost]) -> str:
    """Said when a GPU cluster is planned with per-worker speeds calibrated on a CPU."""
    on_cpu = any("calibrated here" in c.source and "cuda-" not in c.source for c in costs.values())
    if cluster.gpus_per_node and on_cpu:
        return (
            "per-worker speeds were calibrated on this machine's CPU, not on a GPU: on GPUs "
            "expect the training part to be many times shorter"
        )
    return ""


def _gpu_packing(
    cluster: ClusterShape, workers: dict[str, int], gpus_per_worker: float | None
) -> tuple[float, int, dict[str, float]]:
    """(share of a single-worker stage, stages per GPU, GPUs per worker by kind); CPU: 0, 1, {}."""
    from raykd.plan.gpus import kind_shares, stages_per_gpu

    if not cluster.gpus_per_node:
        return 0.0, 1, {}
    share = gpus_per_worker or 1.0
    per_gpu = stages_per_gpu(share) if max(workers.values(), default=1) == 1 else 1
    return share, per_gpu, kind_shares(workers, share)


def plan_job(
    spec: GridSpec,
    rows: list[Row],
    root: Path,
    cluster: ClusterShape,
    workers: dict[str, int],
    steps: int = 2,
    gpus_per_worker: float | None = None,
) -> dict:
    """The job's stage graph with costs, critical path, makespan and resource-hours. On a GPU
    cluster a single-worker stage holds ``gpus_per_worker`` of a GPU (None: a whole one), a
    DDP rank a whole GPU (:mod:`raykd.plan.gpus`)."""
    from raykd.orchestration.identity import StageStore
    from raykd.plan.cost import stage_graph

    store = StageStore(root)
    nodes = stage_graph(spec, rows, lambda sid: store.get(sid) is not None)
    configs = {req.stage_id: req.cfg for row in rows for req in row_requests(spec, row)}
    costs = stage_costs(nodes, configs, root, steps)
    duration = {
        sid: costs[n.shape].stage_s(n.epochs, workers.get(n.kind, 1))
        for sid, n in nodes.items()
        if not n.stored and n.shape in costs
    }
    known = all(not math.isnan(d) for d in duration.values())
    cp, chain = critical_path(nodes, duration) if known else (math.nan, [])
    share, per_gpu, gpus = _gpu_packing(cluster, workers, gpus_per_worker)
    cpw = cpus_per_worker(cluster, workers, per_gpu)
    makespan = simulate(nodes, duration, workers, cluster, cpw, per_gpu) if known else math.nan
    worker_s = sum(duration[s] * workers.get(nodes[s].kind, 1) for s in duration)
    gpu_s = sum(
        duration[s] * workers.get(nodes[s].kind, 1) * gpus.get(nodes[s].kind, 0) for s in duration
    )
    table: dict[str, dict[str, list[int]]] = {}
    for n in nodes.values():
        cell = table.setdefault(f"{n.setting}/s{n.seed}", {}).setdefault(n.kind, [0, 0])
        cell[1 if n.stored else 0] += 1
    return {
        "stages": len(nodes),
        "to_train": sum(not n.stored for n in nodes.values()),
        "reused": sum(n.stored for n in nodes.values()),
        "per_seed": table,
        "critical_path_s": cp,
        "critical_path": [f"{nodes[s].kind}({nodes[s].setting}/s{nodes[s].seed})" for s in chain],
        "makespan_s": makespan,
        "cluster": cluster.describe(),
        "workers": workers,
        "cpus_per_worker": cpw,
        "cpu_hours": worker_s * cpw / 3600,
        "gpu_hours": gpu_s / 3600,
        "gpus_per_worker": share,  # single-worker stages; DDP ranks: whole GPUs
        "gpus_asked": gpus_per_worker,
        "stages_per_gpu": per_gpu,
        "sources": {s: costs[s].source for s in {n.shape for n in nodes.values()} if s in costs},
        "durations": duration,
        "note": _cpu_speed_note(cluster, costs),
    }


def _hms(seconds: float) -> str:
    if math.isnan(seconds):
        return "unknown"
    h, rest = divmod(int(round(seconds)), 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def _gpu_lines(plan: dict) -> list[str]:
    """GPUs per stage and stages at once per GPU (GPU clusters only)."""
    from raykd.plan.gpus import describe_gpus

    if not plan.get("gpus_per_worker"):
        if not plan.get("gpus_asked"):
            return []
        asked = describe_gpus(plan["workers"], plan["gpus_asked"])
        return [
            f"  GPUs per stage: {asked} asked for, but this cluster has no GPU (plan a GPU "
            "cluster with --cluster NODESxCPUScpuGPUSgpu, e.g. 1x16cpu1gpu); concurrency per "
            "GPU: none; 0 GPU-hours"
        ]
    return [
        f"  GPUs per stage: {describe_gpus(plan['workers'], plan['gpus_per_worker'])}; "
        f"concurrency per GPU: {plan['stages_per_gpu']} stage(s) at once"
    ]


def format_plan(plan: dict, title: str) -> str:
    """The plan as ``--plan`` prints it."""
    from raykd.plan.cost import KINDS, describe_workers

    lines = [
        f"plan {title}: {plan['stages']} stages, {plan['to_train']} to train, "
        f"{plan['reused']} reused from the store",
        "  per setting/seed: kind trains+reused",
    ]
    for key, kinds in plan["per_seed"].items():
        cells = "  ".join(f"{k} {kinds[k][0]}+{kinds[k][1]}" for k in KINDS if k in kinds)
        lines.append(f"    {key:24s} {cells}")
    chain = " -> ".join(plan["critical_path"]) or "(nothing to train)"
    lines += [
        f"  critical path {_hms(plan['critical_path_s'])}: {chain}",
        f"  cluster {plan['cluster']}, workers per kind {describe_workers(plan['workers'])}, "
        f"{plan['cpus_per_worker']} CPU(s) per worker",
        *_gpu_lines(plan),
        f"  estimate: wall-clock {_hms(plan['makespan_s'])}, {plan['cpu_hours']:.2f} CPU-hours, "
        f"{plan['gpu_hours']:.2f} GPU-hours (ideal DDP scaling; per-worker speed as measured)",
        "  per-epoch costs from:",
    ]
    if plan.get("note"):
        lines.insert(-1, f"  note: {plan['note']}")
    for shape, source in sorted(plan["sources"].items()):
        lines.append(f"    {shape}: {source}")
    return "\n".join(lines)
