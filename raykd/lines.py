"""raykd's console lines, written through :mod:`logging` (the ``raykd`` logger).

Every line raykd shows during a command or a job goes through :func:`line`, in whatever process
it is written: the driver, a Ray Tune trial or a Ray Train worker. The logger's one handler
writes each line as it is (lines carry their own ``[raykd …]``/``raykd:`` prefix) to the current
``sys.stderr``; in a Ray worker of a quiet job, :mod:`raykd.orchestration.console` points it at
the job's console relay instead, so the line reaches the driver's console without Ray's
``(pid=…)`` prefix. The logger does not propagate: an application's root handlers see nothing
twice, and Ray's own logging setup in workers does not reformat these lines.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

LOGGER = logging.getLogger("raykd")


class LineHandler(logging.Handler):
    """Write each record's message, as is, to ``sink`` (a relay; False: it could not) or to the
    ``sys.stderr`` of the moment (so redirected or captured stderr sees it)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.sink: Callable[[str], bool] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if self.sink is not None and self.sink(text):
                return
            sys.stderr.write(text + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


HANDLER = LineHandler()


def setup() -> logging.Logger:
    """The ``raykd`` logger with :data:`HANDLER` (idempotent)."""
    if HANDLER not in LOGGER.handlers:
        LOGGER.addHandler(HANDLER)
        LOGGER.setLevel(logging.INFO)
        LOGGER.propagate = False
    return LOGGER


def line(text: str) -> None:
    """One console line (already prefixed: ``[raykd] …``, ``[raykd teacher] …``, ``raykd: …``)."""
    setup().info(text)
