"""Undersampling masks: fixed ``.npy`` files and a seeded 1D Cartesian generator.

A mask is a float32 [H, W] array of 0/1 with whole phase-encode *rows* kept, uncentred
(DC at row 0). The paper's statistics: ``int(H / R)`` rows for acceleration ``R``, of which
the ``num_low`` lowest frequencies (indices ``0..num_low/2-1`` and ``H-num_low/2..H-1``) are
always kept and the rest drawn uniformly without replacement.

A new mask kind subclasses :class:`MaskFunc` and overrides :meth:`MaskFunc.make`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raykd.errors import DataError


class MaskFunc:
    """Produces the mask for one volume. Same ``(shape, volume_key)`` → same mask, every epoch."""

    allow_empty = False  # only EmptyMask: image-domain SR measures no k-space at all
    # True for masks that stand for one acquisition's phase-encode lines (fastMRI's): a volume
    # recording phase encoding along its columns is then refused (raykd.data.dataset).
    phase_encode_rows = False
    allow_full = False  # a mask sampling everything makes the task trivial (identity)

    def __call__(self, shape: tuple[int, int], volume_key: str = "") -> np.ndarray:
        mask = self.make(shape, volume_key)
        validate_mask(
            mask,
            shape,
            source=repr(self),
            allow_empty=self.allow_empty,
            allow_full=self.allow_full,
        )
        return mask

    def make(self, shape: tuple[int, int], volume_key: str) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


def validate_mask(
    mask: np.ndarray,
    shape: tuple[int, int],
    source: str,
    allow_empty: bool = False,
    allow_full: bool = False,
) -> None:
    """Check a mask's shape, values and that it samples something; raise a clear DataError."""
    if mask.ndim != 2:
        raise DataError(f"mask {source}: expected a 2D [H, W] array, got shape {mask.shape}")
    if tuple(mask.shape) != tuple(shape):
        raise DataError(
            f"mask {source}: shape {tuple(mask.shape)} does not match the image size "
            f"{tuple(shape)} (crop size); use a mask made for that size or a generated one"
        )
    if not np.all(np.isfinite(mask)):
        raise DataError(f"mask {source}: contains NaN or Inf values")
    if not np.all((mask == 0) | (mask == 1)):
        raise DataError(f"mask {source}: values must be 0 or 1")
    if not allow_empty and not mask.any():
        raise DataError(f"mask {source}: all zeros (nothing sampled); expected at least one 1")
    if not allow_full and mask.size and mask.all():
        raise DataError(
            f"mask {source}: all ones (every k-space point sampled), so reconstruction is the "
            "identity and scores are meaningless; use an undersampling mask (acceleration > 1) "
            "or set data.mask.allow_full=true to allow it deliberately"
        )


@dataclass(frozen=True)
class FixedMask(MaskFunc):
    """A mask read from an ``.npy`` file, identical for every volume."""

    path: Path
    allow_full: bool = False

    def make(self, shape: tuple[int, int], volume_key: str) -> np.ndarray:
        return load_mask_file(self.path, expected_shape=shape, allow_full=self.allow_full)


def load_mask_file(
    path: str | Path, expected_shape: tuple[int, int] | None = None, allow_full: bool = False
) -> np.ndarray:
    """Load and validate a fixed mask file (float [H, W] of 0/1)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"mask file {path}: not found")
    try:
        mask = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises several types for truncated/garbage files
        raise DataError(f"mask file {path}: cannot be read as .npy ({exc})") from exc
    mask = np.asarray(mask, dtype=np.float32)
    validate_mask(mask, expected_shape or mask.shape, source=str(path), allow_full=allow_full)
    return mask


@dataclass(frozen=True)
class CartesianMask(MaskFunc):
    """Seeded random 1D Cartesian mask with the paper's statistics.

    ``seed`` plus a hash of ``volume_key`` (when ``per_volume``) seeds a private generator, so
    the global NumPy/torch RNG state is never touched and a volume sees one mask every epoch.
    """

    acceleration: float
    seed: int = 0
    num_low: int = 10
    per_volume: bool = False
    allow_full: bool = False

    def __post_init__(self) -> None:
        if self.acceleration < 1:
            raise DataError(f"mask acceleration must be >= 1, got {self.acceleration}")
        if self.num_low < 0 or self.num_low % 2:
            raise DataError(f"mask num_low must be a non-negative even number, got {self.num_low}")

    def make(self, shape: tuple[int, int], volume_key: str) -> np.ndarray:
        rows, cols = shape
        n_keep = int(rows / self.acceleration)
        if n_keep < self.num_low:
            raise DataError(
                f"Cartesian mask: {rows} rows at {self.acceleration}x keeps {n_keep} rows, fewer "
                f"than the {self.num_low} low-frequency rows it must keep"
            )
        key = zlib.crc32(volume_key.encode()) if self.per_volume else 0
        rng = np.random.default_rng([self.seed, key])
        half = self.num_low // 2
        low = np.r_[np.arange(half), np.arange(rows - half, rows)].astype(int)
        rest = np.setdiff1d(np.arange(rows), low)
        chosen = rng.choice(rest, size=n_keep - self.num_low, replace=False)
        mask = np.zeros((rows, cols), dtype=np.float32)
        mask[low] = 1.0
        mask[chosen] = 1.0
        return mask


@dataclass(frozen=True)
class LowPassMask(MaskFunc):
    """Super-resolution by k-space truncation: keep the central ``N // scale`` frequencies per
    axis (uncentred layout: the lowest frequencies sit at both ends of each axis).

    The zero-filled image of this mask is the sinc-interpolated low-resolution image, which is
    what a scanner acquiring ``scale``x fewer lines and columns would give.
    """

    scale: int

    def __post_init__(self) -> None:
        if self.scale < 1:
            raise DataError(f"super-resolution scale must be >= 1, got {self.scale}")

    def make(self, shape: tuple[int, int], volume_key: str) -> np.ndarray:
        axes = []
        for n in shape:
            keep = max(1, n // self.scale)
            freq = np.abs(np.fft.fftfreq(n) * n)  # |frequency index| of each uncentred bin
            order = np.argsort(freq, kind="stable")
            line = np.zeros(n, dtype=np.float32)
            line[order[:keep]] = 1.0
            axes.append(line)
        return np.outer(axes[0], axes[1]).astype(np.float32)


@dataclass(frozen=True)
class EmptyMask(MaskFunc):
    """No measured k-space: data consistency becomes the identity (image-domain SR)."""

    allow_empty = True

    def make(self, shape: tuple[int, int], volume_key: str) -> np.ndarray:
        return np.zeros(shape, dtype=np.float32)
