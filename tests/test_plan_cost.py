"""``raykd grid --plan``: the stage graph, critical path and estimate, without Ray (issue 26)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raykd.errors import ConfigError
from raykd.plan.cost import (
    ClusterShape,
    critical_path,
    parse_cluster,
    parse_workers,
    simulate,
    stage_graph,
)
from raykd.plan.presets import load_preset
from raykd.plan.rows import grid_rows

REPO = Path(__file__).resolve().parents[1]

PLAN = """
import sys
from raykd.cli import main
rc = main(sys.argv[1:])
print("RAY_IMPORTED", "ray" in sys.modules, "RC", rc)
"""


def _plan(root: Path, *extra: str) -> tuple[str, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", PLAN, "grid", "--preset", "paper", "--plan", "--root", str(root)]
        + list(extra),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout, time.perf_counter() - t0


def test_paper_plan_without_ray(tmp_path, shared_data):
    """Counts, critical path and an estimate; Ray never imported; a second plan reuses the
    cached calibration."""
    out, first = _plan(tmp_path, "--cluster", "4x8gpu")
    assert "RAY_IMPORTED False RC 0" in out
    assert "plan grid paper: 168 stages, 168 to train, 0 reused" in out
    assert "sunnybrook/5x/s44        teacher 1+0  sft 1+0  student 2+0  kd 10+0" in out
    assert "critical path " in out and "-> kd(" in out
    assert "estimate: wall-clock " in out and "unknown" not in out
    assert "calibrated here" in out
    out2, second = _plan(tmp_path, "--cluster", "4x8gpu")
    assert "cached" in out2 and "RAY_IMPORTED False" in out2
    # How long it takes is a benchmark's business, not a test's (a loaded CI box varies).
    print(f"paper --plan: first {first:.1f}s (calibrating), second {second:.1f}s")


def test_graph_chains_and_reuse():
    spec = load_preset("smoke", {"seeds": 2})
    rows = grid_rows(spec)
    nodes = stage_graph(spec, rows)
    assert len(nodes) == 28  # 14 per seed
    kd = [n for n in nodes.values() if n.kind == "kd"]
    assert len(kd) == 20 and all(nodes[n.teacher].kind in ("teacher", "sft") for n in kd)
    dur = {sid: 10.0 if n.kind in ("teacher", "sft") else 1.0 for sid, n in nodes.items()}
    dur[next(s for s, n in nodes.items() if n.kind == "sft")] = 30.0
    length, chain = critical_path(nodes, dur)
    assert length == 31.0 and [nodes[s].kind for s in chain] == ["sft", "kd"]
    # Plenty of room: the schedule is the critical path; one slot: the sum of the work.
    assert simulate(nodes, dur, parse_workers(1), ClusterShape(8, 8)) == 31.0
    assert simulate(nodes, dur, parse_workers(1), ClusterShape(1, 1)) == sum(dur.values())
    # A stored teacher costs nothing and is off the path.
    stored = {s for s, n in nodes.items() if n.kind == "sft"}
    again = stage_graph(spec, rows, lambda sid: sid in stored)
    assert critical_path(again, dur)[0] == 11.0


def test_workers_and_cluster_flags():
    assert parse_workers("teacher=4,sft=4") == {"teacher": 4, "sft": 4, "student": 1, "kd": 1}
    assert parse_workers("2") == dict.fromkeys(("teacher", "sft", "student", "kd"), 2)
    assert parse_cluster("4x8cpu") == ClusterShape(4, 8, 0)
    assert parse_cluster("2x8gpu") == ClusterShape(2, 64, 8)
    with pytest.raises(ConfigError, match="unknown stage kind"):
        parse_workers("teachr=4")
    with pytest.raises(ConfigError, match="--cluster 4x"):
        parse_cluster("4x")
