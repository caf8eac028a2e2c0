"""Start or join Ray, and size trials from what the cluster has (never hard-coded)."""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from raykd.errors import RaykdError


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join ``address`` / ``$RAY_ADDRESS`` (set by ``ray job submit``) or start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    # Workers must import raykd: make the package's parent importable for them.
    pkg_parent = str(Path(__file__).resolve().parents[2])
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if pkg_parent not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([pkg_parent, *filter(None, paths)])
    target = address or os.environ.get("RAY_ADDRESS")
    if target:
        _probe(target)
    try:
        if target:
            ray.init(address=target, log_to_driver=True)
        else:
            ray.init(address="local", num_cpus=num_cpus, log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RaykdError(
            f"cannot connect to Ray at {target or 'a new local instance'} ({exc}); start a "
            "cluster with `ray start --head` or unset RAY_ADDRESS to run locally"
        ) from exc


def _probe(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, with the address in the message, when nothing listens there (ray.init
    itself retries for minutes)."""
    import socket

    hostport = address.removeprefix("ray://")
    if hostport in ("auto", "local") or ":" not in hostport:
        return
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return
    except (OSError, ValueError) as exc:
        raise RaykdError(
            f"cannot reach a Ray cluster at {address} ({exc}); start one with `ray start "
            "--head`, or unset RAY_ADDRESS / drop --address to run on a local Ray"
        ) from exc


@dataclass(frozen=True)
class TrialResources:
    workers: int  # Ray Train workers per stage (DDP ranks)
    use_gpu: bool
    cpus_per_worker: float
    concurrency: int  # trials at once
    threads: int  # torch threads per worker

    def describe(self) -> str:
        device = "GPU" if self.use_gpu else f"{self.cpus_per_worker:g} CPU"
        return (
            f"{self.concurrency} trial(s) at once, each stage on {self.workers} worker(s) × "
            f"{device}"
        )


def plan_resources(workers: int | None = None, max_concurrent: int | None = None) -> TrialResources:
    """One GPU per worker when the cluster has GPUs; else share the CPUs.

    On CPU, DDP gives no speed-up on a small box (2 procs × 1 thread ≈ 1 proc × 2 threads), so
    the default is one worker that uses all CPUs a trial gets.
    """
    import ray

    res = ray.cluster_resources()
    cpus = max(1, int(res.get("CPU", 1)))
    gpus = int(res.get("GPU", 0))
    w = workers or 1
    if gpus > 0:
        concurrency = max(1, gpus // w)
        cpus_per_worker = max(1, cpus // gpus)  # feed each GPU's data loading with its share
        plan = TrialResources(w, True, cpus_per_worker, concurrency, cpus_per_worker)
    else:
        # Up to 4 CPUs go to one trial; bigger boxes run several trials of 4 CPUs at once.
        per_trial = cpus if cpus <= 4 else 4
        concurrency = max(1, cpus // per_trial)
        cpus_per_worker = max(1, per_trial // w)
        plan = TrialResources(w, False, cpus_per_worker, concurrency, cpus_per_worker)
    if max_concurrent:
        plan = dataclasses.replace(plan, concurrency=min(plan.concurrency, max_concurrent))
    return plan


def say(text: str) -> None:
    print(f"[raykd] {text}", file=sys.stderr, flush=True)
