"""The stage graph a job needs, its critical path, and a schedule estimate on a cluster shape.

Pure planning (no Ray, no files): :func:`stage_graph` turns rows into distinct stages with
their dependencies (a KD student waits for its teacher or SFT teacher), marking those a store
already holds; :func:`critical_path` is the longest dependency chain by duration (no cluster
finishes faster); :func:`simulate` list-schedules the stages on a :class:`ClusterShape`
(longest remaining chain first, each stage holding its kind's workers), which is how
``raykd grid --plan`` estimates the wall-clock before anything starts.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from raykd.errors import ConfigError
from raykd.kinds import STAGE_KINDS
from raykd.plan.presets import GridSpec
from raykd.plan.rows import Row
from raykd.plan.stages import NO_OVERRIDES, StageOverrides, row_requests

KINDS = STAGE_KINDS


def parse_workers(text: str | int | dict | None) -> dict[str, int]:
    """Workers (DDP ranks) per stage kind from ``4`` (every kind) or ``teacher=4,kd=1`` (kinds
    not named: 1), or a preset's ``workers:`` mapping; ``{}`` for None."""
    if text is None or text == "":
        return {}
    if isinstance(text, int):
        pairs = {k: text for k in KINDS}
    elif isinstance(text, dict):
        pairs = dict(text)
    elif re.fullmatch(r"\s*-?\d+\s*", text):
        if int(text) < 1:
            raise ConfigError(f"--workers {text.strip()}: expected >= 1")
        pairs = {k: int(text) for k in KINDS}
    else:
        pairs = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            kind, eq, value = part.partition("=")
            if not eq or not value.strip().isdigit():
                raise ConfigError(
                    f"--workers {text}: expected N or kind=N[,kind=N...] with kinds {KINDS}"
                )
            pairs[kind.strip()] = int(value)
    bad = sorted(set(pairs) - set(KINDS))
    if bad:
        raise ConfigError(f"workers: unknown stage kind(s) {bad}; expected {list(KINDS)}")
    low = {k: v for k, v in pairs.items() if int(v) < 1}
    if low:
        raise ConfigError(f"workers: {low}: each kind needs >= 1 worker")
    return {k: int(pairs.get(k, 1)) for k in KINDS}


def describe_workers(workers: dict[str, int]) -> str:
    """``teacher=4,sft=4,student=1,kd=1`` (``1`` style when every kind has the same count)."""
    if len(set(workers.values())) == 1:
        return str(next(iter(workers.values())))
    return ",".join(f"{k}={workers[k]}" for k in KINDS if k in workers)


@dataclass(frozen=True)
class ClusterShape:
    """Nodes × (CPUs, GPUs) a plan is estimated for; a GPU holds ``per_gpu`` single-worker
    stages at once (:mod:`raykd.plan.gpus`), a DDP rank a whole GPU."""

    nodes: int
    cpus_per_node: int
    gpus_per_node: int = 0

    def describe(self) -> str:
        gpu = f" + {self.gpus_per_node} GPU" if self.gpus_per_node else ""
        return f"{self.nodes} node(s) × {self.cpus_per_node} CPU{gpu}"

    def worker_slots(self, cpus_per_worker: int, per_gpu: int = 1) -> list[int]:
        """How many workers each node holds at once (GPU: in shares of 1/``per_gpu`` GPU)."""
        if self.gpus_per_node:
            return [self.gpus_per_node * per_gpu] * self.nodes
        return [max(1, self.cpus_per_node // max(1, cpus_per_worker))] * self.nodes


def parse_cluster(text: str) -> ClusterShape:
    """``4x8cpu``, ``2x8gpu`` (8 GPUs per node, CPUs unknown: 8 per GPU), ``4x32cpu8gpu``."""
    m = re.fullmatch(r"\s*(\d+)\s*x\s*(?:(\d+)\s*cpu)?\s*(?:(\d+)\s*gpu)?\s*", text.lower())
    if not m or not (m.group(2) or m.group(3)) or int(m.group(1)) < 1:
        raise ConfigError(f"--cluster {text}: expected NODESxCPUScpu[GPUSgpu], e.g. 4x8cpu, 2x8gpu")
    gpus = int(m.group(3) or 0)
    cpus = int(m.group(2) or 8 * gpus)
    return ClusterShape(int(m.group(1)), max(1, cpus), gpus)


@dataclass
class StageNode:
    """One distinct stage of the job's graph."""

    stage_id: str
    kind: str
    seed: int
    setting: str  # dataset/acceleration[/budget][/fold] (Row.setting)
    epochs: int
    shape: str  # what its per-epoch cost depends on (see :func:`shape_key`)
    teacher: str | None = None
    stored: bool = False  # finished in the store already: reused, costs nothing
    rows: list[str] = field(default_factory=list)


def shape_key(cfg) -> str:
    """A stage's per-epoch cost depends on its kind, models, slice size, slices and batch only
    (not on seed, KD method weights or epochs): stages sharing this key share a cost."""
    d = cfg.data
    roles = {"teacher": ("teacher",), "student": ("student",)}.get(cfg.kind, ("teacher", "student"))
    models = [
        f"{m.arch}-D{m.depth}C{m.cascades}-ch{m.channels}"
        for m in (getattr(cfg, role) for role in roles)
    ]
    return "|".join(
        [
            cfg.kind,
            *models,
            f"{d.source}",
            f"{d.size[0]}x{d.size[1]}",
            f"slices{d.max_slices_per_volume or 'all'}",
            f"b{d.batch_size}",
            cfg.precision,
            *(["cuda"] if cfg.device.startswith("cuda") else []),  # GPU stages cost otherwise
        ]
    )


def stage_graph(
    spec: GridSpec,
    rows: list[Row],
    stored: Callable[[str], bool] = lambda _sid: False,
    overrides: StageOverrides = NO_OVERRIDES,
) -> dict[str, StageNode]:
    """Every distinct stage the rows need (dependencies first), with the rows using it."""
    nodes: dict[str, StageNode] = {}
    for row in rows:
        for req in row_requests(spec, row, overrides):
            sid = req.stage_id
            if sid not in nodes:
                nodes[sid] = StageNode(
                    stage_id=sid,
                    kind=req.cfg.kind,
                    seed=row.seed,
                    setting=row.setting,
                    epochs=req.cfg.optim.epochs,
                    shape=shape_key(req.cfg),
                    teacher=req.teacher_id,
                    stored=stored(sid),
                )
            nodes[sid].rows.append(row.label)
    return nodes


def critical_path(
    nodes: dict[str, StageNode], duration: dict[str, float]
) -> tuple[float, list[str]]:
    """The longest chain of stages to train (stored ones cost 0) and its length in seconds."""
    best: dict[str, tuple[float, list[str]]] = {}

    def chain(sid: str) -> tuple[float, list[str]]:
        if sid not in best:
            node = nodes[sid]
            own = 0.0 if node.stored else duration.get(sid, 0.0)
            before = chain(node.teacher) if node.teacher in nodes else (0.0, [])
            best[sid] = (before[0] + own, before[1] + ([] if node.stored else [sid]))
        return best[sid]

    if not nodes:
        return 0.0, []
    return max((chain(sid) for sid in nodes), key=lambda c: c[0])


def simulate(
    nodes: dict[str, StageNode],
    duration: dict[str, float],
    workers: dict[str, int],
    cluster: ClusterShape,
    cpus_per_worker: int = 1,
    per_gpu: int = 1,
) -> float:
    """Makespan of a list schedule: ready stages start longest-remaining-chain first on the
    first node with room for all their workers (Ray Train packs a stage's workers; a stage
    wider than any node spreads over free slots). On GPUs a single-worker stage takes one
    share (1/``per_gpu`` GPU), a DDP rank a whole GPU (``per_gpu`` shares)."""
    todo = {sid: n for sid, n in nodes.items() if not n.stored}
    if not todo:
        return 0.0
    rest = _remaining_chains(todo, duration)
    free = cluster.worker_slots(cpus_per_worker, per_gpu)
    total = sum(free)
    running: list[tuple[float, str, list[tuple[int, int]]]] = []
    done: set[str] = set()
    now = 0.0
    while len(done) < len(todo):
        ready = sorted(
            (
                s
                for s in todo
                if s not in done
                and all(s != r[1] for r in running)
                and (todo[s].teacher not in todo or todo[s].teacher in done)
            ),
            key=lambda s: -rest[s],
        )
        for sid in ready:
            n = workers.get(todo[sid].kind, 1)
            taken = _place(min(n * (per_gpu if n > 1 else 1), total), free)
            if taken is None:
                continue
            for i, k in taken:
                free[i] -= k
            running.append((now + duration.get(sid, 0.0), sid, taken))
        running.sort()
        end, sid, taken = running.pop(0)
        now = end
        for i, k in taken:
            free[i] += k
        done.add(sid)
    return now


def _remaining_chains(todo: dict[str, StageNode], duration: dict[str, float]) -> dict[str, float]:
    """Per stage: its duration plus its longest chain of dependants still to train."""
    children: dict[str, list[str]] = {}
    for sid, n in todo.items():
        if n.teacher in todo:
            children.setdefault(n.teacher, []).append(sid)
    tail: dict[str, float] = {}

    def rest(sid: str) -> float:
        if sid not in tail:
            tail[sid] = duration.get(sid, 0.0) + max(
                (rest(c) for c in children.get(sid, [])), default=0.0
            )
        return tail[sid]

    return {sid: rest(sid) for sid in todo}


def _place(need: int, free: list[int]) -> list[tuple[int, int]] | None:
    """(node, workers) taken for a stage of ``need`` workers: the first node with room for all
    of them, else spread over the free slots; None when the cluster has too few free."""
    node = next((i for i, f in enumerate(free) if f >= need), None)
    if node is not None:
        return [(node, need)]
    if sum(free) < need:
        return None
    taken, left = [], need
    for i, f in enumerate(free):
        if left and f:
            taken.append((i, min(f, left)))
            left -= min(f, left)
    return taken
