"""``--plan`` of ``raykd grid`` / ``raykd search``: the stage graph, critical path and cost
estimate on a cluster shape (GPU clusters: GPUs per stage, stages per GPU, GPU-hours); nothing
starts, no Ray."""

from __future__ import annotations

import argparse


def job_workers(args: argparse.Namespace, spec) -> dict[str, int] | None:
    """Workers per stage kind: --workers, else the preset's ``workers:``, else None (1)."""
    from raykd.errors import ConfigError
    from raykd.plan.cost import parse_workers

    if args.workers:
        try:
            return parse_workers(args.workers)
        except ConfigError:  # pre-flight lists it with every other problem (check_job_flags)
            return None
    return parse_workers(spec.workers) if spec.workers else None


def print_plan(args: argparse.Namespace, spec, rows, title: str) -> int:
    """``--plan``: the stage graph, critical path and estimate; nothing starts."""
    from raykd.orchestration.estimate import format_plan, plan_job, this_machine
    from raykd.plan.cost import parse_cluster, parse_workers
    from raykd.plan.gpus import on_device, spec_gpus_per_worker
    from raykd.storage import resolve_root

    cluster = parse_cluster(args.cluster) if args.cluster else this_machine()
    workers = job_workers(args, spec) or parse_workers(1)
    root = resolve_root(args.root)  # an object store: checked now, its copy on this node
    share = None
    if cluster.gpus_per_node or args.gpus_per_worker is not None:
        share = spec_gpus_per_worker(spec, args.gpus_per_worker)  # refuses a share > 1
    if cluster.gpus_per_node:  # GPU stages: their own identities
        spec = on_device(spec, True)
    plan = plan_job(spec, rows, root, cluster, workers, args.calibrate_steps, share)
    print(format_plan(plan, title))
    return 0
