"""Grid and search flags are checked before Ray starts (issue 15): one line per problem, exit
status 2, in seconds.

The real entry points run (``raykd grid`` / ``raykd search`` through :func:`raykd.cli.main`,
and ``jobs/full_grid.py``) in a fresh interpreter, so "Ray never started" is a fact about that
process and not about the Ray instance other tests share.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

RUNNER = """
import contextlib, io, json, runpy, sys, time
from raykd.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            if argv[0].endswith(".py"):  # a job script, run as `python jobs/x.py ...` runs it
                sys.argv = argv
                runpy.run_path(argv[0], run_name="__main__")
                rc = 0
            else:
                rc = main(argv)
        except SystemExit as exc:
            rc = exc.code
    ray = sys.modules.get("ray")
    started = bool(ray is not None and ray.is_initialized())
    out.append({"rc": rc, "err": err.getvalue(), "s": time.perf_counter() - t0, "ray": started})
print(json.dumps(out))
"""


def _run(cases: list[list[str]], tmp_path: Path) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAYKD_HOME": str(tmp_path / "home")}
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(cases)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def bad_data(tiny_data, tmp_path_factory) -> Path:
    """The tiny volumes, plus an all-zero one."""
    root = tmp_path_factory.mktemp("preflight_data")
    for v in range(4):
        (root / f"vol{v}.h5").write_bytes((tiny_data / f"vol{v}.h5").read_bytes())
    with h5py.File(root / "vol4.h5", "w") as f:
        f["image"] = np.zeros((3, 32, 32), np.float32)
    return root


def test_grid_search_and_job_flags_fail_in_seconds_before_ray(tiny_data, bad_data, tmp_path):
    (tmp_path / "empty").mkdir()
    space = tmp_path / "deep.yaml"
    space.write_text(
        "name: deep\nbase_preset: smoke\nrow: sft_kd\nnum_samples: 2\n"
        "objectives: [{metric: val_psnr, mode: max}]\n"
        "params: {student_depth: {choices: [3, 6]}, acceleration: {choices: [4.0, 1.0]}}\n"
    )
    base = ["--datasets", str(tiny_data), "--size", "32", "32", "--root", str(tmp_path / "r")]
    grid = [
        "grid",
        "--datasets",
        str(tiny_data),
        "--size",
        "32",
        "32",
        "--root",
        str(tmp_path / "root"),
        "--local-train",
    ]
    cases = {
        "--student-depths 9": (["--student-depths", "9"], ["not below the teacher depth 5"]),
        "--student-depths 1": (["--student-depths", "1"], ["--student-depths [1]", ">= 2"]),
        "--epochs 0": (["--epochs", "0"], ["--epochs 0: expected >= 1"]),
        "--workers 0": (["--workers", "0"], ["--workers 0: expected >= 1"]),
        "--workers 3": (  # the global batch (smoke: 4) must split evenly over the ranks
            ["--workers", "3"],
            ["--workers 3", "data.batch_size 4", "cannot be split evenly over 3 workers"],
        ),
        "--accelerations 0 -4": (["--accelerations", "0", "-4"], ["--accelerations 0 -4", "> 1"]),
        "--size 4 4": (["--size", "4", "4"], ["--size 4 4", "at least 8 8"]),
        "--max-slices 0": (["--max-slices", "0"], ["--max-slices 0: expected >= 1"]),
        "--test /none.h5": (["--test", "/none.h5"], ["data.test", "/none.h5", "matches no"]),
        "http": (
            ["--tracking-uri", "http://127.0.0.1:9"],
            ["--tracking-uri http://127.0.0.1:9", "no tracking server reachable"],
        ),
        "foo": (["--tracking-uri", "foo://bar"], ["--tracking-uri foo://bar", "unknown scheme"]),
        "postgresql": (
            ["--tracking-uri", "postgresql://u:secret@127.0.0.1:9/mlflow"],
            ["--tracking-uri postgresql://u:***@127.0.0.1:9/mlflow", "no database server"],
        ),
        "empty dir": (
            ["--datasets", str(tmp_path / "empty")],
            [str(tmp_path / "empty"), "no .h5 volumes"],
        ),
        "zero volume": (["--datasets", str(bad_data)], ["vol4.h5", "constant"]),
        "two at once": (
            ["--workers", "0", "--student-depths", "7"],
            ["--workers 0", "--student-depths [7]"],
        ),
    }
    argvs = [grid + argv for argv, _ in cases.values()]
    # Searches: their base grid's flags, and every value their space can sample.
    search_cases = {
        "search --accelerations 1": (
            ["search", "--space", "kd_weights", "--accelerations", "1", *base],
            ["--accelerations 1", "> 1"],
        ),
        "search space": (
            ["search", "--space", str(space), *base],
            [
                "search parameter student_depth [6]",
                "teacher depth 5",
                "search parameter acceleration 1",
            ],
        ),
        "search --epochs 0": (
            ["search", "--space", "kd_weights", "--epochs", "0", *base],
            ["--epochs 0: expected >= 1"],
        ),
        # The job scripts are the same entry points.
        "jobs/full_grid.py": (
            [str(REPO / "jobs" / "full_grid.py"), "--workers", "0", *base],
            ["full_grid.py: error: --workers 0: expected >= 1"],
        ),
        "jobs/search_kd_weights.py": (
            [str(REPO / "jobs" / "search_kd_weights.py"), "--max-concurrent", "0", *base],
            ["--max-concurrent 0: expected >= 1"],
        ),
    }
    cases.update(search_cases)
    argvs += [argv for argv, _ in search_cases.values()]
    t0 = time.perf_counter()
    results = _run(argvs, tmp_path)
    wall = time.perf_counter() - t0
    for i, ((name, (_, needles)), r) in enumerate(zip(cases.items(), results, strict=True)):
        assert r["rc"] == 2, (name, r)
        assert not r["ray"], f"{name}: Ray was started"
        lines = r["err"].strip().splitlines()
        assert all(ln.startswith("raykd: error: ") or not ln.startswith(" ") for ln in lines)
        assert "Traceback" not in r["err"], (name, r["err"])
        for needle in needles:
            assert needle in r["err"], (name, r["err"])
        # Seconds, not a minute inside Ray (the http probe waits at most 3 s). The first case
        # also pays the imports (torch, pydantic models): generous for a loaded 2-core box.
        assert r["s"] < (60 if i == 0 else 15), (name, r["s"])
    two = results[list(cases).index("two at once")]["err"].strip().splitlines()
    assert len(two) == 2, two  # one line per problem
    assert wall < 200
    assert not (tmp_path / "root" / "stages").exists()  # no job was started


def test_valid_grid_passes_preflight(tiny_data, tmp_path):
    """The checks refuse only what is wrong: the test grid's own flags pass, quickly."""
    from argparse import Namespace

    from raykd.orchestration.preflight import check_job_flags, preflight_grid
    from tests.conftest import tiny_grid

    spec = tiny_grid(tiny_data, rows=["teacher", "sft_teacher", "student", "std_kd", "sft_kd"])
    args = Namespace(workers=1, max_concurrent=None, num_cpus=None, epochs=1, tracking_uri=None)
    t0 = time.perf_counter()
    preflight_grid(spec, check_job_flags(args))
    assert time.perf_counter() - t0 < 20
    uri = f"sqlite:///{tmp_path}/x/mlflow.db"
    assert check_job_flags(Namespace(tracking_uri=uri)) == []
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server:  # a database port that answers
        port = server.getsockname()[1]
        uri = f"postgresql://u:p@127.0.0.1:{port}/mlflow"
        assert check_job_flags(Namespace(tracking_uri=uri)) == []
