"""Clean interrupts of a job's driver: SIGTERM and SIGINT end it with one line and exit 143/130.

Ray's driver installs a C-level SIGTERM handler (glog) that prints a stack and aborts with 134;
a job replaces it, once Ray is up, with one that raises :class:`JobInterrupted` in the main
thread. The job then records what finished (from the stage folders, the source of truth: a stage
finished by a trial whose driver died before recording it still counts), marks its MLflow run
KILLED and tells the user the command that resumes.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
from pathlib import Path


class JobInterrupted(BaseException):
    """The driver got SIGTERM or SIGINT; ``exit_code`` is 128 + the signal number.

    Not a KeyboardInterrupt: libraries (Tune's loop) catch and re-raise those as their own."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.signame = signal.Signals(signum).name
        self.exit_code = 128 + signum
        super().__init__(self.signame)


_received: list[JobInterrupted] = []


def received() -> JobInterrupted | None:
    """The interrupt this process got, if any. Raised inside Ray's C extension the exception may
    surface as a ``SystemError`` whose cause it is; callers ask here instead of by type."""
    return _received[0] if _received else None


def install_handlers() -> None:
    """Raise :class:`JobInterrupted` on SIGTERM/SIGINT (main thread only; elsewhere a no-op)."""

    def handler(signum, _frame):
        # Once: a second signal while the job records its state must not cut that short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _received.append(JobInterrupted(signum))
        raise _received[0]

    # Tune's own SIGINT handler would end the run "gracefully" and return as if it had
    # finished; the job wants to know it was interrupted.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread (a job started from a test's worker thread)
        pass


def resume_command() -> str:
    """The command line that started this process, as the user would type it again."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(".py"):
        return "python " + shlex.join(argv)
    return shlex.join([Path(argv[0]).name, *argv[1:]]) if argv else "the same command"


def stage_progress(stage_dirs: list[Path], since: float) -> tuple[list[str], list[str]]:
    """``(finished, interrupted)`` stage ids among ``stage_dirs`` since ``since`` (epoch s):
    finished = ``result.json`` written since; interrupted = a ``last.pt`` written since but no
    result (it resumes from there)."""
    finished, interrupted = [], []
    for folder in stage_dirs:
        result, last = folder / "result.json", folder / "last.pt"
        if result.is_file():
            if result.stat().st_mtime >= since:
                finished.append(folder.name)
        elif last.is_file() and last.stat().st_mtime >= since:
            interrupted.append(folder.name)
    return sorted(finished), sorted(interrupted)
