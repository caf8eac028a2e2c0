"""A job's schedule, read back from its stage folders: who ran what, where, when.

Every stage a job trained (or resumed) left ``result.json`` with its start and end times and
the Ray node that ran rank 0 (:func:`~raykd.orchestration.train_fn.stage_times`); this module
only reads those files (no cross-process plumbing), writes ``<job>-timeline.json`` and a
Gantt-style PNG, and measures how well the schedule used the cluster: peak and mean stage
concurrency, makespan, and the critical-path lower bound from the same stage durations (a KD
student cannot start before its teacher ends, so no cluster finishes faster).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raykd.kinds import STAGE_KINDS
from raykd.orchestration.identity import StageStore
from raykd.orchestration.messages import StageResult

KIND_COLOURS = dict(
    zip(STAGE_KINDS, ("tab:red", "tab:orange", "tab:blue", "tab:green"), strict=True)
)


def stage_entries(store: StageStore, stage_ids: list[str]) -> list[dict[str, Any]]:
    """One entry per finished stage with known times, sorted by start."""
    out = []
    for sid in stage_ids:
        folder = store.stage_dir(sid)
        result = StageResult.read(folder)
        if result is None:
            continue
        done = store.get(sid)
        end = result.finished_at or (done.finished_at if done else None)
        start = result.started_at
        if start is None and end is not None and result.compute_s:
            start = end - result.compute_s  # stages stored before times were recorded
        if start is None or end is None:
            continue
        tags_path = folder / "run_tags.json"
        tags = json.loads(tags_path.read_text()) if tags_path.is_file() else {}
        label = "/".join(
            x
            for x in (
                Path(tags.get("raykd.dataset", "")).name,
                f"{tags['raykd.acceleration']}x" if tags.get("raykd.acceleration") else "",
                f"s{tags['raykd.seed']}" if tags.get("raykd.seed") else "",
                tags.get("raykd.row", ""),
                tags.get("raykd.kd_method", ""),
            )
            if x
        )
        out.append(
            {
                "stage_id": sid,
                "label": label or sid,
                "kind": done.kind if done else sid.split("-")[0],
                "teacher_stage": done.teacher_stage if done else None,
                "node": result.node_id,
                "host": result.host,
                "pid": result.pid,
                "world_size": int((result.compute or {}).get("compute.world_size", 1)),
                "start": start,
                "end": end,
            }
        )
    return sorted(out, key=lambda e: e["start"])


def schedule_stats(entries: list[dict[str, Any]]) -> dict[str, float]:
    """Peak and time-averaged stage concurrency, makespan (first start to last end), the
    critical-path bound from these durations, and their ratio."""
    if not entries:
        return {}
    t0 = min(e["start"] for e in entries)
    makespan = max(e["end"] for e in entries) - t0
    events = sorted([(e["start"], 1) for e in entries] + [(e["end"], -1) for e in entries])
    running = peak = 0
    for _t, step in events:
        running += step
        peak = max(peak, running)
    busy = sum(e["end"] - e["start"] for e in entries)
    by_id = {e["stage_id"]: e for e in entries}
    memo: dict[str, float] = {}

    def chain(sid: str) -> float:
        if sid not in memo:
            e = by_id[sid]
            before = chain(e["teacher_stage"]) if e["teacher_stage"] in by_id else 0.0
            memo[sid] = before + e["end"] - e["start"]
        return memo[sid]

    bound = max(chain(sid) for sid in by_id)
    return {
        "stages": len(entries),
        "makespan_s": round(makespan, 2),
        "critical_path_s": round(bound, 2),
        "makespan_over_critical_path": round(makespan / bound, 3) if bound else float("nan"),
        "peak_concurrency": peak,
        "mean_concurrency": round(busy / makespan, 3) if makespan else float("nan"),
        "stage_seconds": round(busy, 2),
        "nodes": len({e["node"] for e in entries}),
    }


def gantt(entries: list[dict[str, Any]], stats: dict[str, float], path: Path, title: str) -> Path:
    """One bar per stage (coloured by kind), grouped by node, on seconds since the job's first
    stage started."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    t0 = min(e["start"] for e in entries)
    nodes = sorted({e["node"] for e in entries})
    ordered = sorted(entries, key=lambda e: (nodes.index(e["node"]), e["start"]))
    fig, ax = plt.subplots(figsize=(12, 0.22 * len(ordered) + 2))
    for y, e in enumerate(ordered):
        ax.barh(y, e["end"] - e["start"], left=e["start"] - t0, color=KIND_COLOURS.get(e["kind"]))
    ax.set_yticks(range(len(ordered)))
    ax.set_yticklabels(
        [f"n{nodes.index(e['node'])} {e['label']}" for e in ordered],
        fontsize=6 if len(ordered) > 30 else 8,
    )
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first stage started")
    ax.legend(handles=[Patch(color=c, label=k) for k, c in KIND_COLOURS.items()], loc="lower right")
    ax.set_title(
        f"{title}: {stats['stages']} stages on {len(nodes)} node(s); makespan "
        f"{stats['makespan_s']:.0f}s, critical path {stats['critical_path_s']:.0f}s, "
        f"concurrency peak {stats['peak_concurrency']}, mean {stats['mean_concurrency']:.1f}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def log_timeline(job, name: str | None = None) -> dict[str, float]:
    """Write the job's timeline JSON and Gantt PNG, log both and the schedule numbers to the
    job run; returns the numbers ({} when the job trained nothing)."""
    uses = job.ctx.store.uses(job.run_id)
    entries = stage_entries(job.ctx.store, uses["trained"] + uses["resumed"])
    if not entries:
        return {}
    stats = schedule_stats(entries)
    stem = job.root / f"{name or job.name}-{job.run_id[:8]}"
    data = {"stats": stats, "stages": entries}
    json_path = stem.with_name(stem.name + "-timeline.json")
    json_path.write_text(json.dumps(data, indent=1))
    png = gantt(entries, stats, stem.with_name(stem.name + "-timeline.png"), name or job.name)
    job.tracking.log_artifact(job.run_id, json_path, "timeline")
    job.tracking.log_artifact(job.run_id, png, "timeline")
    for path in (json_path, png):  # an object-store root: beside the stages
        job.ctx.store.storage.push(path.name)
    job.tracking.log_metrics(
        job.run_id, {f"schedule.{k}": float(v) for k, v in stats.items() if v == v}
    )
    return stats


def cluster_shape():
    """The connected Ray cluster as a :class:`~raykd.plan.cost.ClusterShape` (the biggest
    node's CPUs and GPUs, times the alive nodes)."""
    import ray

    from raykd.plan.cost import ClusterShape

    alive = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    cpus = max((int(r.get("CPU", 0)) for r in alive), default=1)
    gpus = max((int(r.get("GPU", 0)) for r in alive), default=0)
    return ClusterShape(max(1, len(alive)), max(1, cpus), gpus)


def announce_estimate(job, spec, rows, workers: dict[str, int] | None) -> dict | None:
    """Print and log (job-run params) the plan's estimate for this job on this cluster; None
    when it cannot be made (never fails the job)."""
    from raykd.orchestration.cluster import say
    from raykd.orchestration.estimate import plan_job
    from raykd.plan.cost import parse_workers

    try:
        per_kind = workers or parse_workers(job.resources.workers)
        share = job.resources.gpus_per_worker or None
        plan = plan_job(spec, rows, job.root, cluster_shape(), per_kind, gpus_per_worker=share)
    except Exception as exc:  # noqa: BLE001 - an estimate is advice, not a precondition
        say(f"no estimate ({type(exc).__name__}: {exc})")
        return None
    sources = sorted({s.split(" (")[0] for s in plan["sources"].values()})
    say(
        f"estimate: {plan['to_train']} stage(s) to train, {plan['reused']} reused; wall-clock "
        f"~{plan['makespan_s']:.0f}s (critical path {plan['critical_path_s']:.0f}s) on "
        f"{plan['cluster']}; costs from {', '.join(sources)}"
    )
    job.tracking.log_params(
        job.run_id,
        {
            "estimate.makespan_s": round(plan["makespan_s"], 1),
            "estimate.critical_path_s": round(plan["critical_path_s"], 1),
            "estimate.stages_to_train": plan["to_train"],
            "estimate.cluster": plan["cluster"],
            "estimate.sources": ", ".join(sources),
        },
    )
    return plan


def report_actual(job, plan: dict | None, wall_s: float, stats: dict) -> None:
    """Say and log the estimate against what happened (metrics on the job run)."""
    from raykd.orchestration.cluster import say

    metrics: dict[str, float] = {}
    line = f"actual wall-clock {wall_s:.0f}s"
    if plan is not None and plan["makespan_s"] == plan["makespan_s"]:
        metrics["estimate.makespan_s"] = plan["makespan_s"]
        if plan["makespan_s"]:
            metrics["actual_over_estimate"] = wall_s / plan["makespan_s"]
        line = f"estimate ~{plan['makespan_s']:.0f}s vs " + line
    if stats:
        line += (
            f"; stages ran {stats['makespan_s']:.0f}s end to end, critical path "
            f"{stats['critical_path_s']:.0f}s (x{stats['makespan_over_critical_path']:.2f}), "
            f"concurrency peak {stats['peak_concurrency']}, mean {stats['mean_concurrency']:.1f}"
        )
    say(line)
    if metrics:
        job.tracking.log_metrics(job.run_id, metrics)
