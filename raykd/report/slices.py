"""Per-slice pairs of two rows: the descriptive per-slice Wilcoxon test of the paired-tests
table (slices of one volume are not independent, so it is never a verdict)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from raykd.errors import RaykdError
from raykd.report.inference import UnitPairs, seed_evals
from raykd.report.runs import StageRuns


def slice_values(report: dict[str, Any], metric: str) -> dict[tuple[str, int], float]:
    """``{(volume, slice index): value}`` of one metric from an eval JSON."""
    out: dict[tuple[str, int], float] = {}
    for vol in report["volumes"]:
        values = vol.get("per_slice", {}).get(metric)
        slices = vol.get("slices")
        if values is None or slices is None:
            raise RaykdError(
                f"eval JSON volume {vol.get('volume')}: no per-slice '{metric}' values or "
                "slice list; re-evaluate the run (per-slice metrics are needed for the test)"
            )
        if len(values) != len(slices):
            raise RaykdError(
                f"eval JSON volume {vol['volume']}: {len(values)} per-slice '{metric}' values "
                f"for {len(slices)} slices"
            )
        for s, v in zip(slices, values, strict=True):
            out[(str(vol["volume"]), int(s))] = math.nan if v is None else float(v)
    return out


def paired_slices(
    a: dict[str, Any], b: dict[str, Any], metric: str
) -> tuple[list[tuple[str, int]], np.ndarray, np.ndarray]:
    """Aligned per-slice values of two eval JSONs; an error if their slices differ."""
    va, vb = slice_values(a, metric), slice_values(b, metric)
    if set(va) != set(vb):
        only_a = sorted(set(va) - set(vb))[:5]
        only_b = sorted(set(vb) - set(va))[:5]
        raise RaykdError(
            f"per-slice '{metric}' pairs do not align: slices only in the first run "
            f"{only_a}, only in the second {only_b}; both runs must be evaluated on the same "
            "volumes and slices"
        )
    keys = sorted(va)
    return keys, np.array([va[k] for k in keys]), np.array([vb[k] for k in keys])


def slice_pairs(
    runs: StageRuns, baseline: dict[str, Any], candidate: dict[str, Any], metric: str
) -> UnitPairs:
    """Pair two ``{seed: run}`` maps slice by slice, keys (seed, volume, slice), pooled over
    seeds. Only seeds both sides have are paired; within a seed the slices must align
    (:func:`paired_slices` raises otherwise)."""
    keys, va, vb = [], [], []
    evals, unpaired = seed_evals(runs, baseline, candidate)
    for seed, a, b in evals:
        k, x, y = paired_slices(a, b, metric)
        keys += [(seed, vol, sl) for vol, sl in k]
        va.append(x)
        vb.append(y)
    cat = (lambda v: np.concatenate(v)) if va else (lambda v: np.zeros(0))
    return UnitPairs(keys, cat(va), cat(vb), unpaired)
