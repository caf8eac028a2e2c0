"""A stage's output directory remembers what it trains, so a resume never mixes two runs.

``identity.json`` holds the run's *identity*: the resolved config minus what does not change
the result (where it is written, progress bars, device, loader workers, compile/channels_last,
``optim.epochs`` which a resume may extend), with the teacher checkpoint replaced by a digest
of its content (a moved run directory is still the same teacher). Directories written before
this file existed are identified from the config inside their ``last.pt``.

Resuming into a directory of another identity is refused with one line naming the keys that
differ; ``raykd train --restart`` moves the old run aside first (:func:`move_aside`).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from raykd.errors import ConfigError
from raykd.paths import write_atomic

IDENTITY_FILE = "identity.json"
METRICS_FILE = "metrics.jsonl"  # one JSON record per finished epoch
NOT_IDENTITY = {
    "name",
    "output_dir",
    "progress",
    "resume",
    "device",
    "compile",
    "channels_last",
    "data.num_workers",
    "optim.epochs",
}


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _file_digest(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        return f"missing:{path}"
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"sha256:{h.hexdigest()[:16]}"


def run_identity(config: dict[str, Any]) -> dict[str, Any]:
    """Flat ``{dotted key: value}`` of everything in a resolved config that shapes the result."""
    flat = {k: v for k, v in _flatten(config).items() if k not in NOT_IDENTITY}
    if flat.get("teacher_checkpoint"):
        flat["teacher_checkpoint"] = _file_digest(flat["teacher_checkpoint"])
    return flat


def _stored_identity(out: Path) -> dict[str, Any] | None:
    path = out / IDENTITY_FILE
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            raise ConfigError(
                f"{path}: unreadable run identity; delete the file if the run in {out} is "
                "known to match, or use --restart"
            ) from None
    last = out / "last.pt"
    if last.is_file():  # a run from before identity.json: its checkpoint holds the config
        from raykd.train.checkpoint import checkpoint_config, load_checkpoint

        return run_identity(checkpoint_config(load_checkpoint(last)))
    return None


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _defaults() -> dict[str, Any]:
    from raykd.train.config import StageConfig

    return _flatten(StageConfig.model_construct(kind="teacher").model_dump(mode="json"))


def identity_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key old -> new`` for every key whose value differs.

    A key only one side has (a config field added or removed since the run started) counts
    as its default value, so upgrading raykd does not make every earlier run un-resumable.
    """
    defaults = _defaults()
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, defaults.get(k)), new.get(k, defaults.get(k))
        if a != b:
            out.append(f"{k} {_short(a)} -> {_short(b)}")
    return out


def check_run_dir(config: dict[str, Any], out: str | Path, resuming: bool = True) -> None:
    """Refuse to train into ``out`` when it holds a run of another identity (read only).

    Resuming would mix the two runs; ``resume: false`` would overwrite the other run's
    checkpoints and metrics. Starting the same configuration over in place is allowed.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir {out}: exists and is not a directory")
    if not out.is_dir():
        return
    stored = _stored_identity(out)
    if stored is None:
        return
    diff = identity_diff(stored, run_identity(config))
    if diff:
        shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
        what = "resume it with the same config" if resuming else "resume: false would overwrite it"
        raise ConfigError(
            f"output_dir {out} holds a run of another configuration ({shown}); {what}, "
            "choose another --output-dir, or pass --restart to start over (the old run is "
            "moved aside)"
        )


def write_identity(config: dict[str, Any], out: str | Path) -> None:
    path = Path(out) / IDENTITY_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(run_identity(config), indent=1, sort_keys=True))
    tmp.replace(path)


def start_run_dir(config: dict[str, Any], out: Path, fresh: bool) -> None:
    """Rank 0, before the first epoch: the folder with the run's identity, no stale temporary
    checkpoint, and for a fresh run no history left from an earlier one."""
    from raykd.train.checkpoint import clean_stale_temp

    out.mkdir(parents=True, exist_ok=True)
    clean_stale_temp(out)
    write_identity(config, out)
    if fresh:
        (out / METRICS_FILE).unlink(missing_ok=True)


def append_record(out: Path, record: dict[str, Any]) -> None:
    """One epoch's metrics as a line of ``metrics.jsonl``."""
    with open(out / METRICS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")


def move_aside(out: str | Path) -> Path | None:
    """``--restart``: rename a non-empty run directory to ``<name>.replaced-<UTC time>``."""
    out = Path(out)
    if not out.is_dir() or not any(out.iterdir()):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target = out.with_name(f"{out.name}.replaced-{stamp}")
    n = 1
    while target.exists():
        target = out.with_name(f"{out.name}.replaced-{stamp}-{n}")
        n += 1
    out.rename(target)
    return target


def check_resume_config(ckpt: dict[str, Any], config: dict[str, Any], path: str | Path) -> None:
    """Refuse to resume from a checkpoint trained with another configuration."""
    from raykd.train.checkpoint import checkpoint_config

    if "config" not in ckpt:
        return
    diff = identity_diff(run_identity(checkpoint_config(ckpt)), run_identity(config))
    if diff:
        shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise ConfigError(
            f"checkpoint {path}: trained with another configuration ({shown}); resuming "
            "would mix the two runs: use the same config, or --restart to start over"
        )


def drop_records_after(path: Path, epochs: int) -> int:
    """Keep the first ``epochs`` epochs' records of ``metrics.jsonl``: a run resumed from an
    earlier checkpoint than its last written record (killed between the two) trains those epochs
    again and must not record them twice. Returns how many records were dropped."""
    if not path.is_file():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    keep = [line for line in lines if json.loads(line).get("epoch", 0) <= epochs]
    if len(keep) != len(lines):
        write_atomic(path, "".join(line + "\n" for line in keep))
    return len(lines) - len(keep)
