"""fastMRI mask conventions: statistics, determinism and agreement with the ``fastmri`` package.

``fastmri`` is a test-only dependency, pinned in ``requirements/test-no-deps.txt`` and installed
with ``pip install --no-deps -r requirements/test-no-deps.txt`` (its
declared requirements pull pytorch-lightning and torchvision, which would replace this CPU torch;
``fastmri.data.subsample`` needs only numpy and torch); the README's test set-up and ``.ci/run``
install it, and the comparison fails without it rather than being skipped.
"""

from __future__ import annotations

import numpy as np
import pytest

from raykd.data.dataset import SliceDataset
from raykd.data.fastmri_masks import FastMRIMask, centred_lines, volume_seed
from raykd.errors import DataError
from raykd.train.config import load_config

CASES = [("random", 4, 0.08), ("random", 8, 0.04), ("equispaced", 4, 0.08), ("equispaced", 8, 0.04)]


@pytest.mark.parametrize("kind,acc,cf", CASES)
@pytest.mark.parametrize("name", ["file1000", "file1001033", "vol3"])
def test_same_mask_as_the_fastmri_package_for_a_validation_volume(kind, acc, cf, name):
    from fastmri.data import subsample  # pip install --no-deps fastmri==0.3.0

    cls = subsample.RandomMaskFunc if kind == "random" else subsample.EquiSpacedMaskFunc
    for n in (368, 320, 37):
        theirs, n_low = cls([cf], [acc])((1, n, 2), seed=tuple(map(ord, f"{name}.h5")))
        theirs = theirs.numpy().reshape(-1)
        ours = FastMRIMask(kind, acc, cf)((n, 5), name)
        assert (ours == ours[:, :1]).all()  # whole rows
        assert np.array_equal(np.fft.fftshift(ours[:, 0]), theirs)  # uncentred ↔ centred
        assert n_low == round(n * cf)


@pytest.mark.parametrize("kind,acc,cf", CASES)
def test_mask_statistics(kind, acc, cf):
    n = 368
    n_low = round(n * cf)
    fractions = []
    for v in range(300):
        lines = centred_lines(kind, n, acc, cf, volume_seed(f"v{v}"))
        pad = (n - n_low + 1) // 2
        assert lines[pad : pad + n_low].all()  # the fully sampled centre
        fractions.append(lines.mean())
        if kind == "equispaced":  # outside the centre: exactly every R-th line from an offset
            outside = np.ones(n, bool)
            outside[pad : pad + n_low] = False
            offset = np.flatnonzero(lines * outside)[0] % acc
            grid = np.zeros(n, bool)
            grid[offset::acc] = True
            assert np.array_equal(lines[outside].astype(bool), grid[outside])
    mean = float(np.mean(fractions))
    if kind == "random":  # fastMRI's expected sampling rate: 1/R
        assert abs(mean - 1 / acc) < 0.01
    else:  # every R-th line plus the centre: a little above 1/R
        assert 1 / acc <= mean <= 1 / acc + cf


def test_default_centre_fractions_and_bad_settings():
    assert FastMRIMask("random", 4).fraction == 0.08 and FastMRIMask("random", 8).fraction == 0.04
    with pytest.raises(DataError, match="no standard centre fraction"):
        FastMRIMask("random", 5)((64, 64), "v")
    with pytest.raises(DataError, match="'random' or 'equispaced'"):
        FastMRIMask("poisson", 4)((64, 64), "v")


def test_one_mask_per_volume_and_fresh_training_masks_per_epoch(tiny_data, tmp_path):
    from raykd.data.sources import build_datasets
    from tests.conftest import tiny_overrides

    state = np.random.get_state()
    over = tiny_overrides(
        tiny_data,
        tmp_path,
        "teacher",
        **{"data.mask.kind": "fastmri_random", "data.mask.acceleration": "4"},
    )
    fixed = build_datasets(load_config(None, over).data)
    again = build_datasets(load_config(None, over).data)
    for split in ("train", "val"):  # seeded from the file name: the same in every run
        for a, b in zip(fixed[split]._masks, again[split]._masks, strict=True):
            assert np.array_equal(a, b)
    assert not np.array_equal(fixed["train"]._masks[0], fixed["train"]._masks[1])
    fresh = build_datasets(load_config(None, [*over, "data.mask.per_epoch=true"]).data)
    val_before = [m.clone() for m in fresh["val"]._masks]
    seen = []
    for epoch in (0, 1, 0):
        fresh["train"].set_epoch(epoch)
        fresh["val"].set_epoch(epoch)
        seen.append(fresh["train"]._masks[0].clone())
    assert not np.array_equal(seen[0], seen[1]) and np.array_equal(seen[0], seen[2])
    assert all(np.array_equal(a, b) for a, b in zip(val_before, fresh["val"]._masks, strict=True))
    assert np.array_equal(np.random.get_state()[1], state[1])  # global RNG untouched
    with pytest.raises(Exception, match="per_epoch"):
        load_config(None, [*over, "data.mask.per_epoch=true", "data.num_workers=2"])
    assert isinstance(fresh["train"], SliceDataset)
