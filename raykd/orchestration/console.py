"""What a job prints: raykd's own lines by default, Ray/Tune/Train/MLflow internals on request.

Built on public interfaces only: :mod:`logging`, ``ray.init(log_to_driver=…, logging_level=…)``,
a runtime env's ``worker_process_setup_hook``, a named Ray actor, and Tune's ``verbose``.

Every line raykd writes during a job goes through :func:`raykd.lines.line` (the ``raykd``
logger), wherever it is written: the driver, a Tune trial or a Ray Train worker. In quiet mode
(the default) Ray does not forward worker output to the driver (``log_to_driver=False``): Train
V2's per-epoch "Checkpoint successfully created" / "Reporting training result" lines, the
controller's resource requests, known-harmless error lines and MLflow's chatter inside workers
stay in Ray's log files (``/tmp/ray/session_latest/logs``). raykd's own lines travel instead
through the job's console relay: a named actor that every worker process of the job finds
(its name in :data:`RELAY_ENV`; :func:`attach_relay` is the runtime env's
``worker_process_setup_hook``), which the driver empties onto its stderr, without Ray's
``(RayTrainWorker pid=…)`` prefix. On the driver itself, Tune's tables are off (``verbose=0``)
and the ``ray``/``mlflow`` loggers print errors only. ``--verbose`` (or ``RAYKD_VERBOSE=1``)
leaves all of it as Ray prints it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import io
import logging
import os
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from raykd.lines import HANDLER

VERBOSE_ENV = "RAYKD_VERBOSE"
# Driver-side loggers whose INFO/WARNING lines are Ray's or MLflow's business, not the user's.
QUIET_LOGGERS = ("ray", "mlflow", "alembic", "optuna")


HIDDEN_HINT = (
    "Ray's own output (worker tracebacks) was hidden: rerun with --verbose, or read the logs "
    "under /tmp/ray/session_latest/logs"
)


def set_verbose(verbose: bool) -> None:
    """Remember the choice for this process and the Ray processes it starts."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    else:
        os.environ.pop(VERBOSE_ENV, None)


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def ray_logging_level() -> int:
    """The ``logging_level`` for ``ray.init`` (it resets the ``ray`` logger to it)."""
    return logging.INFO if is_verbose() else logging.ERROR


def quiet_driver() -> None:
    """Quiet mode, before Ray starts: the driver's Ray/MLflow loggers print errors only (MLflow
    resets its loggers when imported: its level goes through ``MLFLOW_LOGGING_LEVEL``)."""
    if is_verbose():
        return
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def hushed() -> Iterator[None]:
    """Quiet mode: drop what a library prints itself (MLflow's model registration prints
    "Successfully registered model …" with ``print``); errors still raise."""
    if is_verbose():
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


@contextlib.contextmanager
def tune_quiet() -> Iterator[None]:
    """Quiet mode, around ``Tuner.fit()``: Tune's reporter prints the experiment's header table
    and its paths to stdout whatever ``verbose`` says (Ray 2.60), so stdout is set aside while
    Tune runs. raykd's own lines go to stderr and still show; errors still raise."""
    if is_verbose():
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def tune_verbosity() -> int:
    """``tune.RunConfig(verbose=…)``: 0 drops the trial's config table and the status table
    every 30 s (stage results reach the console as raykd's own lines)."""
    return 1 if is_verbose() else 0


# The console relay of a quiet job: the actor's name, for every Ray process of the job.
RELAY_ENV = "RAYKD_CONSOLE_RELAY"
SETUP_HOOK = "raykd.orchestration.console.attach_relay"
_PUMP: _Pump | None = None


def relay_env() -> dict[str, Any]:
    """Quiet mode, before ``ray.init``: name this job's console relay (in the environment, so
    the processes a local Ray starts inherit it) and return the runtime-env entries that make
    each worker process send raykd's lines to it; ``{}`` in verbose mode."""
    if is_verbose():
        os.environ.pop(RELAY_ENV, None)
        return {}
    os.environ[RELAY_ENV] = f"raykd-console-{uuid.uuid4().hex[:12]}"
    return {"worker_process_setup_hook": SETUP_HOOK, "env_vars": {RELAY_ENV: os.environ[RELAY_ENV]}}


def start_relay() -> bool:
    """Quiet mode, after ``ray.init``: create the relay named by :func:`relay_env` and a driver
    thread that writes what it receives to stderr. Returns whether it runs."""
    global _PUMP
    name = os.environ.get(RELAY_ENV)
    if not name or is_verbose():
        return False
    import ray

    if _PUMP is None:
        relay = ray.remote(num_cpus=0)(_Relay).options(name=name).remote()
        _PUMP = _Pump(relay)
        atexit.register(flush_relay)
    return True


def flush_relay() -> None:
    """Write every line the relay holds now (before the job's summary, and at exit)."""
    if _PUMP is not None:
        _PUMP.take(0.0)


class _Relay:
    """The relay actor: lines in (``put``, one per call, in order), batches out (``take``)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ready = asyncio.Event()

    async def put(self, text: str) -> None:
        self.lines.append(text)
        self.ready.set()

    async def take(self, wait_s: float) -> list[str]:
        if not self.lines and wait_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ready.wait(), wait_s)
        out, self.lines = self.lines, []
        self.ready.clear()
        return out


class _Pump:
    """The driver's side: a daemon thread takes batches from the relay and writes them."""

    def __init__(self, relay: Any) -> None:
        self.relay = relay
        self.lock = threading.Lock()
        threading.Thread(target=self._run, name="raykd-console", daemon=True).start()

    def take(self, wait_s: float) -> bool:
        import ray

        with self.lock:  # one batch at a time, written before the next is taken: order kept
            if not ray.is_initialized():  # after ray.shutdown() a call would start a new Ray
                return False
            try:
                lines = ray.get(self.relay.take.remote(wait_s), timeout=wait_s + 30)
            except Exception:  # Ray is shutting down (exit) or gone: nothing more to relay
                return False
            if lines:
                sys.stderr.write("".join(text + "\n" for text in lines))
                sys.stderr.flush()
        return True

    def _run(self) -> None:
        while self.take(0.5):
            pass


def attach_relay() -> None:
    """A Ray worker process's setup hook (quiet mode): raykd's lines go to the job's relay."""
    name = os.environ.get(RELAY_ENV)
    if name:
        HANDLER.sink = _RelaySink(name)


class _RelaySink:
    """Send one line to the relay and wait for it (so a worker's last lines are not lost when
    it exits); False when there is no relay (then the line goes to this process's stderr)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.relay: Any = None
        self.broken = False

    def __call__(self, text: str) -> bool:
        if self.broken:
            return False
        import ray

        try:
            if self.relay is None:
                self.relay = ray.get_actor(self.name)
            ray.get(self.relay.put.remote(text), timeout=30)
            return True
        except Exception:  # no relay (a job's Ray without one) or it is gone: stderr from now
            self.broken = True
            return False


def progress(index: int | None, total: int | None, label: str, kind: str) -> str:
    """How a stage is announced: ``stage 3/14  sft_kd-at-D3C5 … (kd)`` (no k/N when the job
    does not know how many stages it needs, e.g. a search)."""
    where = f"stage {index}/{total}" if index and total else "stage"
    return f"{where}  {label} ({kind})"
