"""A run root on a local (or shared POSIX) folder: files, ``fcntl`` locks and atomic renames.

This is how the stage store always worked; an object store only adds what a folder every node
sees gives for free (see :mod:`raykd.storage.s3`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from raykd.paths import write_atomic
from raykd.strict_json import read_jsonl


class LocalStorage:
    shared = True  # every process of the root sees this folder itself

    def __init__(self, root: Path) -> None:
        self.local = root
        self.uri = str(root)

    def read_text(self, rel: str) -> str | None:
        path = self.local / rel
        return path.read_text() if path.is_file() else None

    def pull(self, rel: str) -> None:
        """Every process sees the folder itself: nothing to fetch."""

    def push(self, rel: str) -> None:
        """Written in place: nothing to send."""

    def publish(self, rel: str, text: str) -> bool:
        """Write ``text`` atomically (the caller holds the stage's lock)."""
        path = self.local / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text)
        return True

    def move_aside(self, rel: str, aside: str) -> str:
        with contextlib.suppress(FileNotFoundError):  # another trial moved it first
            os.replace(self.local / rel, self.local / aside)
        return str(self.local / aside)

    @contextlib.contextmanager
    def claim(self, name: str, poll_s: float = 2.0) -> Iterator[None]:
        """Exclusive lock (advisory, works across processes on one file system)."""
        path = self.local / "stages" / f"{name}.lock"
        with open(path, "w") as f:
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    time.sleep(poll_s)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def append_line(self, rel: str, line: str) -> None:
        (self.local / rel).parent.mkdir(parents=True, exist_ok=True)
        with open(self.local / rel, "a") as f:
            f.write(line + "\n")

    def read_lines(self, rel: str) -> list[dict[str, Any]]:
        return read_jsonl(self.local / rel)

    def ray_storage(self, rel: str) -> tuple[str, Any]:
        """Ray Train/Tune's ``storage_path`` and ``storage_filesystem`` (None: local)."""
        return str(self.local / rel), None
