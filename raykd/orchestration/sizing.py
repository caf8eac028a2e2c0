"""Trial sizing from the nodes the cluster has: workers, CPUs and GPUs per worker, trials at once.

:func:`size_trials` is pure (the nodes come in as ``(CPUs, GPUs)`` pairs), so every rule is
tested without a cluster; :func:`plan_resources` reads the nodes from Ray. A request no node can
ever satisfy is refused here, before anything starts, with one line naming the numbers (Ray
Train would otherwise wait for resources forever).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from raykd.errors import RaykdError
from raykd.plan.gpus import stages_per_gpu


@dataclass(frozen=True)
class TrialResources:
    workers: int  # Ray Train workers per stage (DDP ranks); the most any kind gets
    use_gpu: bool
    cpus_per_worker: float
    concurrency: int  # trials at once
    threads: int  # torch threads per worker
    # Workers per stage kind (teacher, sft, student, kd); None: ``workers`` for every kind.
    per_kind: dict[str, int] | None = None
    trial_cpus: float = 0.0  # CPUs one trial's stage shares out over its workers (CPU only)
    # GPU share of a worker of a single-worker stage (0.25: four such stages per GPU); a stage
    # with several workers (DDP) gets a whole GPU per worker. 0 on CPU.
    gpus_per_worker: float = 0.0

    def for_kind(self, kind: str) -> TrialResources:
        """The resources one stage of ``kind`` trains with: its own worker count; on GPU its
        GPU share (whole GPUs for DDP ranks); on CPU the trial's CPU share split over those
        workers (so 1 worker gets all of it)."""
        n = (self.per_kind or {}).get(kind, self.workers)
        if self.use_gpu:
            share = self.gpu_share(n)
            return dataclasses.replace(self, workers=n, per_kind=None, gpus_per_worker=share)
        share = self.trial_cpus or self.cpus_per_worker * self.workers
        cpw = max(1, int(share) // n)
        return dataclasses.replace(self, workers=n, cpus_per_worker=cpw, threads=cpw, per_kind=None)

    def gpu_share(self, workers: int) -> float:
        """GPUs per worker of a stage with ``workers`` ranks (0 on CPU)."""
        if not self.use_gpu:
            return 0.0
        return (self.gpus_per_worker or 1.0) if workers == 1 else 1.0

    def describe(self) -> str:
        def device(r: TrialResources) -> str:
            if not r.use_gpu:
                return f"{r.cpus_per_worker:g} CPU"
            g = r.gpu_share(r.workers)
            return f"{g:g} GPU + {r.cpus_per_worker:g} CPU"

        if self.per_kind and len(set(self.per_kind.values())) > 1:
            each = ", ".join(
                f"{k} {self.for_kind(k).workers} × {device(self.for_kind(k))}"
                for k in self.per_kind
            )
            return f"{self.concurrency} trial(s) at once; workers per stage kind: {each}"
        return (
            f"{self.concurrency} trial(s) at once, each stage on {self.workers} worker(s) × "
            f"{device(self)}"
        )


def worker_groups(
    stages: list[tuple[str, str]], res: TrialResources
) -> list[tuple[list[str], TrialResources]]:
    """Split a chain of ``(stage id, kind)`` where the worker count changes: each part runs as
    one Ray Train run with its kind's workers (order kept, so a teacher still precedes its KD
    students)."""
    parts: list[tuple[list[str], TrialResources]] = []
    for sid, kind in stages:
        r = res.for_kind(kind)
        if parts and parts[-1][1] == r:
            parts[-1][0].append(sid)
        else:
            parts.append(([sid], r))
    return parts


def alive_nodes() -> list[tuple[float, float]]:
    """``(CPUs, GPUs)`` of every alive node of the connected cluster."""
    import ray

    try:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    except Exception:  # an old or odd cluster: its totals as one node
        nodes = [ray.cluster_resources()]
    return [(float(r.get("CPU", 0)), float(r.get("GPU", 0))) for r in nodes]


def plan_resources(
    workers: int | dict[str, int] | None = None,
    max_concurrent: int | None = None,
    cpus_per_worker: int | None = None,
    gpus_per_worker: float | None = None,
) -> TrialResources:
    """:func:`size_trials` on the nodes of the connected Ray cluster."""
    return size_trials(alive_nodes(), workers, max_concurrent, cpus_per_worker, gpus_per_worker)


def size_trials(
    nodes: list[tuple[float, float]],
    workers: int | dict[str, int] | None = None,
    max_concurrent: int | None = None,
    cpus_per_worker: int | None = None,
    gpus_per_worker: float | None = None,
) -> TrialResources:
    """GPU workers when the cluster has GPUs (``gpus_per_worker`` of one for single-worker
    stages, whole GPUs for DDP ranks); else share the CPUs.

    On CPU, DDP gives no speed-up on a small box (2 procs × 1 thread ≈ 1 proc × 2 threads), so
    the default is one worker that uses all CPUs a trial gets. ``workers``: a count for every
    stage kind, or one per kind (the widest kind sizes the trial).
    """
    per_kind = dict(workers) if isinstance(workers, dict) else None
    if per_kind and len(set(per_kind.values())) == 1:
        workers, per_kind = next(iter(per_kind.values())), None
    w = max(per_kind.values()) if per_kind else (workers or 1)
    if any(g > 0 for _, g in nodes):
        plan = _size_gpu(nodes, w, per_kind, cpus_per_worker, gpus_per_worker or 1.0)
    else:
        plan = _size_cpu(nodes, w, per_kind, cpus_per_worker)
    if max_concurrent:
        plan = dataclasses.replace(plan, concurrency=min(plan.concurrency, max_concurrent))
    return plan


def _size_cpu(nodes, w: int, per_kind, cpus_per_worker: int | None) -> TrialResources:
    cpus = max(1, int(sum(c for c, _ in nodes) or 1))
    # Up to 4 CPUs go to one trial (no more than the biggest node has: a worker lives on one
    # node); bigger clusters run several trials at once.
    per_trial = cpus if cpus <= 4 else 4
    node = int(max((c for c, _ in nodes), default=0))
    if node and w == 1:
        per_trial = max(1, min(per_trial, node))
    if cpus_per_worker:  # asked for: e.g. 1 CPU per stage to run many small stages at once
        per_trial = cpus_per_worker * w
    concurrency = max(1, cpus // per_trial)
    cpw = max(1, per_trial // w)
    return TrialResources(w, False, cpw, concurrency, cpw, per_kind, per_trial)


def _describe_nodes(nodes: list[tuple[float, float]]) -> str:
    gpu = [f"{c:g} CPU + {g:g} GPU" for c, g in nodes if g > 0]
    cpu_only = sum(1 for _, g in nodes if g <= 0)
    return "; ".join(gpu) + (f"; {cpu_only} CPU-only node(s)" if cpu_only else "")


def _size_gpu(nodes, w: int, per_kind, cpus_per_worker: int | None, share: float) -> TrialResources:
    """GPU sizing, per node: a worker's CPUs and GPU share must fit on one GPU node."""
    gpu_nodes = [(c, g) for c, g in nodes if g > 0]
    largest = max(c for c, _ in gpu_nodes)
    whole = w > 1  # the widest kind: DDP ranks on whole GPUs
    need = 1.0 if whole else share
    if cpus_per_worker:  # asked for: honoured, if a GPU node has that many
        if cpus_per_worker > largest:
            raise RaykdError(
                f"--cpus-per-worker {cpus_per_worker}: no GPU node has that many CPUs (the "
                f"largest has {largest:g}; nodes: {_describe_nodes(nodes)}); ask for at most "
                f"{largest:g}"
            )
        cpw = cpus_per_worker
    else:  # each worker's share of its node's CPUs, on the node that gives the least
        cpw = max(1, min(math.floor(c / (g * stages_per_gpu(need))) for c, g in gpu_nodes))
        cpw = min(cpw, max(1, int(largest)))
    # Workers of the widest kind that fit at once: per node, by GPUs and by CPUs.
    slots = sum(min(math.floor(g / need + 1e-9), math.floor(c / cpw + 1e-9)) for c, g in gpu_nodes)
    if slots < w:
        gpus = sum(g for _, g in gpu_nodes)
        raise RaykdError(
            f"--workers {w}: a stage needs {w} worker(s) × {need:g} GPU + {cpw:g} CPU at once, "
            f"but the cluster fits {slots} (GPUs {gpus:g}; nodes: {_describe_nodes(nodes)}); "
            f"use --workers {max(1, slots)} or fewer, or fewer --cpus-per-worker"
        )
    concurrency = max(1, slots // w)
    return TrialResources(w, True, cpw, concurrency, int(cpw), per_kind, 0.0, share)
