"""Start or join Ray, and size trials from what the cluster has (never hard-coded)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from raykd.errors import RaykdError
from raykd.lines import line
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
    this machine recorded (:func:`running_cluster`) if it answers, else a new local Ray.
    """
    from raykd.orchestration.console import quiet_driver, relay_env, start_relay

    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
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
    relay = relay_env()  # before Ray starts: its processes inherit the relay's name
    target = address or os.environ.get("RAY_ADDRESS")
    how = ""
    if not target:
        target = running_cluster()
        how = " (started with `ray start`; --address local runs a private Ray instead)"
    if target and target != "local":
        join_cluster(target, relay)
        message = f"joined the Ray cluster at {target}{how}"
    else:
        start_local_ray(num_cpus, runtime_env=relay)
        message = "started a private local Ray (bound to 127.0.0.1; stops with the job)"
    if start_relay():
        message += "; Ray's own output is hidden (--verbose shows it)"
    say(message)
    return message


def join_cluster(target: str, relay: dict) -> None:
    """Connect to the cluster at ``target``; workers get what :func:`_worker_env` says they
    need and the job does not already give them (read from the job's own runtime env, so a
    first connection without one is made to read it when anything must be added)."""
    _probe(target)
    host = target.removeprefix("ray://").rpartition(":")[0]
    if host in ("127.0.0.1", "localhost", "::1", "[::1]"):
        # A loopback-bound Ray (e.g. another job's private one): Ray would otherwise
        # rewrite 127.0.0.1 to this machine's IP, where that Ray does not listen.
        loopback_only()
    import ray

    from raykd.orchestration.console import ray_logging_level

    quiet = bool(relay)

    def connect(runtime_env: dict | None) -> None:
        try:
            ray.init(
                address=target,
                log_to_driver=not quiet,
                runtime_env=runtime_env,
                logging_level=ray_logging_level(),
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RaykdError(
                f"cannot connect to Ray at {target} ({exc}); start a cluster with `ray start "
                "--head`, or pass --address local to run on a private local Ray"
            ) from exc

    connect(None)
    job_env = dict(ray.get_runtime_context().runtime_env or {})
    extra = _worker_env(target, job_env, relay)
    if extra:
        ray.shutdown()
        connect(extra)


def running_cluster() -> str | None:
    """The address a ``ray start`` on this machine recorded, if a GCS still listens there.

    Ray's documented lookup (``ray.init()`` joins "the latest Ray instance started on the same
    machine using ``ray start``") keeps that address in ``ray_current_cluster`` under Ray's
    temp dir (``$RAY_TMPDIR``, else ``$TMPDIR``, else ``/tmp``, then ``ray/``). Read here as a
    file, before Ray is imported: whether this process's Ray must stay on loopback is decided by
    what is found."""
    base = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    try:
        addr = (Path(base) / "ray" / "ray_current_cluster").read_text().strip()
    except OSError:
        return None
    if not addr:
        return None
    try:
        _probe(addr, timeout_s=1.0)
    except RaykdError:
        return None  # a stale file from a stopped cluster
    return addr


def _worker_env(target: str, job_env: dict, relay: dict | None = None) -> dict:
    """What workers on any node need that the job's own runtime env (``job_env``, e.g. from
    ``ray job submit``) does not give them: raykd itself (``py_modules``: a node without raykd
    installed imports the uploaded copy; not when the job already ships raykd, with
    ``py_modules`` or a ``working_dir`` this raykd was imported from), the commit, the
    cluster's address (Train's placement-group cleaner looks Ray up by address, which is
    ambiguous when several Rays run on one machine), the console relay. Keys the job already
    sets are left to it (Ray refuses conflicting runtime envs). ``{}``: nothing to add."""
    from raykd.tracking.mlflow_store import COMMIT_ENV

    keys = [COMMIT_ENV, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "RAY_USAGE_STATS_ENABLED"]
    # e.g. RAYKD_SHARED_DATA; not RAYKD_CACHE: each node's own folder (and its working copy of
    # an object-store root), which workers on other nodes must not share
    keys += [k for k in os.environ if k.startswith("RAYKD_") and k != "RAYKD_CACHE"]
    env_vars = {k: os.environ[k] for k in keys if os.environ.get(k)}
    if "://" not in target:
        env_vars["RAY_ADDRESS"] = target
    env_vars.update((relay or {}).get("env_vars") or {})
    runtime_env: dict = {}
    if not _job_ships_raykd(job_env):
        runtime_env["py_modules"] = [str(Path(__file__).resolve().parents[1])]
    if relay and "worker_process_setup_hook" not in job_env:
        runtime_env["worker_process_setup_hook"] = relay["worker_process_setup_hook"]
    job_vars = job_env.get("env_vars") or {}
    env_vars = {k: v for k, v in env_vars.items() if job_vars.get(k) != v and k not in job_vars}
    if env_vars:
        runtime_env["env_vars"] = env_vars
    return runtime_env


def _job_ships_raykd(job_env: dict) -> bool:
    """The job's runtime env already gives workers raykd: ``py_modules``, or a ``working_dir``
    that this process's raykd was imported from (``ray job submit --working-dir .`` from a
    checkout: uploading raykd again would ship it twice)."""
    if job_env.get("py_modules"):
        return True
    if not job_env.get("working_dir"):
        return False
    package = Path(__file__).resolve().parents[1]
    return Path.cwd().resolve() in package.parents


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


# Ray's switch for treating a machine as single-node (as on macOS/Windows): the node address
# stays 127.0.0.1 and the GCS/raylet servers bind to it. Ray reads it once, when imported.
SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_single_node = False  # this process imported Ray with the switch set


def loopback_only() -> bool:
    """Make this process's Ray, and every process it starts, treat this machine as a
    single-node install (:data:`SINGLE_NODE_ENV`), so its node address is 127.0.0.1 rather than
    the machine's. Ray reads the switch when it is imported: returns False (and says so) when
    Ray was imported before raykd could set it, e.g. by the caller's own ``import ray``."""
    global _single_node
    os.environ[SINGLE_NODE_ENV] = "0"
    if _single_node:
        return True
    if "ray" in sys.modules:
        say(
            "WARNING: Ray was imported before raykd started it: this Ray uses the machine's "
            "address, not only 127.0.0.1 (import raykd's entry point before ray)"
        )
        return False
    import ray  # noqa: F401  (reads the switch now)

    _single_node = True
    return True


def start_local_ray(
    num_cpus: int | None, log_to_driver: bool | None = None, runtime_env: dict | None = None
) -> None:
    """A local Ray whose every listener is on loopback (:func:`loopback_only`; GCS, raylet,
    agents, workers). Its processes inherit this environment: PYTHONPATH so workers import this
    raykd, and ``RAY_ADDRESS`` = its GCS, so anything inside that looks Ray up by address finds
    this instance and not another one. ``log_to_driver``: None forwards worker output only
    when there is no console relay (``runtime_env`` from :func:`console.relay_env`)."""
    pkg_parent = str(Path(__file__).resolve().parents[2])
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if pkg_parent not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([pkg_parent, *filter(None, paths)])
    port = _free_port()
    keys = ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT", SINGLE_NODE_ENV)
    saved = {k: os.environ.get(k) for k in keys}
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    os.environ["RAY_ADDRESS"] = f"{LOOPBACK}:{port}"
    loopback_only()
    try:
        import ray

        from raykd.orchestration.console import ray_logging_level

        ray.init(
            address="local",
            num_cpus=num_cpus,
            log_to_driver=not runtime_env if log_to_driver is None else log_to_driver,
            logging_level=ray_logging_level(),
            dashboard_host=LOOPBACK,
            runtime_env=runtime_env or None,
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
    line(f"[raykd] {text}")
