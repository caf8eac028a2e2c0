"""A simulated cluster on one machine: does the grid fill it? (issue 26)

    python benchmarks/sim_cluster.py --nodes 4 --cpus-per-node 6 --seeds 3

Starts a head and NODES-1 more Ray nodes on this host (``ray start``, logical CPUs, own ports
from --port-base, own --temp-dir, loopback only), runs the smoke grid with one row per trial and
1 CPU per stage against it, then reads the job's timeline (stage start/end from the stage
folders) and writes ``benchmarks/results/sim_cluster_<N>x<C>.json``: peak and mean stage
concurrency, makespan (first stage start to last stage end), the critical-path lower bound
from the same stage durations, their ratio, the capacity bound (stage-seconds / slots) and the
job's own estimate. Stops only the processes it started (those naming its temp dir), never
``ray stop``. Logical CPUs oversubscribe the real cores: stages slow down as more run at once,
and both the makespan and the bound are computed from those same slowed durations.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def ports(base: int, i: int) -> list[str]:
    """Every port node ``i`` listens on, inside base + 100*i .. +99 (head: also GCS etc.)."""
    b = base + 100 * i
    out = [
        f"--dashboard-agent-listen-port={b + 3}",
        f"--dashboard-agent-grpc-port={b + 4}",
        f"--node-manager-port={b + 5}",
        f"--object-manager-port={b + 6}",
        f"--runtime-env-agent-port={b + 7}",
        f"--metrics-export-port={b + 8}",
        f"--min-worker-port={b + 20}",
        f"--max-worker-port={b + 99}",
    ]
    if i == 0:
        out += [f"--port={b}", f"--dashboard-port={b + 1}", f"--ray-client-server-port={b + 2}"]
    return out


def own_pids(tmp: str) -> list[int]:
    """This cluster's processes: each names its temp dir on its command line."""
    out = subprocess.run(["pgrep", "-f", "--", tmp], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if int(p) != os.getpid()]


def stop(tmp: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in own_pids(tmp):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(3)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--cpus-per-node", type=int, default=6)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--port-base", type=int, default=47600)
    p.add_argument("--ray-train", action="store_true", help="stages as Ray Train runs")
    p.add_argument("--out", help="result JSON (default benchmarks/results/sim_cluster_NxC.json)")
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="rkdsim")
    root = Path(tmp) / "runs"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    gcs = f"127.0.0.1:{args.port_base}"
    try:
        for i in range(args.nodes):
            cmd = [
                "ray",
                "start",
                f"--num-cpus={args.cpus_per_node}",
                "--node-ip-address=127.0.0.1",
            ]
            cmd += ["--disable-usage-stats", *ports(args.port_base, i)]
            if i == 0:
                cmd += ["--head", f"--temp-dir={tmp}", "--dashboard-host=127.0.0.1"]
            else:
                cmd += [f"--address={gcs}"]
            subprocess.run(cmd, check=True, env=env, capture_output=True)
        t0 = time.time()
        job = [sys.executable, "-m", "raykd.cli", "grid", "--preset", "smoke"]
        job += ["--seeds", str(args.seeds), "--trial-unit", "row", "--cpus-per-worker", "1"]
        job += ["--address", gcs, "--root", str(root)]
        if not args.ray_train:
            job += ["--local-train"]
        run = subprocess.run(job, env=env, capture_output=True, text=True, cwd=REPO)
        wall = time.time() - t0
        print(run.stdout[-3000:])
        if run.returncode:
            print(run.stderr[-5000:], file=sys.stderr)
            return run.returncode
        timeline = json.loads(next(root.glob("*-timeline.json")).read_text())
        summary = json.loads(next(root.glob("grid-smoke-*-stages.json")).read_text())
        stats = timeline["stats"]
        slots = args.nodes * args.cpus_per_node
        est = [ln for ln in run.stderr.splitlines() if "estimate:" in ln]
        result = {
            "nodes": args.nodes,
            "logical_cpus_per_node": args.cpus_per_node,
            "slots": slots,
            "seeds": args.seeds,
            "mode": "Ray Train" if args.ray_train else "in the trial's process (--local-train)",
            **stats,
            "capacity_bound_s": round(stats["stage_seconds"] / slots, 2),
            "nodes_used": stats["nodes"],
            "job_wall_clock_s": summary["wall_clock_s"],
            "command_s": round(wall, 1),
            "estimate_line": est[-1] if est else "",
            "estimate_vs_actual": [ln for ln in run.stdout.splitlines() if "actual wall" in ln],
            "load_average": list(os.getloadavg()),
            "commit": subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
            ).stdout.strip(),
        }
        out = Path(
            args.out
            or REPO
            / "benchmarks"
            / "results"
            / f"sim_cluster_{args.nodes}x{args.cpus_per_node}.json"
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        png = next(root.glob("*-timeline.png"))
        (out.with_suffix(".png")).write_bytes(png.read_bytes())
        print(json.dumps(result, indent=1))
        return 0
    finally:
        stop(tmp)


if __name__ == "__main__":
    sys.exit(main())
