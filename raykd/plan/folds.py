"""Cross-validation by subject: which volumes train, select and test in fold k.

Small cohorts (a few subjects) give one held-out volume, so a verdict needs many seeds of the
whole chain; medical imaging handles this with K-fold cross-validation *by subject*. Fold k
tests on subject k, selects (validation) on the next subject (cyclically) and trains on the
rest; with a fixed held-out test set (``--test``) the test volumes stay out of every fold and
folds rotate the validation subject over the remaining ones. Every fold is a full, reusable set
of stages (its split is part of each stage's identity). Pure: no Ray, no files beyond listing a
folder dataset's volumes.
"""

from __future__ import annotations

from typing import NamedTuple

from raykd.errors import ConfigError
from raykd.plan.datasets import DatasetEntry

# Built-in sources whose volumes are parts of one subject (MNI152: slabs of one template brain).
ONE_SUBJECT = ("mni152", "mni152_complex")


class FoldSplit(NamedTuple):
    train: list[str]
    val: list[str]
    test: list[str]


def subjects(name: str, entry: DatasetEntry | None, source: str) -> list[str]:
    """The dataset's subjects (volumes) in catalogue order: its train, val, test lists, else the
    volumes found in its folder (by file stem)."""
    if source in ONE_SUBJECT:
        raise ConfigError(
            f"folds: dataset '{name}' is one subject (its volumes are slabs of one brain); "
            "cross-validation by subject needs several subjects (e.g. sunnybrook, or a folder "
            "with one h5 per subject)"
        )
    if entry is not None and (entry.train or entry.val or entry.test):
        listed = [*(entry.train or ()), *(entry.val or ()), *(entry.test or ())]
        return list(dict.fromkeys(listed))
    from raykd.data.sources import source_volumes

    try:
        return [p.stem for p in source_volumes(source)]
    except Exception as exc:  # a missing folder: one line, with the dataset's name
        raise ConfigError(f"folds: cannot list the volumes of dataset '{name}': {exc}") from None


def fold_split(
    name: str, volumes: list[str], k: int, folds: int, test: list[str] | None
) -> FoldSplit:
    """Fold ``k`` of ``folds`` over ``volumes`` (see the module doc); refuses a split that leaves
    a role empty."""
    held = list(test or [])
    pool = [v for v in volumes if v not in held]
    need = 2 if held else 3  # train + val (+ test when folds choose it)
    if len(pool) < need or folds > len(pool):
        what = f"{len(pool)} subject(s) outside the test set" if held else f"{len(pool)} subject(s)"
        raise ConfigError(
            f"folds: dataset '{name}' has {what} ({pool}); {folds} folds need at least "
            f"{max(need, folds)} (each fold: one validation subject, "
            f"{'a fixed test set' if held else 'one test subject'}, the rest train)"
        )
    if not 0 <= k < folds:
        raise ConfigError(f"fold {k} out of range 0..{folds - 1}")
    if held:
        val = [pool[k]]
        return FoldSplit([v for v in pool if v not in val], val, held)
    test_k, val_k = pool[k], pool[(k + 1) % len(pool)]
    return FoldSplit([v for v in pool if v not in (test_k, val_k)], [val_k], [test_k])
