"""Where a run root lives: a local folder (the default) or an object store (``s3://bucket/prefix``).

Every process works in a local folder: for a local ``--root`` the folder itself, for an object
store this node's private *working copy* (``$RAYKD_CACHE/roots/<digest of the URI>``, marked
with the URI it mirrors). The stage store talks to one :class:`RootStorage` for what must be
shared between nodes and jobs: reading and pulling a stage's files, pushing them, publishing a
finished stage's record exactly once, claiming a stage, and the storage Ray Train/Tune use.
:class:`~raykd.storage.local.LocalStorage` does each with POSIX (files, ``fcntl`` locks, atomic
renames: exactly what a local root always did); :class:`~raykd.storage.s3.ObjectStorage` with
the object store's atomic primitives (whole-object puts, ``If-None-Match``/``If-Match``
conditional writes), never by listing then writing.

Credentials and the endpoint come from the usual environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``); no secret is
ever part of a URI, a message or a file raykd writes.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Any, Protocol

from raykd.paths import cache_dir, default_run_root

MARKER = ".raykd-storage"  # in a working copy: the URI of the object store it mirrors
SCHEMES = ("s3",)


class RootStorage(Protocol):
    """What the stage store needs from where the run root lives (local folder or bucket)."""

    uri: str  # what to show: the folder or the object-store URI (never a secret)
    local: Path  # this process's folder for the root (the root itself, or a working copy)
    shared: bool  # whether every process sees ``local`` itself (a local or shared folder)

    def read_text(self, rel: str) -> str | None: ...

    def pull(self, rel: str) -> None: ...

    def push(self, rel: str) -> None: ...

    def publish(self, rel: str, text: str) -> bool: ...

    def move_aside(self, rel: str, aside: str) -> str: ...

    def claim(self, name: str, poll_s: float) -> contextlib.AbstractContextManager[None]: ...

    def append_line(self, rel: str, line: str) -> None: ...

    def read_lines(self, rel: str) -> list[dict[str, Any]]: ...

    def ray_storage(self, rel: str) -> tuple[str, Any]: ...


def is_uri(root: str | Path | None) -> bool:
    return root is not None and "://" in str(root)


def resolve_root(root: str | Path | None) -> Path:
    """``--root`` as this process's folder: a local path resolved (the default when None), an
    object-store URI checked now (a bad endpoint, a missing bucket, denied credentials or an
    unknown scheme end here, in one line) and mapped to this node's working copy."""
    if not is_uri(root):
        return Path(root or default_run_root()).expanduser().resolve()
    return open_uri(str(root)).local


def working_copy(uri: str) -> Path:
    """This node's private folder for ``uri`` (``$RAYKD_CACHE`` tells nodes apart)."""
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return cache_dir() / "roots" / digest


_OPEN: dict[tuple[str, Path, str | None], RootStorage] = {}  # one client per store and copy


def open_uri(uri: str, local: Path | None = None, check: bool = True) -> RootStorage:
    """The object store at ``uri`` seen through ``local`` (default: this node's working copy);
    ``check``: reach the bucket now (a fresh client: the environment may have changed)."""
    from raykd.storage.s3 import ObjectStorage, endpoint, parse_uri

    bucket, prefix = parse_uri(uri)
    local = local or working_copy(f"s3://{bucket}/{prefix}".rstrip("/"))
    key = (uri, local, endpoint())
    storage = None if check else _OPEN.get(key)
    if storage is None:
        storage = ObjectStorage(bucket, prefix, local)
    if check:
        storage.check()
    local.mkdir(parents=True, exist_ok=True)
    (local / MARKER).write_text(storage.uri + "\n")
    _OPEN[key] = storage
    return storage


def storage_for(root: str | Path) -> RootStorage:
    """The storage of a root folder: its object store when it is a working copy, else itself.
    A URI is accepted too (a Ray worker on another node gets the root as its URI)."""
    if is_uri(root):
        return open_uri(str(root), check=False)
    from raykd.storage.local import LocalStorage

    local = Path(root).expanduser().resolve()
    marker = local / MARKER
    if marker.is_file():
        return open_uri(marker.read_text().strip(), local, check=False)
    return LocalStorage(local)


def root_uri(root: str | Path) -> str:
    """What every node can open: the object-store URI of a working copy, else the folder."""
    marker = Path(root) / MARKER
    return marker.read_text().strip() if marker.is_file() else str(root)
