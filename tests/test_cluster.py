"""Ray as raykd starts or joins it: loopback only, and unambiguous on a shared machine.

The Ray under test is started by raykd's own code in a child process (the test session's Ray
is separate), so every listener it opens can be told apart from other Rays on the machine by
process id.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, os, sys
import ray
from raykd.orchestration.cluster import init_ray

message = init_ray("local", num_cpus=1)

@ray.remote(num_cpus=0)
def inside():
    from ray._private.services import canonicalize_bootstrap_address_or_die
    return {"pid": os.getpid(), "resolves_to": canonicalize_bootstrap_address_or_die(None),
            "commit": os.environ.get("RAYKD_GIT_COMMIT")}

info = ray.get(inside.remote())
info["gcs"] = ray.get_runtime_context().gcs_address
info["message"] = message
print("READY " + json.dumps(info), flush=True)
sys.stdin.readline()  # hold Ray up until the test has looked at the sockets
ray.shutdown()
"""


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [root]
    while todo:
        pid = todo.pop()
        out.add(pid)
        todo.extend(children.get(pid, []))
    return out


def _listeners(pids: set[int]) -> list[tuple[str, int]]:
    """(local address, pid) of every listening TCP socket owned by ``pids``."""
    text = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    out = []
    for line in text.splitlines():
        fields = line.split()
        for pid in map(int, re.findall(r"pid=(\d+)", line)):
            if pid in pids:
                out.append((fields[3], pid))
    return out


@pytest.mark.ray
@pytest.mark.skipif(
    not Path("/usr/bin/ss").exists() and not Path("/bin/ss").exists(),
    reason="needs ss (iproute2) to list listening sockets",
)
def test_local_ray_listens_on_loopback_only_and_finds_itself():
    import json

    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = ""
        while not line.startswith("READY"):
            line = proc.stdout.readline()
            assert line, "the child process ended before Ray was up"
        info = json.loads(line.removeprefix("READY "))
        listeners = _listeners(_descendants(proc.pid))
        assert len(listeners) >= 3, listeners  # GCS, raylet, agents, workers at least
        exposed = [
            (addr, pid)
            for addr, pid in listeners
            if not addr.startswith(("127.", "[::1]", "[::ffff:127."))
        ]
        assert not exposed, f"listening beyond loopback: {exposed}"
        # Inside a worker, "which Ray is this?" resolves to this instance even when other
        # Rays run on the machine (Train's placement-group cleaner asks exactly this).
        assert info["resolves_to"] == info["gcs"]
        assert info["gcs"].startswith("127.0.0.1:")
        assert "private local Ray" in info["message"]
    finally:
        if proc.poll() is None:
            proc.stdin.write("\n")
            proc.stdin.flush()
            proc.wait(timeout=60)
