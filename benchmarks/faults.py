"""Fault injection: run every fault case raykd guarantees against and print the table.

    python benchmarks/faults.py            # all cases (≈ 10 min on 2 cores); writes the table
    python benchmarks/faults.py -k sigterm # a subset (pytest -k expression)

Each case is a real fault on real Ray / MLflow / torch, injected by a test of the slow tier (the
test holds the scenario and its assertions, so CI checks the same guarantees on every run):
a worker SIGKILLed mid-stage, a worker killed between its epoch record and its checkpoint, a
truncated checkpoint, a SIGTERM to the job's driver, a tracking server down past the client's
retry budget, a lost worker node. This script runs those tests, times them and writes the
table to ``benchmarks/results/faults_cpu-<class>.md`` (the page docs/reference/faults.md quotes).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from raykd.train.precision import cpu_capability  # noqa: E402

# (fault, what must happen, pytest node id)
CASES = [
    (
        "DDP worker SIGKILLed after an epoch's checkpoint",
        "worker group restarts, stage resumes, same weights as uninterrupted",
        "tests/test_orchestration.py::test_chain_resumes_after_killed_worker[after_report]",
    ),
    (
        "worker SIGKILLed after its epoch record, before Ray's checkpoint",
        "one metrics.jsonl record and one MLflow step per epoch",
        "tests/test_orchestration.py::test_chain_resumes_after_killed_worker[before_report]",
    ),
    (
        "finished stage's best.pt truncated",
        "warning naming the file, stage retrained, not reused",
        "tests/test_faults.py::test_damaged_checkpoint_is_trained_again_not_reused[best.pt]",
    ),
    (
        "finished stage's last.pt truncated",
        "warning naming the file, stage retrained, not reused",
        "tests/test_faults.py::test_damaged_checkpoint_is_trained_again_not_reused[last.pt]",
    ),
    (
        "stage stored without digests, best.pt cut short",
        "zip CRC check catches it, stage moved aside",
        "tests/test_faults.py::test_stage_stored_without_digests_gets_a_structural_check",
    ),
    (
        "SIGTERM to the job's driver mid-grid",
        "exit 143, one line with the resume command, job KILLED; rerun counts honestly",
        "tests/test_interrupt.py::test_sigterm_ends_the_job_cleanly_and_the_rerun_counts_honestly",
    ),
    (
        "tracking server down past the retry budget, then back",
        "training goes on; one run per stage, each epoch once, summary says what was repaired",
        "tests/test_tracking_outage.py::test_outage_longer_than_retry_budget_heals_one_run_per_stage",
    ),
    (
        "worker node lost while a 2-worker stage trains",
        "group restarts on the head, stage resumes, job rc 0, equal results",
        "tests/test_node_loss.py::test_worker_node_lost_mid_stage_job_finishes_on_the_head",
    ),
]


def run(selected: list[tuple[str, str, str]]) -> dict[str, tuple[str, float]]:
    """pytest on the cases' node ids; ``{node id: (outcome, seconds)}`` from its JUnit XML."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "faults.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               f"--junitxml={xml}", *(c[2] for c in selected)]  # fmt: skip
        subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
        out: dict[str, tuple[str, float]] = {}
        for case in ET.parse(xml).getroot().iter("testcase"):
            module = case.get("classname", "").replace(".", "/") + ".py"
            node = f"{module}::{case.get('name')}"
            failed = case.find("failure") is not None or case.find("error") is not None
            skipped = case.find("skipped") is not None
            outcome = "FAILED" if failed else "skipped" if skipped else "passed"
            out[node] = (outcome, float(case.get("time", 0.0)))
        return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("-k", help="only the cases whose fault or test matches (substring)")
    p.add_argument("--out", type=Path, help="results file (default: benchmarks/results/...)")
    args = p.parse_args()
    selected = [c for c in CASES if not args.k or args.k in c[0] or args.k in c[2]]
    t0 = time.time()
    results = run(selected)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    lines = [
        f"Recorded {time.strftime('%Y-%m-%d')}, commit {commit or 'unknown'}, CPU class "
        f"{cpu_capability()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}; {time.time() - t0:.0f} s in all.",
        "",
        "| fault | what must happen | result | time |",
        "|---|---|---|---|",
    ]
    for fault, expect, node in selected:
        outcome, seconds = results.get(node, ("not run", 0.0))
        lines.append(
            f"| {fault} | {expect} | {outcome} (`{node.split('::')[1]}`) | {seconds:.0f} s |"
        )
    table = "\n".join(lines)
    print(table)
    out = args.out or REPO / "benchmarks" / "results" / f"faults_cpu-{cpu_capability()}.md"
    if not args.k:
        out.write_text(table + "\n")
        print(f"written to {out}")
    return 0 if all(results.get(c[2], ("",))[0] == "passed" for c in selected) else 1


if __name__ == "__main__":
    sys.exit(main())
