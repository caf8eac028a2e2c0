"""Ray as raykd starts or joins it: loopback only, and unambiguous on a shared machine.

The Ray under test is started by raykd's own code in a child process (the test session's Ray
is separate), so every listener it opens can be told apart from other Rays on the machine by
process id.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, os, sys
from raykd.orchestration.cluster import init_ray

message = init_ray("local", num_cpus=1)  # before `import ray`: Ray reads its switches once
import ray

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


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _kill_by_marker(marker: str) -> None:
    """End the processes whose command line names ``marker`` (this test's Ray only)."""
    import signal

    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


@pytest.mark.ray
def test_job_joins_a_running_ray_start_cluster_and_says_so():
    """With a `ray start` cluster up, a job joins it (no second local Ray) and names it."""
    import shutil
    import tempfile

    tmp = tempfile.mkdtemp(prefix="rk-", dir="/tmp")  # short: Ray's socket paths have limits
    gcs, agent, agent_grpc, client, nm, om, rt, metrics = _free_ports(8)
    env = {
        **os.environ,
        "RAY_TMPDIR": tmp,  # this cluster records its address in $RAY_TMPDIR/ray, not /tmp/ray
        "RAY_AUTH_MODE": "token",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": str(REPO),
    }
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    start = [
        "ray", "start", "--head", "--num-cpus", "1", "--include-dashboard", "false",
        "--port", str(gcs), "--dashboard-agent-listen-port", str(agent),
        "--dashboard-agent-grpc-port", str(agent_grpc), "--ray-client-server-port", str(client),
        "--node-manager-port", str(nm), "--object-manager-port", str(om),
        "--runtime-env-agent-port", str(rt), "--metrics-export-port", str(metrics),
        "--disable-usage-stats",
    ]  # fmt: skip
    try:
        # The cluster's processes get no path to this checkout (a node without raykd).
        bare = {k: v for k, v in env.items() if k != "PYTHONPATH"}
        started = subprocess.run(
            start, env=bare, cwd=tmp, capture_output=True, text=True, timeout=120
        )
        assert started.returncode == 0, started.stdout[-1500:] + started.stderr[-1500:]
        code = (
            "import ray\n"
            "from raykd.orchestration.cluster import init_ray\n"
            "print('MESSAGE', init_ray())\n"
            "print('GCS', ray.get_runtime_context().gcs_address)\n"
            "@ray.remote(num_cpus=0)\n"
            "def where():\n"
            "    import os, sys\n"
            "    shipped = [p for p in sys.path if 'runtime_resources' in p\n"
            "               and os.path.isfile(os.path.join(p, 'raykd', '__init__.py'))]\n"
            "    return shipped[0] if shipped else '-', os.environ.get('RAYKD_GIT_COMMIT')\n"
            "print('WORKER', *ray.get(where.remote()))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
            timeout=180,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        message = next(line for line in out.stdout.splitlines() if line.startswith("MESSAGE"))
        assert "joined the Ray cluster at" in message and f":{gcs}" in message, message
        assert f"GCS {message.split('at ', 1)[1].split()[0]}" in out.stdout
        # Workers get a copy of raykd through the runtime env (py_modules: importable on a node
        # where it is not installed; on this one host the driver's own path also resolves it)
        # and the commit of the code that submitted the job.
        worker = next(line for line in out.stdout.splitlines() if line.startswith("WORKER"))
        path, commit = worker.split()[1:3]
        assert "runtime_resources" in path, worker
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
        if head.returncode == 0:
            assert commit == head.stdout.strip()
    finally:
        _kill_by_marker(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


SUBMITTED = """
from raykd.orchestration.cluster import init_ray
print('MESSAGE', init_ray(), flush=True)
import ray
from raykd.lines import line

@ray.remote(num_cpus=0)
def where():
    import os, sys
    import raykd
    line('[raykd] hello from a worker')
    uploads = [p for p in sys.path if 'py_modules_files' in p]
    return raykd.__file__, len(uploads), os.environ.get('RAYKD_GIT_COMMIT')

print('WORKER', *ray.get(where.remote()), flush=True)
"""


@pytest.mark.ray
def test_submitted_job_with_working_dir_ships_raykd_once_and_relays_its_lines(tmp_path):
    """`ray job submit --working-dir <checkout>`: the job already ships raykd, so the driver
    adds no `py_modules` upload; it reconnects with what workers still need (the commit, the
    console relay), and a worker's raykd line reaches the job's log without Ray's prefix."""
    import shutil
    import tempfile

    tmp = tempfile.mkdtemp(prefix="rk-", dir="/tmp")
    gcs, dash, agent, agent_grpc, client, nm, om, rt, metrics = _free_ports(9)
    env = {**os.environ, "RAY_TMPDIR": tmp, "RAY_AUTH_MODE": "token"}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAYKD_GIT_COMMIT="c0ffee")
    for key in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "PYTHONPATH", "RAYKD_VERBOSE"):
        env.pop(key, None)
    start = [
        "ray", "start", "--head", "--num-cpus", "1", "--port", str(gcs),
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
        "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port",
        str(agent_grpc), "--ray-client-server-port", str(client), "--node-manager-port", str(nm),
        "--object-manager-port", str(om), "--runtime-env-agent-port", str(rt),
        "--metrics-export-port", str(metrics), "--disable-usage-stats",
    ]  # fmt: skip
    script = tmp_path / "submitted.py"
    script.write_text(SUBMITTED)
    try:
        started = subprocess.run(start, env=env, cwd=tmp, capture_output=True, text=True,
                                 timeout=180)  # fmt: skip
        assert started.returncode == 0, started.stdout[-1500:] + started.stderr[-1500:]
        submit = [
            "ray", "job", "submit", "--address", f"http://127.0.0.1:{dash}",
            "--working-dir", str(REPO), "--runtime-env-json",
            '{"env_vars": {"RAYKD_GIT_COMMIT": "c0ffee"}}',
            "--", "python", str(script),
        ]  # fmt: skip
        out = subprocess.run(submit, env=env, cwd=REPO, capture_output=True, text=True,
                             timeout=400)  # fmt: skip
        text = out.stdout + out.stderr
        assert out.returncode == 0, text[-3000:]
        message = next(x for x in text.splitlines() if x.startswith("MESSAGE"))
        assert "joined the Ray cluster at" in message, message
        worker = next(x for x in text.splitlines() if x.startswith("WORKER")).split()
        assert "_ray_pkg_" in worker[1] and worker[2] == "0", worker  # the working dir's raykd
        assert worker[3] == "c0ffee"  # the job's own value stands
        hello = [x for x in text.splitlines() if "hello from a worker" in x]
        assert hello and all("pid=" not in x for x in hello), hello
    finally:
        _kill_by_marker(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
