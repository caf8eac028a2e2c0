"""2D slice dataset over h5 volumes.

Each item is a :class:`Sample`: the target slice (centre-cropped/padded, normalised to max 1)
and its mask. The forward model (:func:`raykd.data.transforms.undersample`) runs batched on the
training device, so k-space never goes through the DataLoader.

h5 files are opened once per process (DataLoader workers included) and kept open; the reference
implementation re-opened the file and the mask for every slice.

``kspace="measured"`` (fastMRI single-coil volumes converted on their full measured grid,
``raykd prepare fastmri --kspace measured``): slices are read on that grid, so their k-space is
the file's own and masks span its full phase-encode width; every slice of a volume is scaled by
one number (the volume's peak magnitude), so volume metrics are fastMRI's; ``size`` is then the
crop that is scored (:meth:`SliceDataset.scored`, fastMRI's 320x320), not the input size.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, cast

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from raykd.data.masks import MaskFunc
from raykd.data.transforms import center_crop_or_pad, normalise_max
from raykd.data.volumes import (
    COMPLEX_KEY,
    IMAGE_KEY,
    MEASURED_GRID,
    VolumeInfo,
    find_volumes,
    inspect_volume,
    open_h5,
    phase_encoding,
    scan_volume,
    volume_attr,
)
from raykd.errors import DataError
from raykd.lines import line


class Sample(NamedTuple):
    # float32 [1, H, W], max 1; complex data: [2, H, W] (real, imag), max magnitude 1
    target: torch.Tensor
    mask: torch.Tensor  # float32 [1, H, W], 0/1, uncentred
    volume: int  # index into SliceDataset.volumes
    slice: int  # slice index within the volume


def _subsample(info: VolumeInfo, n: int) -> VolumeInfo:
    """Evenly spaced ``n`` of the volume's usable slices (constant ones already dropped)."""
    usable = info.slice_ids
    pos = np.unique(np.linspace(0, len(usable) - 1, min(n, len(usable))).round().astype(int))
    return dataclasses.replace(info, slice_ids=tuple(int(usable[i]) for i in pos))


class SliceDataset(Dataset[Sample]):
    """All slices of a list of volumes, cropped/padded to ``size``."""

    def __init__(
        self,
        volumes: str | Path | Sequence[str | Path],
        size: tuple[int, int],
        mask_func: MaskFunc,
        key: str = IMAGE_KEY,
        max_slices: int | None = None,
        sr=None,
        complex: bool = False,
        kspace: str = "simulated",
    ) -> None:
        # Complex data: the complex images under 'cimage', as two channels (real, imag).
        self.complex = complex
        key = COMPLEX_KEY if complex and key == IMAGE_KEY else key
        self.key = key
        self.sr = sr  # SRConfig for super-resolution: how inputs are made (transforms.degrade)
        self.size = (int(size[0]), int(size[1]))
        self.mask_func = mask_func
        self.volumes: list[VolumeInfo] = []
        for p in find_volumes(volumes):
            info, note = scan_volume(inspect_volume(p, key, complex), self.size, key)
            if note:
                line(f"raykd: {note}")  # one line, also from Ray workers
            self.volumes.append(info)
        _check_layout(self.volumes, mask_func)
        self.kspace = kspace
        # The k-space grid each volume's mask spans: measured, the volume's own full grid.
        self.mask_shapes = [self.size] * len(self.volumes)
        self._peaks: list[float] | None = None  # measured: one scale per volume
        if kspace == "measured":
            self.mask_shapes = _measured_grids(self.volumes, complex)
            self._peaks = [_volume_peak(v.path, key) for v in self.volumes]
        if max_slices is not None:  # evenly spaced subset per volume (smoke runs, tests)
            self.volumes = [_subsample(v, max_slices) for v in self.volumes]
        self.index: list[tuple[int, int]] = [
            (v, s) for v, info in enumerate(self.volumes) for s in info.slice_ids
        ]
        # One mask per volume, computed now (fails early on a bad mask, costs nothing per item).
        self._masks = [
            torch.from_numpy(mask_func(shape, info.key)).unsqueeze(0)
            for shape, info in zip(self.mask_shapes, self.volumes, strict=True)
        ]
        self._handles: dict[int, h5py.File] = {}
        self._pid = os.getpid()
        self.per_epoch = False  # fastMRI masks: a fresh training mask per epoch (set_epoch)

    def set_epoch(self, epoch: int) -> None:
        """With ``per_epoch``: this epoch's masks (reproducible from seed, volume and epoch)."""
        if not self.per_epoch:
            return
        # per_epoch is set for fastMRI masks only: frozen dataclasses with an ``epoch`` field
        func = cast(MaskFunc, dataclasses.replace(cast(Any, self.mask_func), epoch=epoch))
        self._masks = [
            torch.from_numpy(func(shape, info.key)).unsqueeze(0)
            for shape, info in zip(self.mask_shapes, self.volumes, strict=True)
        ]

    def __len__(self) -> int:
        return len(self.index)

    def volume_slices(self, volume: int) -> range:
        """Dataset indices of one volume's slices, in order."""
        start = sum(len(v.slice_ids) for v in self.volumes[:volume])
        return range(start, start + len(self.volumes[volume].slice_ids))

    def _file(self, volume: int) -> h5py.File:
        if os.getpid() != self._pid:  # forked worker: inherited handles are not fork-safe
            self._handles = {}
            self._pid = os.getpid()
        handle = self._handles.get(volume)
        if handle is None:
            handle = open_h5(self.volumes[volume].path)
            self._handles[volume] = handle
        return handle

    def read_slice(self, volume: int, slice_index: int) -> np.ndarray:
        """The preprocessed target slice (float32 [H, W], max 1; complex data: float32
        [2, H, W], real and imaginary parts scaled to max magnitude 1)."""
        path = self.volumes[volume].path
        try:
            raw = self._file(volume)[self.key][slice_index]
        except (OSError, KeyError) as exc:
            raise DataError(
                f"{path}: cannot read slice {slice_index} of '{self.key}' ({exc})"
            ) from exc
        raw = np.asarray(raw, dtype=np.complex64 if self.complex else np.float32)
        if not np.all(np.isfinite(raw)):
            raise DataError(
                f"{path}: slice {slice_index} of '{self.key}' contains NaN or Inf; "
                "expected finite values"
            )
        if self._peaks is not None:  # measured: the full grid, one scale for the volume
            z = raw / self._peaks[volume]
            return np.stack([z.real, z.imag]).astype(np.float32)
        if self.complex:
            z = normalise_max(center_crop_or_pad(raw, self.size))
            return np.stack([z.real, z.imag]).astype(np.float32)
        image = normalise_max(np.abs(center_crop_or_pad(raw, self.size)))
        return image.astype(np.float32, copy=False)

    def describe_kspace(self) -> str:
        """One phrase for a run's log: which k-space it trains on."""
        if self.kspace != "measured":
            return "k-space simulated from the images"
        grid = ", ".join(sorted({"x".join(map(str, s)) for s in self.mask_shapes}))
        crop = "x".join(map(str, self.size))
        return f"measured k-space ({grid} grid, phase encoding along rows; scored on {crop})"

    def scored(self, x: torch.Tensor) -> torch.Tensor:
        """The part of an image batch [..., H, W] that metrics score: measured k-space, the
        centre ``size`` crop of the full grid (fastMRI's 320x320); otherwise all of it."""
        if self.kspace != "measured":
            return x
        h, w = x.shape[-2:]
        top, left = (h - self.size[0]) // 2, (w - self.size[1]) // 2
        return x[..., top : top + self.size[0], left : left + self.size[1]]

    def __getitem__(self, idx: int) -> Sample:
        volume, slice_index = self.index[idx]
        target = torch.from_numpy(self.read_slice(volume, slice_index))
        if target.ndim == 2:
            target = target.unsqueeze(0)
        return Sample(target, self._masks[volume], volume, slice_index)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = {}  # never pickle open files (spawned workers, Ray)
        return state


def _check_layout(volumes: list[VolumeInfo], mask_func: MaskFunc) -> None:
    """A mask of phase-encode rows (fastMRI's) is refused on a volume whose phase encoding
    runs along its columns (:func:`raykd.data.volumes.phase_encoding`)."""
    if not getattr(mask_func, "phase_encode_rows", False):
        return
    for info in volumes:
        layout = phase_encoding(info.path)
        if layout not in (None, "rows"):
            raise DataError(
                f"{info.path}: phase encoding runs along its {layout}, but the fastMRI mask "
                "samples rows; convert the file again with raykd prepare fastmri (which puts "
                "phase encoding along rows)"
            )


def _measured_grids(volumes: list[VolumeInfo], complex: bool) -> list[tuple[int, int]]:
    """Each volume's full measured grid (a measured-k-space dataset reads nothing else)."""
    if not complex:
        raise DataError("measured k-space needs complex volumes (data.complex: true)")
    for info in volumes:
        if volume_attr(info.path, "kspace_grid") != MEASURED_GRID:
            raise DataError(
                f"{info.path}: not on its measured k-space grid (cropped or simulated); convert "
                "the fastMRI file with raykd prepare fastmri --kspace measured"
            )
    return [info.shape for info in volumes]


def check_one_grid(dataset: SliceDataset, batch_size: int) -> None:
    """Slices of different grids cannot share a batch: refused unless batches hold one slice."""
    pairs = zip(dataset.mask_shapes, dataset.volumes, strict=True)
    grids = {shape: v.path.name for shape, v in pairs}
    if len(grids) > 1 and batch_size > 1:
        raise DataError(
            f"measured k-space: volumes on different grids {sorted(grids.items())} cannot share "
            f"a batch of {batch_size}; set data.batch_size 1 (as fastMRI's baselines) or put "
            "volumes of one phase-encode width in a folder"
        )


def _volume_peak(path: Path, key: str) -> float:
    """The largest magnitude in a volume (its one scale in measured mode)."""
    peak = 0.0
    with open_h5(path) as f:
        ds = f[key]
        for start in range(0, ds.shape[0], 16):
            peak = max(peak, float(np.abs(ds[start : start + 16]).max()))
    return peak or 1.0
