"""2D slice dataset over h5 volumes.

Each item is a :class:`Sample`: the target slice (centre-cropped/padded, normalised to max 1)
and its mask. The forward model (:func:`raykd.data.transforms.undersample`) runs batched on the
training device, so k-space never goes through the DataLoader.

h5 files are opened once per process (DataLoader workers included) and kept open; the reference
implementation re-opened the file and the mask for every slice.
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
    VolumeInfo,
    find_volumes,
    inspect_volume,
    open_h5,
    scan_volume,
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
        if max_slices is not None:  # evenly spaced subset per volume (smoke runs, tests)
            self.volumes = [_subsample(v, max_slices) for v in self.volumes]
        self.index: list[tuple[int, int]] = [
            (v, s) for v, info in enumerate(self.volumes) for s in info.slice_ids
        ]
        # One mask per volume, computed now (fails early on a bad mask, costs nothing per item).
        self._masks = [
            torch.from_numpy(mask_func(self.size, info.key)).unsqueeze(0) for info in self.volumes
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
            torch.from_numpy(func(self.size, info.key)).unsqueeze(0) for info in self.volumes
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
        if self.complex:
            z = normalise_max(center_crop_or_pad(raw, self.size))
            return np.stack([z.real, z.imag]).astype(np.float32)
        image = normalise_max(np.abs(center_crop_or_pad(raw, self.size)))
        return image.astype(np.float32, copy=False)

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
