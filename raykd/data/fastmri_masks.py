"""fastMRI's Cartesian mask conventions (Zbontar et al. 2018; ``fastmri.data.subsample``), in
raykd's layout.

fastMRI samples whole phase-encode lines of *centred* k-space: ``round(N · center_fraction)``
central lines always (4x: 0.08, 8x: 0.04), the others either at random — each kept with
probability ``(N/R − n_low) / (N − n_low)`` (``RandomMaskFunc``) — or every R-th line from a
random offset (``EquiSpacedMaskFunc``). Validation and test use one mask per volume, seeded with
the file name (``tuple(map(ord, "file1000.h5"))`` into a ``numpy.random.RandomState``, as the
fastMRI data transforms do); training draws a fresh one each time unless seeded.

Here the same draws, in the same order, give the same line pattern as the ``fastmri`` package
for the same seed; the pattern is then moved to raykd's layout: lines are rows (axis 0; both
fastMRI converters, magnitude and complex, transpose images so that fastMRI's phase-encode
columns are rows, and record ``phase_encoding: rows``; a volume recording another layout is
refused) and k-space is uncentred (``ifftshift`` of the centred pattern). ``epoch`` ≥ 0 gives
a fresh, reproducible mask per training epoch (the seed then also holds the epoch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raykd.data.masks import MaskFunc
from raykd.errors import DataError

# fastMRI's standard pairs (the knee/brain challenge settings).
DEFAULT_CENTER_FRACTIONS = {4.0: 0.08, 8.0: 0.04}


def default_center_fraction(acceleration: float) -> float:
    if float(acceleration) not in DEFAULT_CENTER_FRACTIONS:
        raise DataError(
            f"fastMRI mask at {acceleration}x: no standard centre fraction (4x: 0.08, 8x: "
            "0.04); set data.mask.center_fraction"
        )
    return DEFAULT_CENTER_FRACTIONS[float(acceleration)]


def volume_seed(volume_key: str, seed: int = 0, epoch: int = -1) -> tuple[int, ...]:
    """fastMRI's per-volume seed (the file name's code points), extended by seed and epoch
    only when they are set, so the default equals fastMRI's validation seed."""
    base = tuple(map(ord, f"{volume_key}.h5"))
    extra = (seed,) if seed else ()
    return base + extra + ((1_000_000 + epoch,) if epoch >= 0 else ())


def centred_lines(
    kind: str, n: int, acceleration: float, center_fraction: float, seed: tuple[int, ...]
) -> np.ndarray:
    """The centred 0/1 line pattern [n] fastMRI draws for ``seed``."""
    rng = np.random.RandomState(seed)
    rng.randint(1)  # fastMRI first picks one (centre fraction, acceleration) pair
    n_low = round(n * center_fraction)
    centre = np.zeros(n, dtype=np.float32)
    pad = (n - n_low + 1) // 2
    centre[pad : pad + n_low] = 1
    if kind == "random":
        prob = (n / acceleration - n_low) / (n - n_low)
        outer = (rng.uniform(size=n) < prob).astype(np.float32)
    elif kind == "equispaced":
        step = round(acceleration)
        outer = np.zeros(n, dtype=np.float32)
        outer[rng.randint(0, high=step) :: step] = 1
    else:
        raise DataError(f"fastMRI mask kind '{kind}': expected 'random' or 'equispaced'")
    return np.maximum(centre, outer)


@dataclass(frozen=True)
class FastMRIMask(MaskFunc):
    """fastMRI random / equispaced line masks, one per volume (file-name seed), in raykd's
    uncentred row layout; ``epoch`` ≥ 0: a fresh reproducible mask for that training epoch."""

    phase_encode_rows = True  # refused on volumes whose phase encoding runs along columns

    kind: str
    acceleration: float
    center_fraction: float | None = None
    seed: int = 0
    epoch: int = -1

    def __post_init__(self) -> None:
        if self.acceleration <= 1:
            raise DataError(f"fastMRI mask acceleration must be > 1, got {self.acceleration}")
        cf = self.center_fraction
        if cf is not None and not 0 < cf < 1:
            raise DataError(f"fastMRI mask center_fraction must be in (0, 1), got {cf}")

    @property
    def fraction(self) -> float:
        if self.center_fraction is not None:
            return self.center_fraction
        return default_center_fraction(self.acceleration)

    def make(self, shape: tuple[int, int], volume_key: str) -> np.ndarray:
        seed = volume_seed(volume_key, self.seed, self.epoch)
        lines = centred_lines(self.kind, shape[0], self.acceleration, self.fraction, seed)
        rows = np.fft.ifftshift(lines)  # centred → uncentred (DC at row 0)
        return np.repeat(rows[:, None], shape[1], axis=1).astype(np.float32)
