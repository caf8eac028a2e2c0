"""From a :class:`~raykd.train.config.DataConfig` to datasets: resolve volumes, masks, splits."""

from __future__ import annotations

from pathlib import Path

from raykd.data.dataset import SliceDataset
from raykd.data.masks import CartesianMask, EmptyMask, FixedMask, LowPassMask, MaskFunc
from raykd.data.volumes import find_volumes
from raykd.errors import DataError
from raykd.paths import shared_data_dir

SHARED_PREFIX = "shared:"


def resolve_path(text: str) -> Path:
    """``shared:masks/x.npy`` → under ``$RAYKD_SHARED_DATA``; anything else as given."""
    if text.startswith(SHARED_PREFIX):
        return shared_data_dir() / text[len(SHARED_PREFIX) :]
    return Path(text).expanduser()


def build_mask(cfg) -> MaskFunc:
    allow_full = bool(getattr(cfg, "allow_full", False))
    if cfg.kind == "file":
        path = resolve_path(cfg.path)
        if cfg.path.startswith(SHARED_PREFIX) and not path.is_file():
            raise DataError(
                f"the paper's fixed mask {cfg.path} is not at {path} (RAYKD_SHARED_DATA); get "
                "the shared data, or plan with Cartesian masks: fixed_masks: false in the "
                "preset (--no-fixed-masks)"
            )
        return FixedMask(path, allow_full=allow_full)
    if cfg.kind.startswith("fastmri_"):
        from raykd.data.fastmri_masks import FastMRIMask

        fraction = getattr(cfg, "center_fraction", None)
        kind = cfg.kind.removeprefix("fastmri_")
        return FastMRIMask(kind, cfg.acceleration, fraction, seed=cfg.seed)
    return CartesianMask(
        acceleration=cfg.acceleration,
        seed=cfg.seed,
        num_low=cfg.num_low,
        per_volume=cfg.per_volume,
        allow_full=allow_full,
    )


def source_volumes(source: str, size: tuple[int, int] | None = None) -> list[Path]:
    """All volumes of a source: a built-in name, 'sunnybrook', or a folder / file of h5."""
    if source == "mni152":
        from raykd.data.builtin import prepare_mni152

        side = max(size) if size else 240
        return prepare_mni152(size=max(side, 240))
    if source == "sunnybrook":
        from raykd.data.sunnybrook import sunnybrook_volumes

        return list(sunnybrook_volumes().values())
    if source in ("mni152_complex", "sunnybrook_complex"):
        from raykd.data.complex import prepare_synthetic_phase

        base = source[: -len("_complex")]
        return prepare_synthetic_phase(base, source_volumes(base, size), size)
    folder = resolve_path(source)
    own = folder_splits(folder)
    if own is not None:
        return [p for paths in own.values() for p in paths]
    return find_volumes(folder)


SPLIT_FOLDERS = ("train", "val", "test")


def folder_splits(folder: Path) -> dict[str, list[Path]] | None:
    """A folder holding ``train/`` and ``val/`` (and optionally ``test/``) subfolders of h5 is
    split by them (fastMRI's singlecoil_train / singlecoil_val, CC-359's Train / Val)."""
    if not (folder.is_dir() and (folder / "train").is_dir() and (folder / "val").is_dir()):
        return None
    return {s: find_volumes(folder / s) for s in SPLIT_FOLDERS if (folder / s).is_dir()}


def select(volumes: list[Path], names: list[str], source: str, split: str) -> list[Path]:
    """Pick volumes by file stem, stem suffix (``0401`` → ``scd_SCD0000401``) or path."""
    chosen = []
    for name in names:
        as_path = resolve_path(name)
        if as_path.suffix == ".h5" and as_path.is_file():
            chosen.append(as_path)
            continue
        hits = [v for v in volumes if v.stem == name or v.stem.endswith(name)]
        if len(hits) != 1:
            what = "matches no volume" if not hits else f"is ambiguous ({[h.stem for h in hits]})"
            raise DataError(
                f"data.{split}: '{name}' {what} in source '{source}'; available: "
                f"{[v.stem for v in volumes]}"
            )
        chosen.append(hits[0])
    return chosen


def split_volumes(cfg) -> dict[str, list[Path]]:
    """train/val/test volume lists; default split: the source's ``train/``, ``val/`` (``test/``)
    subfolders when it has them (:func:`folder_splits`), else the last volume validates and the
    rest train."""
    volumes = source_volumes(cfg.source, cfg.size)
    splits: dict[str, list[Path]] = {}
    own = folder_splits(resolve_path(cfg.source))
    if own is not None and cfg.train is None and cfg.val is None:
        splits.update({k: v for k, v in own.items() if k != "test" or cfg.test is None})
    for split in ("train", "val", "test"):
        names = getattr(cfg, split)
        if names is not None and split not in splits:
            splits[split] = select(volumes, names, cfg.source, split)
    if "train" not in splits or "val" not in splits:
        if len(volumes) < 2:
            raise DataError(
                f"source '{cfg.source}' has {len(volumes)} volume(s); need >= 2 to split by volume"
            )
        splits.setdefault("val", volumes[-1:])
        used = {p for k in ("val", "test") for p in splits.get(k, [])}
        splits.setdefault("train", [v for v in volumes if v not in used])
    overlap = set(splits["train"]) & (set(splits["val"]) | set(splits.get("test", [])))
    if overlap:
        raise DataError(f"volumes {[p.stem for p in overlap]} are in train and in val/test")
    return splits


def build_sr_mask(sr) -> MaskFunc:
    """Super-resolution replaces the undersampling mask: low-pass, or nothing measured."""
    return LowPassMask(sr.scale) if sr.degradation == "kspace" else EmptyMask()


def build_datasets(cfg) -> dict[str, SliceDataset]:
    mask = build_mask(cfg.mask) if cfg.sr is None else build_sr_mask(cfg.sr)
    datasets = {
        split: SliceDataset(
            paths,
            cfg.size,
            mask,
            # Held-out volumes in full unless limited: evaluation is cheap, the thinning is there
            # to make training fast.
            max_slices=getattr(cfg, "test_slices", None)
            if split == "test"
            else cfg.max_slices_per_volume,
            sr=cfg.sr,
            complex=getattr(cfg, "complex", False),
            kspace=getattr(cfg, "kspace", "simulated"),
        )
        for split, paths in split_volumes(cfg).items()
    }
    if getattr(cfg, "kspace", "simulated") == "measured":
        from raykd.data.dataset import check_one_grid

        for dataset in datasets.values():
            check_one_grid(dataset, cfg.batch_size)
    if getattr(cfg.mask, "per_epoch", False) and "train" in datasets:
        datasets["train"].per_epoch = True  # Trainer calls set_epoch; val/test keep theirs
    return datasets
