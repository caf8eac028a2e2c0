"""User-facing errors.

Everything a user can cause (bad file, bad key, bad value) raises :class:`RaykdError` with a
message that names the file/key/value and what was expected. The CLI and job scripts print the
message and exit non-zero instead of showing a traceback.
"""

from __future__ import annotations

import errno
import re


class RaykdError(Exception):
    """An error caused by input (files, configs, arguments), with a message meant for users."""


class DataError(RaykdError):
    """A data file is missing, unreadable, malformed or holds invalid values."""


class ConfigError(RaykdError):
    """A configuration file or override is invalid."""


class CheckpointError(RaykdError):
    """A checkpoint is missing, corrupt or does not match the model it is loaded into."""


_EXC_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception|Interrupt)): (.+)$")


def error_summary(error: BaseException | str) -> str:
    """The root cause of an error as one whole line: the innermost ``SomeError: message`` of a
    (possibly nested, Ray-wrapped) traceback text, never cut at a fixed width. A message that
    spans lines (raykd's own, naming files) keeps its first line."""
    text = str(error)
    lines = text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if m := _EXC_LINE.match(lines[i]):
            name, message = m.groups()
            if name in ("RaykdError", "WorkerGroupError", "TrainingFailedError", "RayTaskError"):
                continue  # wrappers: the cause is further in
            return f"{name}: {message.strip()}"
    first = next((line.strip() for line in lines if line.strip()), "")
    return first or type(error).__name__


_OS_CAUSES = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
}


def run_cli(fn, args, prog: str, interrupted: str = "checkpoints written so far are intact") -> int:
    """Run a command: user errors print one line and exit 2, Ctrl-C exits 130, never a traceback
    (``RAYKD_DEBUG=1`` re-raises to show one)."""
    import os
    import sys

    try:
        return int(fn(args) or 0)
    except RaykdError as exc:
        if os.environ.get("RAYKD_DEBUG"):
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # Disk full, read-only file system, permissions: one line naming the path and cause.
        if os.environ.get("RAYKD_DEBUG") or exc.errno not in _OS_CAUSES:
            raise
        where = f" {exc.filename}" if exc.filename else ""
        print(f"{prog}: error: cannot write{where}: {_OS_CAUSES[exc.errno]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted ({interrupted})", file=sys.stderr)
        return 130
    except BaseException as exc:
        # A job's interrupt (raykd.orchestration.interrupt.JobInterrupted) carries its own line
        # and exit code (143 SIGTERM, 130 SIGINT).
        code = getattr(exc, "exit_code", None)
        if code is None or not exc.args:
            raise
        print(f"{prog}: {exc.args[0]}", file=sys.stderr)
        sys.stderr.flush()
        sys.stdout.flush()
        return int(code)
