"""Corrections for many tests: Holm's step-down adjustment of a family of p-values.

Every report names its family (the tests one set of verdicts is drawn from) and judges on the
adjusted p-values, so the chance of any false verdict in the family stays ≤ α (family-wise
error rate, strong control, any dependence between the tests). Holm (1979): sort the ``m``
p-values, multiply the ``i``-th smallest (0-based) by ``m − i``, take the running maximum, cap
at 1. Undefined p-values (NaN: a test not run) are not members of the family.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

METHOD = "Holm"


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, aligned with ``p_values`` (NaN stays NaN and is not counted)."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, math.nan)
    defined = np.flatnonzero(np.isfinite(p))
    m = defined.size
    order = defined[np.argsort(p[defined], kind="stable")]
    running = 0.0
    for i, idx in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[idx]))
        out[idx] = running
    return [float(x) for x in out]


def adjust_records(
    records: list[dict[str, Any]],
    family_of: Callable[[dict[str, Any]], Hashable | None],
    p_key: str = "p_value",
    out_key: str = "p_adjusted",
) -> dict[Hashable, int]:
    """Holm-adjust ``records[p_key]`` within each family (``family_of(record)``; None: no
    family, left as is); writes ``out_key`` and ``family_size``. Returns the family sizes."""
    families: dict[Hashable, list[dict[str, Any]]] = {}
    for rec in records:
        key = family_of(rec)
        p = rec.get(p_key)
        if key is None or p is None or not math.isfinite(float(p)):
            rec.setdefault(out_key, math.nan)
            continue
        families.setdefault(key, []).append(rec)
    for members in families.values():
        for rec, adj in zip(members, holm([r[p_key] for r in members]), strict=True):
            rec[out_key] = adj
            rec["family_size"] = len(members)
    return {k: len(v) for k, v in families.items()}
