"""A stage checkpoint named by its object-store URI (``s3://bucket/prefix/stages/<id>/best.pt``)
as a file on this machine, for commands that read one checkpoint (``raykd evaluate``,
``reconstruct``, ``export``): the stage is pulled into this node's working copy of the root and
checked against its record (size and SHA-256 of each checkpoint) through the stage store, as a
job reusing it would. A local path is returned as it is."""

from __future__ import annotations

from pathlib import Path

from raykd.errors import RaykdError
from raykd.orchestration.identity import StageStore
from raykd.storage import is_uri, open_uri


def local_checkpoint(ref: str | Path) -> Path:
    """``ref`` as a local file: a path unchanged, a stage checkpoint's URI pulled and verified."""
    if not is_uri(ref):
        return Path(ref)
    text = str(ref)
    root, sep, rest = text.rpartition("/stages/")
    stage, _, name = rest.partition("/")
    if not sep or not stage or not name or "/" in name:
        raise RaykdError(
            f"{text}: expected a stage checkpoint, <root>/stages/<stage>/<file> "
            "(e.g. s3://bucket/prefix/stages/teacher-0123456789ab/best.pt)"
        )
    store = StageStore(open_uri(root).local)  # reached now: a bad URI ends in one line
    record, problem = store.get_intact(stage)
    if problem is not None:
        raise RaykdError(f"{text}: {problem}")
    folder = store.pull(stage) if record is None else Path(record.output_dir)
    path = folder / name
    if not path.is_file():
        state = "finished" if record is not None else "not finished (no done.json)"
        raise RaykdError(f"{text}: no such object (stage {stage} is {state})")
    return path
