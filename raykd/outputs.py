"""Output guards: a command never writes over its own inputs or over someone else's file.

Every CLI subcommand that writes a file calls :func:`guard_output` before doing any work:

- an output that is one of the inputs (the same file after resolving links and hard links,
  ``os.path.samefile``) is always refused, ``--force`` or not;
- an existing output is overwritten only when it is what this command writes (a previous
  reconstruction, a previous metrics JSON...), otherwise only with ``--force``;
- an existing directory is never replaced by a file.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from raykd.errors import RaykdError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def describe_file(path: Path) -> str:
    """What an existing file looks like, for messages ('HDF5', 'zip (torch)', 'JSON'...)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return "unreadable file"
    if head.startswith(HDF5_SIGNATURE):
        return "HDF5 file"
    if head.startswith(b"PK\x03\x04"):
        return "zip file (torch checkpoint / TorchScript)"
    if head.startswith(b"\x93NUMPY"):
        return "NumPy .npy file"
    if head.lstrip()[:1] in (b"{", b"["):
        return "JSON file"
    if not head:
        return "empty file"
    return "file"


def _h5_attrs(path: Path) -> dict | None:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return {"attrs": dict(f.attrs), "keys": set(f.keys())}
    except OSError:
        return None


def is_reconstruction(path: Path) -> bool:
    """A previous ``raykd reconstruct`` output (HDF5 with a 'checkpoint' attribute)."""
    info = _h5_attrs(path)
    return info is not None and "checkpoint" in info["attrs"] and "target" in info["keys"]


def is_volume(path: Path) -> bool:
    """An h5 volume in raykd's layout (what ``raykd prepare`` writes)."""
    info = _h5_attrs(path)
    return info is not None and "image" in info["keys"]


def is_metrics_json(path: Path) -> bool:
    """A previous ``raykd evaluate`` output (JSON object with 'summary' and 'volumes')."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and "summary" in data and "volumes" in data


def is_torchscript(path: Path) -> bool:
    """A previous ``raykd export`` TorchScript file (zip holding raykd's extra file)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("extra/raykd.json") for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def is_onnx(path: Path) -> bool:
    """ONNX has no magic number: accept a .onnx file that is none of the known other kinds."""
    return path.suffix == ".onnx" and describe_file(path) == "file"


KINDS: dict[str, tuple[str, Callable[[Path], bool]]] = {
    "reconstruction": ("a raykd reconstruction (h5)", is_reconstruction),
    "volume": ("a raykd volume (h5 with 'image')", is_volume),
    "metrics": ("a raykd metrics JSON", is_metrics_json),
    "torchscript": ("a raykd TorchScript export", is_torchscript),
    "onnx": ("an ONNX file", is_onnx),
}


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when both paths exist and are the same file (links resolved)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inputs_under(path: Path) -> Iterable[Path]:
    """An input folder stands for the files in it (evaluate --data folder/)."""
    if path.is_dir():
        yield from sorted(path.glob("*"))
    else:
        yield path


def guard_output(
    out: str | Path,
    inputs: dict[str, str | Path | None],
    kind: str,
    force: bool = False,
    flag: str = "--out",
) -> Path:
    """Refuse to write ``out`` over an input or over an existing file of another kind.

    ``inputs`` maps a flag name ('--input', 'checkpoint') to its path (a folder stands for
    its files). Returns ``out`` as a Path; raises a one-line :class:`RaykdError` otherwise.
    """
    out = Path(out).expanduser()
    for name, value in inputs.items():
        if value is None:
            continue
        for candidate in _inputs_under(Path(value).expanduser()):
            if same_file(out, candidate):
                where = "" if candidate == Path(value).expanduser() else f" (in {value})"
                raise RaykdError(
                    f"{flag} {out} is the input {name} {candidate}{where}; writing it would "
                    "destroy the input: choose another output path"
                )
    if out.is_dir():
        raise RaykdError(f"{flag} {out} is a directory; expected a file path")
    if out.exists():
        label, matches = KINDS[kind]
        if not force and not matches(out):
            raise RaykdError(
                f"{flag} {out} already exists and is not {label} (it is a "
                f"{describe_file(out)}); choose another path or pass --force to overwrite it"
            )
    return out


def guard_output_dir(out: str | Path, flag: str = "--out") -> Path:
    """An output folder may exist (files in it are replaced) but must not be a file."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise RaykdError(f"{flag} {out} is an existing {describe_file(out)}; expected a folder")
    return out
