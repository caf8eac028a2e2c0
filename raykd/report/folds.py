"""Subject cross-validation folds as a level of the report's statistics.

A grid run with ``--folds K`` tags every stage run ``raykd.fold`` ("0".."K-1"): fold k trains,
selects and tests on its own subjects (without ``--test``: test = subject k, validation =
subject k+1, cyclically; with ``--test`` the test volumes stay fixed and folds rotate the
validation subject). One independently trained model is then a (fold, seed) pair, so the report
keys its replicates by ``"<fold>/<seed>"`` (:func:`unit_key`) wherever it keyed them by seed;
the unit of inference of its tests is the test subject (:mod:`raykd.report.subjects`).

:func:`nested_bootstrap` resamples every level of a tree (top level, then each drawn member's
children): the seed × volume bootstrap of the report without folds is its two-level case, and
``benchmarks/coverage.py`` uses the three-level case to show how the pooled procedure before
subjects were the unit under-covered. Runs without the tag keep the seed as their key.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from raykd.errors import RaykdError
from raykd.tracking import schema as S

# "0".."K-1" (absent without --folds); the budget scale of the stage's epochs (absent: 1).
TAG_FOLD, TAG_BUDGET = S.TAG_FOLD, S.TAG_BUDGET
SEP = "/"

Tree = np.ndarray | Sequence["Tree"]


def unit_key(fold: str, seed: str) -> str:
    """The replicate key of a run: its seed, or ``"<fold>/<seed>"`` when it belongs to a fold."""
    return f"{fold}{SEP}{seed}" if fold else seed


def split_key(key: str) -> tuple[str, str]:
    """(fold, seed) of a replicate key (fold "" for a run without folds)."""
    fold, sep, seed = key.partition(SEP)
    return (fold, seed) if sep else ("", key)


def has_folds(keys: Sequence[str]) -> bool:
    return any(split_key(k)[0] for k in keys)


def fold_tree(keys: Sequence[str], groups: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
    """Per-replicate arrays (aligned with ``keys``) nested by fold, folds in first-seen order."""
    tree: dict[str, list[np.ndarray]] = {}
    for key, values in zip(keys, groups, strict=True):
        tree.setdefault(split_key(key)[0], []).append(values)
    return list(tree.values())


def nested_mean(tree: Tree) -> float:
    """Mean over the top level of the nested means (mean over folds of mean over seeds of mean
    over volumes): every fold weighs the same, whatever its seeds or volumes."""
    if isinstance(tree, np.ndarray):
        return float(tree.mean())
    return float(np.mean([nested_mean(child) for child in tree]))


def bootstrap_replicates(tree: Tree, m: int, rng: np.random.Generator) -> np.ndarray:
    """``m`` bootstrap replicates of :func:`nested_mean`, resampling every level with
    replacement (the children of each drawn node are drawn again, independently)."""
    if isinstance(tree, np.ndarray):
        inner = rng.integers(0, tree.size, (m, tree.size))
        return tree[inner].mean(axis=1)
    k = len(tree)
    top = rng.integers(0, k, (m, k))
    out = np.zeros(m)
    for slot in range(k):
        for g, child in enumerate(tree):
            drawn = np.flatnonzero(top[:, slot] == g)
            if drawn.size:
                out[drawn] += bootstrap_replicates(child, drawn.size, rng)
    return out / k


def nested_bootstrap(
    tree: Tree, resamples: int = 10_000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """:func:`nested_mean` of ``tree`` (folds → seeds → volumes) with a percentile CI from a
    bootstrap that resamples each level within the one above it. Seeded, so reports agree."""

    def check(node: Tree) -> None:
        if isinstance(node, np.ndarray):
            if node.size == 0:
                raise RaykdError("nested_bootstrap: every (fold, seed) needs at least one value")
            return
        if not node:
            raise RaykdError("nested_bootstrap: every level needs at least one member")
        for child in node:
            check(child)

    check(tree)
    rng = np.random.default_rng(seed)
    boot = bootstrap_replicates(tree, resamples, rng)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(boot, [tail, 100 - tail])
    return nested_mean(tree), float(low), float(high)


def replicates_text(keys: Sequence[str]) -> str:
    """What a list of replicate keys covers: ``seeds 42, 43`` or ``4 folds × seeds 42, 43``."""
    if not has_folds(keys):
        return f"seed{'s' if len(keys) != 1 else ''} {', '.join(keys) or '?'}"
    folds = list(dict.fromkeys(split_key(k)[0] for k in keys))
    seeds = list(dict.fromkeys(split_key(k)[1] for k in keys))
    return (
        f"{len(folds)} fold{'s' if len(folds) != 1 else ''} ({', '.join(folds)}) × "
        f"seed{'s' if len(seeds) != 1 else ''} {', '.join(seeds)}"
    )


def fold_note(keys: Sequence[str]) -> str:
    """The header line of every table of a cross-validated store ("" without folds)."""
    if not has_folds(keys):
        return ""
    folds = {split_key(k)[0] for k in keys}
    seeds = {split_key(k)[1] for k in keys}
    return (
        f"Cross-validation by subject ({len(folds)} folds × {len(seeds)} seeds): a 'seed' below "
        "is one (fold, seed) model, written fold/seed, evaluated on its own fold's test "
        "volumes. The unit of inference of paired tests and gaps is the test subject (seeds "
        "of a fold share its subjects): CIs are Student-t intervals over subjects."
    )


def merge_fold_reports(reports: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """One eval-JSON-like report with the volumes of ``{fold: report}`` (each volume once):
    the zero-filled input of every fold's test subject, for the ZF row."""
    volumes: dict[str, Any] = {}
    for report in reports.values():
        for vol in report.get("volumes", []):
            volumes.setdefault(str(vol.get("volume")), vol)
    if not volumes:
        return None
    return {"volumes": [volumes[k] for k in sorted(volumes)]}


def budget_label(value: Any) -> str:
    """The budget scale of a tag value as a short string ("1", "2", "0.5"); absent → "1"."""
    if value in (None, ""):
        return "1"
    try:
        scale = float(value)
    except (TypeError, ValueError):
        raise RaykdError(f"tag {TAG_BUDGET}={value!r}: expected a number such as 2") from None
    if not math.isfinite(scale) or scale <= 0:
        raise RaykdError(f"tag {TAG_BUDGET}={value!r}: expected a positive number")
    return f"{scale:g}"
