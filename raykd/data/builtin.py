"""Built-in real-anatomy data that works offline on a fresh machine.

The MNI ICBM152 2009a nonlinear symmetric T1 template ships inside the ``nilearn`` wheel, so
every install of raykd has one real-MRI-derived brain volume without any download. Its axial
slices, padded to 240x240, match the paper's MRBrainS setting and the masks in
``../shared/data/masks/brain_240``.

It is ONE template (an average of 152 subjects), cut into contiguous slabs so that a
train/validation split by volume exists at all; the slabs are not independent subjects and
numbers measured on them are for smoke runs and demos, never for reporting.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from raykd import paths
from raykd.data.nifti import load_nifti, nifti_slices
from raykd.data.transforms import center_crop_or_pad
from raykd.data.volumes import write_volume
from raykd.errors import ConfigError, DataError

MNI152_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
MANIFEST = "manifest.json"
# Bump when the preparation changes, so old caches are rebuilt instead of silently reused.
MNI152_FORMAT = 1
# Axial slices with less brain than this fraction of the slice are dropped.
MNI152_MIN_FOREGROUND = 0.05

MNI152_COPYRIGHT = (
    "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal "
    "Neurological Institute, McGill University. Permission to use, copy, modify, and "
    "distribute this software and its documentation for any purpose and without fee is "
    "hereby granted, provided that the above copyright notice appear in all copies. The "
    "authors and McGill University make no representations about the suitability of this "
    'software for any purpose. It is provided "as is" without express or implied warranty. '
    "The authors are not responsible for any data loss, equipment damage, property loss, or "
    "injury to subjects or patients resulting from the use or misuse of this software package."
)
MNI152_CITATION = (
    "Fonov VS, Evans AC, McKinstry RC, Almli CR, Collins DL. Unbiased nonlinear average "
    "age-appropriate brain templates from birth to adulthood. NeuroImage 47, S102 (2009); "
    "Fonov V, Evans AC, Botteron K, Almli CR, McKinstry RC, Collins DL. Unbiased average "
    "age-appropriate atlases for pediatric studies. NeuroImage 54(1), 313-327 (2011)"
)


def mni152_template_path() -> Path:
    """The template file inside the installed nilearn package (found without importing it).

    ``importlib.util.find_spec`` locates the package directory without running nilearn's
    heavy ``__init__`` (scikit-learn, pandas imports), which would cost seconds per worker.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the built-in MNI152 dataset needs the 'nilearn' package (pip install nilearn), "
            "which ships the template file"
        )
    for root in spec.submodule_search_locations:
        candidate = Path(root) / "datasets" / "data" / MNI152_FILE
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{MNI152_FILE} not found in the nilearn package at "
        f"{list(spec.submodule_search_locations)}; reinstall nilearn (pip install -U nilearn)"
    )


def _cache_is_complete(folder: Path, size: int, n_volumes: int) -> list[Path] | None:
    """The cached files when the manifest matches the request and every file is intact."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if (manifest.get("format"), manifest.get("size"), manifest.get("n_volumes")) != (
            MNI152_FORMAT,
            size,
            n_volumes,
        ):
            return None
        files = []
        for name, nbytes in manifest["files"].items():
            path = folder / name
            if not path.is_file() or path.stat().st_size != nbytes:
                return None
            files.append(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return sorted(files) if len(files) == n_volumes else None


def _build(folder: Path, size: int, n_volumes: int) -> None:
    template = mni152_template_path()
    slices, location, attrs = nifti_slices(
        load_nifti(template), axis=2, min_foreground=MNI152_MIN_FOREGROUND, source=str(template)
    )
    if n_volumes > slices.shape[0]:
        raise ConfigError(
            f"n_volumes={n_volumes} exceeds the {slices.shape[0]} usable MNI152 axial slices"
        )
    slices = center_crop_or_pad(slices, (size, size))
    attrs.update(
        source=f"MNI ICBM152 2009a nonlinear symmetric T1 template ({MNI152_FILE}, nilearn)",
        copyright=MNI152_COPYRIGHT,
        citation=MNI152_CITATION,
        note="contiguous axial slab of one template: not an independent subject; for smoke "
        "runs and demos only",
        n_slabs=n_volumes,
    )
    files: dict[str, int] = {}
    bounds = np.array_split(np.arange(slices.shape[0]), n_volumes)
    for i, idx in enumerate(bounds):
        path = folder / f"mni152_slab{i}.h5"
        slab_attrs = dict(attrs, patient_id=f"mni152_slab{i}", slab=i)
        write_volume(path, slices[idx], attrs=slab_attrs, extra={"slice_location": location[idx]})
        files[path.name] = path.stat().st_size
    (folder / "NOTICE.txt").write_text(
        f"{attrs['source']}\n\n{MNI152_COPYRIGHT}\n\nCite: {MNI152_CITATION}\n"
    )
    manifest = {"format": MNI152_FORMAT, "size": size, "n_volumes": n_volumes, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))


def prepare_mni152(
    cache: str | Path | None = None, size: int = 240, n_volumes: int = 4
) -> list[Path]:
    """Prepare (once) the MNI152 T1 template as ``n_volumes`` h5 slab volumes of size x size.

    Axial slices with at least 5% brain are kept, centre-padded to ``size`` and split into
    contiguous slabs ``mni152_slab0.h5`` ... so that a volume-wise train/val split exists.
    These are slabs of one averaged template, NOT independent subjects: use them for smoke
    runs and demos, not for reported results. The template's copyright notice is kept in each
    file's attrs and in ``NOTICE.txt``.

    Cached under ``<cache or raykd.paths.cache_dir()>/mni152_<size>/``; built in a temporary
    folder then renamed, so a crash never leaves a half cache and concurrent workers either
    reuse a complete cache or build their own and keep whichever landed first.
    """
    if int(size) != size or size < 1:
        raise ConfigError(f"size must be a positive integer, got {size!r}")
    if int(n_volumes) != n_volumes or n_volumes < 1:
        raise ConfigError(f"n_volumes must be a positive integer, got {n_volumes!r}")
    size, n_volumes = int(size), int(n_volumes)
    base = Path(cache).expanduser() if cache is not None else paths.cache_dir()
    base.mkdir(parents=True, exist_ok=True)
    target = base / f"mni152_{size}"
    found = _cache_is_complete(target, size, n_volumes)
    if found is not None:
        return found

    tmp = Path(tempfile.mkdtemp(dir=base, prefix=f".mni152_{size}.tmp"))
    try:
        _build(tmp, size, n_volumes)
        if target.exists():  # stale, incomplete or made for other settings: move it aside
            stale = Path(tempfile.mkdtemp(dir=base, prefix=f".mni152_{size}.old"))
            # OSError: another process replaced it meanwhile; the rename below decides.
            with contextlib.suppress(OSError):
                os.replace(target, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first: use its cache if it is good
            found = _cache_is_complete(target, size, n_volumes)
            if found is None:
                raise DataError(
                    f"{target}: cannot install the prepared MNI152 cache (folder exists and is "
                    "incomplete); delete it and retry"
                ) from None
            return found
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    found = _cache_is_complete(target, size, n_volumes)
    if found is None:  # pragma: no cover - would mean the build wrote a wrong manifest
        raise DataError(f"{target}: prepared MNI152 cache failed its own manifest check")
    return found


def builtin_datasets() -> dict[str, Callable[..., list[Path]]]:
    """Name → preparer of every dataset that needs no download (each returns h5 paths)."""
    return {"mni152": prepare_mni152}
