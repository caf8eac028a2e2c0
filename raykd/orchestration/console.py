"""What a job prints: raykd's own lines by default, Ray/Tune/Train/MLflow internals on request.

Every line raykd writes during a job starts with :data:`PREFIX` (``[raykd``), wherever it is
written: the driver, a Tune trial actor or a Ray Train worker. Ray forwards the stdout/stderr of
every worker process to the driver (``log_to_driver``); in quiet mode (the default) the driver's
printer of those lines is replaced by one that keeps raykd's lines only, without Ray's
``(RayTrainWorker pid=…)`` prefix. So Train V2's per-epoch "Checkpoint successfully created" /
"Reporting training result" lines, the controller's resource requests, known-harmless error
lines (``GetTimeoutError`` in "Failed to send resource request", ``core_worker.cc``'s
``PreemptionWatcher``) and MLflow's chatter inside workers never reach the console; they stay in
Ray's log files (``/tmp/ray/session_latest/logs``). On the driver itself, Tune's tables are off
(``verbose=0``) and the ``ray``/``mlflow`` loggers print errors only. ``--verbose`` (or
``RAYKD_VERBOSE=1``) leaves all of it as Ray prints it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

PREFIX = "[raykd"
# Lines raykd's data layer writes from any process (a volume it crops or skips) keep this one.
DATA_PREFIX = "raykd:"
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
    resets its loggers when imported: its level goes through ``MLFLOW_LOGGING_LEVEL``), and Tune
    uses its classic reporter, which ``verbose=0`` silences (Tune's new one prints the
    experiment's table and paths whatever the verbosity)."""
    if is_verbose():
        return
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
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


def tune_verbosity() -> int:
    """``tune.RunConfig(verbose=…)``: 0 drops the trial's config table and the status table
    every 30 s (stage results reach the console as raykd's own lines)."""
    return 1 if is_verbose() else 0


def raykd_lines(lines: list[str]) -> list[str]:
    """The lines raykd wrote (:data:`PREFIX`, :data:`DATA_PREFIX`) in a batch of a worker's
    output."""
    return [line for line in lines if line.lstrip().startswith((PREFIX, DATA_PREFIX))]


def _print_raykd_lines(data: dict[str, Any]) -> None:
    keep = raykd_lines(list(data.get("lines") or []))
    if keep:
        sink = sys.stderr if data.get("is_err") else sys.stdout
        sink.write("".join(line + "\n" for line in keep))
        sink.flush()


def filter_worker_output() -> bool:
    """Quiet mode, after ``ray.init(log_to_driver=True)``: print only raykd's lines of what Ray
    forwards from worker processes. Returns whether the filter is in place (Ray's printer is a
    private hook: a Ray that moved it keeps printing everything, never fails the job)."""
    if is_verbose():
        return False
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return False
    names = [name for name, _ in getattr(dispatcher, "handlers", [])]
    if "ray_print_logs" not in names:
        return False
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", _print_raykd_lines)
    return True


def progress(index: int | None, total: int | None, label: str, kind: str) -> str:
    """How a stage is announced: ``stage 3/14  sft_kd-at-D3C5 … (kd)`` (no k/N when the job
    does not know how many stages it needs, e.g. a search)."""
    where = f"stage {index}/{total}" if index and total else "stage"
    return f"{where}  {label} ({kind})"
