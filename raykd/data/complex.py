"""Complex-valued data from magnitude sources: a documented smooth synthetic phase.

No real complex raw data ships with raykd or can be downloaded in CI, so complex fixtures and
the reduced complex runs are built from real magnitudes (the built-in MNI152 slabs, the shared
Sunnybrook volumes) times ``exp(iφ)`` with a smooth synthetic phase map φ per slice. Numbers
measured on them exercise the complex code path; they are NOT evidence about real phase (real
phase has coil, B0 and flow contributions a low-order model does not have).

Phase model (per slice, coordinates ``u`` (rows) and ``v`` (columns) in [-1, 1] over the slice)::

    φ(u, v) = c0 + c1·u + c2·v + c3·u² + c4·u·v + c5·v²
              + a · exp(-((u - u0)² + (v - v0)²) / (2 σ²))

with ``c0 ~ U(-π, π)``, ``c1..c5 ~ U(-π/2, π/2)``, ``a ~ U(-π/2, π/2)``, ``u0, v0 ~ U(-0.5, 0.5)``,
``σ ~ U(0.2, 0.5)``, drawn from ``numpy.random.default_rng([seed, crc32(volume name), slice])``:
the same volume name, slice and seed always give the same phase.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np

from raykd import paths
from raykd.data.transforms import center_crop_or_pad
from raykd.data.volumes import IMAGE_KEY, open_h5, write_complex_volume
from raykd.errors import DataError

PHASE_SEED = 0
# Bump when the phase model or the preparation changes: old caches are rebuilt, not reused.
SYNTHETIC_PHASE_FORMAT = 1
MANIFEST = "manifest.json"


def synthetic_phase(shape: tuple[int, int], volume: str, slice_index: int, seed: int = PHASE_SEED):
    """The smooth phase map φ (float32 [H, W], radians) of one slice (module docstring)."""
    rng = np.random.default_rng([seed, zlib.crc32(volume.encode()), slice_index])
    c0 = rng.uniform(-np.pi, np.pi)
    c = rng.uniform(-np.pi / 2, np.pi / 2, size=5)
    a = rng.uniform(-np.pi / 2, np.pi / 2)
    u0, v0 = rng.uniform(-0.5, 0.5, size=2)
    sigma = rng.uniform(0.2, 0.5)
    u = np.linspace(-1.0, 1.0, shape[0])[:, None]
    v = np.linspace(-1.0, 1.0, shape[1])[None, :]
    phi = c0 + c[0] * u + c[1] * v + c[2] * u**2 + c[3] * u * v + c[4] * v**2
    phi = phi + a * np.exp(-((u - u0) ** 2 + (v - v0) ** 2) / (2 * sigma**2))
    return phi.astype(np.float32)


def add_synthetic_phase(magnitude: np.ndarray, volume: str, seed: int = PHASE_SEED) -> np.ndarray:
    """complex64 [N, H, W]: ``magnitude · exp(iφ)`` with one phase map per slice."""
    magnitude = np.asarray(magnitude, dtype=np.float32)
    if magnitude.ndim != 3:
        raise DataError(f"{volume}: magnitude volume must be [N, H, W], got {magnitude.shape}")
    phases = np.stack(
        [synthetic_phase(magnitude.shape[1:], volume, i, seed) for i in range(len(magnitude))]
    )
    return (np.abs(magnitude) * np.exp(1j * phases)).astype(np.complex64)


def make_complex_volume(
    source: str | Path,
    out: str | Path,
    size: tuple[int, int] | None = None,
    seed: int = PHASE_SEED,
) -> Path:
    """A raykd complex volume (``cimage`` + ``image``) from a magnitude volume: centre-cropped
    to ``size`` (none: full size), the synthetic phase of its file stem added."""
    source = Path(source)
    with open_h5(source) as f:
        if IMAGE_KEY not in f:
            raise DataError(f"{source}: missing key '{IMAGE_KEY}' (found {sorted(f.keys())})")
        image = np.asarray(f[IMAGE_KEY], dtype=np.float32)
        attrs = {k: v for k, v in f.attrs.items() if k != "complex"}
    if size is not None:
        image = center_crop_or_pad(image, (int(size[0]), int(size[1])))
    cimage = add_synthetic_phase(image, source.stem, seed)
    attrs.update(
        synthetic_phase=f"raykd.data.complex format {SYNTHETIC_PHASE_FORMAT}, seed {seed}",
        note="magnitude from a real image, phase SYNTHETIC (smooth polynomial + Gaussian): "
        "exercises the complex code path, not evidence about real phase",
    )
    return write_complex_volume(out, cimage, attrs)


def _cached(folder: Path, key: dict) -> list[Path] | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest.get("key") != key:
            return None
        files = [folder / name for name in manifest["files"]]
        for name, nbytes in manifest["files"].items():
            if (folder / name).stat().st_size != nbytes:
                return None
        return sorted(files)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def prepare_synthetic_phase(
    base: str,
    sources: list[Path],
    size: tuple[int, int] | None = None,
    cache: str | Path | None = None,
) -> list[Path]:
    """The complex version of a magnitude source's volumes (``base``: its name), cached.

    Volumes keep their file stems (so splits name them as before) and are cropped to ``size``
    (the data size of the run; cropping before adding the smooth phase changes nothing the run
    sees but keeps the cache small). Built in a temporary folder then renamed, like the MNI152
    cache (:func:`raykd.data.builtin.prepare_mni152`).
    """
    size = (int(size[0]), int(size[1])) if size else None
    key = {
        "format": SYNTHETIC_PHASE_FORMAT,
        "base": base,
        "size": list(size or []),
        "seed": PHASE_SEED,
    }
    key["sources"] = [p.name for p in sources]
    root = Path(cache).expanduser() if cache is not None else paths.cache_dir()
    tag = f"{size[0]}x{size[1]}" if size else "full"
    target = root / f"{base}_complex_{tag}"
    found = _cached(target, key)
    if found is not None:
        return found
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{target.name}.tmp"))
    try:
        files = {}
        for src in sources:
            out = make_complex_volume(src, tmp / src.name, size)
            files[out.name] = out.stat().st_size
        (tmp / MANIFEST).write_text(json.dumps({"key": key, "files": files}, indent=1))
        if target.exists():
            stale = Path(tempfile.mkdtemp(dir=root, prefix=f".{target.name}.old"))
            with contextlib.suppress(OSError):
                os.replace(target, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        with contextlib.suppress(OSError):  # another process finished first: check its cache
            os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    found = _cached(target, key)
    if found is None:
        raise DataError(f"{target}: cannot install the prepared complex cache; delete it, retry")
    return found
