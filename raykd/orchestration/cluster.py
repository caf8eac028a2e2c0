"""Start or join Ray, and size trials from what the cluster has (never hard-coded)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from raykd.errors import RaykdError
from raykd.orchestration.sizing import (  # noqa: F401 - trial sizing lives there
    TrialResources,
    plan_resources,
    worker_groups,
)

LOOPBACK = "127.0.0.1"


def init_ray(address: str | None = None, num_cpus: int | None = None) -> str:
    """Join a cluster, or start a private local Ray bound to loopback; returns how.

    ``address``: a cluster (``host:port``, ``ray://...``), ``local`` for a private instance,
    or None: ``$RAY_ADDRESS`` (set by ``ray job submit``), else the cluster a ``ray start`` on
    this machine left in ``/tmp/ray/ray_current_cluster`` if it answers, else a new local Ray.
    """
    import ray

    from raykd.orchestration.console import filter_worker_output, quiet_driver, ray_logging_level

    if ray.is_initialized():
        return "already connected"
    quiet_driver()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    from raykd.tracking.mlflow_store import COMMIT_ENV, git_commit

    if commit := git_commit():  # workers run copies of the code without .git
        os.environ[COMMIT_ENV] = commit
    from raykd.paths import shared_data_dir

    if "RAYKD_SHARED_DATA" not in os.environ and shared_data_dir().is_dir():
        # Workers on other nodes import an uploaded copy of raykd: tell them where it is.
        os.environ["RAYKD_SHARED_DATA"] = str(shared_data_dir())
    target = address or os.environ.get("RAY_ADDRESS")
    how = ""
    if not target:
        target = running_cluster()
        how = " (started with `ray start`; --address local runs a private Ray instead)"
    if target and target != "local":
        _probe(target)
        host = target.removeprefix("ray://").rpartition(":")[0]
        if host in ("127.0.0.1", "localhost", "::1", "[::1]"):
            # A loopback-bound Ray (e.g. another job's private one): Ray would otherwise
            # rewrite 127.0.0.1 to this machine's IP, where that Ray does not listen.
            loopback_only()
        try:
            ray.init(
                address=target,
                log_to_driver=True,
                runtime_env=_worker_env(target),
                logging_level=ray_logging_level(),
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RaykdError(
                f"cannot connect to Ray at {target} ({exc}); start a cluster with `ray start "
                "--head`, or pass --address local to run on a private local Ray"
            ) from exc
        message = f"joined the Ray cluster at {target}{how}"
    else:
        start_local_ray(num_cpus)
        message = "started a private local Ray (bound to 127.0.0.1; stops with the job)"
    if filter_worker_output():
        message += "; Ray's own output is hidden (--verbose shows it)"
    say(message)
    return message


def running_cluster() -> str | None:
    """The address a ``ray start`` on this machine recorded, if a GCS still listens there."""
    try:
        from ray._private.services import find_bootstrap_address

        addr = find_bootstrap_address(None)
    except Exception:  # private API: a changed Ray means "none found", never a crash
        return None
    if not addr:
        return None
    try:
        _probe(addr, timeout_s=1.0)
    except RaykdError:
        return None  # a stale file from a stopped cluster
    return addr


def _worker_env(target: str) -> dict:
    """What workers on any node need: raykd itself (``py_modules``: a node without raykd
    installed imports the uploaded copy), the commit, the cluster's address (Train's
    placement-group cleaner looks Ray up by address, which is ambiguous when several Rays run
    on one machine). Keys the submitted job already sets are left to it (Ray refuses
    conflicting runtime envs)."""
    import json

    from raykd.tracking.mlflow_store import COMMIT_ENV

    keys = [COMMIT_ENV, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "RAY_USAGE_STATS_ENABLED"]
    # e.g. RAYKD_SHARED_DATA; not RAYKD_CACHE: each node's own folder (and its working copy of
    # an object-store root), which workers on other nodes must not share
    keys += [k for k in os.environ if k.startswith("RAYKD_") and k != "RAYKD_CACHE"]
    env_vars = {k: os.environ[k] for k in keys if os.environ.get(k)}
    if "://" not in target:
        env_vars["RAY_ADDRESS"] = target
    runtime_env: dict = {"py_modules": [str(Path(__file__).resolve().parents[1])]}
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}") or "{}")
    job_env = (job.get("runtime_env") or {}) if isinstance(job, dict) else {}
    if "py_modules" in job_env:
        runtime_env.pop("py_modules")
    taken = set((job_env.get("env_vars") or {}).keys())
    env_vars = {k: v for k, v in env_vars.items() if k not in taken}
    if env_vars:
        runtime_env["env_vars"] = env_vars
    return runtime_env


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def loopback_only() -> None:
    """Make Ray treat this machine as a single-node install, as it does on macOS/Windows: the
    node address stays 127.0.0.1 (Ray otherwise swaps loopback for the machine's IP) and the
    GCS/raylet gRPC servers bind to 127.0.0.1 only. Set in the environment, so every process
    the local Ray starts inherits it, and on the already imported constant for this one."""
    from ray._private import ray_constants

    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def start_local_ray(num_cpus: int | None, log_to_driver: bool = True) -> None:
    """A local Ray whose every listener is on loopback (GCS, raylet, agents, workers: without
    ``_node_ip_address`` they listen on all interfaces). Its processes inherit this
    environment: PYTHONPATH so workers import this raykd, and ``RAY_ADDRESS`` = its GCS, so
    anything inside that looks Ray up by address finds this instance and not another one."""
    import ray

    pkg_parent = str(Path(__file__).resolve().parents[2])
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if pkg_parent not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([pkg_parent, *filter(None, paths)])
    port = _free_port()
    keys = ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    os.environ["RAY_ADDRESS"] = f"{LOOPBACK}:{port}"
    loopback_only()
    try:
        from raykd.orchestration.console import ray_logging_level

        ray.init(
            address="local",
            num_cpus=num_cpus,
            log_to_driver=log_to_driver,
            logging_level=ray_logging_level(),
            _node_ip_address=LOOPBACK,
            dashboard_host=LOOPBACK,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RaykdError(f"cannot start a local Ray ({exc})") from exc
    finally:  # only the processes Ray just started keep them
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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


def say(text: str) -> None:
    print(f"[raykd] {text}", file=sys.stderr, flush=True)
