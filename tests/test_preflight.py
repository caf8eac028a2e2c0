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
import contextlib, io, json, sys, time
from raykd.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
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


def test_grid_flags_fail_in_seconds_before_ray(tiny_data, bad_data, tmp_path):
    (tmp_path / "empty").mkdir()
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
        "--accelerations 0 -4": (["--accelerations", "0", "-4"], ["--accelerations 0 -4", "> 1"]),
        "--size 4 4": (["--size", "4", "4"], ["--size 4 4", "at least 8 8"]),
        "--max-slices 0": (["--max-slices", "0"], ["--max-slices 0: expected >= 1"]),
        "--test /none.h5": (["--test", "/none.h5"], ["data.test", "/none.h5", "matches no"]),
        "http": (
            ["--tracking-uri", "http://127.0.0.1:9"],
            ["--tracking-uri http://127.0.0.1:9", "no tracking server reachable"],
        ),
        "foo": (["--tracking-uri", "foo://bar"], ["--tracking-uri foo://bar", "unknown scheme"]),
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
    t0 = time.perf_counter()
    results = _run([grid + argv for argv, _ in cases.values()], tmp_path)
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
    two = results[-1]["err"].strip().splitlines()
    assert len(two) == 2, two  # one line per problem
    assert wall < 200
    assert not (tmp_path / "root" / "stages").exists()  # no job was started


def test_search_and_job_script_fail_before_ray(tiny_data, tmp_path):
    base = ["--datasets", str(tiny_data), "--size", "32", "32", "--root", str(tmp_path / "r")]
    space = tmp_path / "deep.yaml"
    space.write_text(
        "name: deep\nbase_preset: smoke\nrow: sft_kd\nnum_samples: 2\n"
        "objectives: [{metric: val_psnr, mode: max}]\n"
        "params: {student_depth: {choices: [3, 6]}, acceleration: {choices: [4.0, 1.0]}}\n"
    )
    results = _run(
        [
            ["search", "--space", "kd_weights", "--accelerations", "1", *base],
            ["search", "--space", str(space), *base],
            ["search", "--space", "kd_weights", "--epochs", "0", *base],
        ],
        tmp_path,
    )
    for r in results:
        assert r["rc"] == 2 and not r["ray"] and "Traceback" not in r["err"], r
    assert "--accelerations 1" in results[0]["err"]
    err = results[1]["err"]
    assert "search parameter student_depth [6]" in err and "teacher depth 5" in err, err
    assert "search parameter acceleration 1" in err, err
    assert "--epochs 0: expected >= 1" in results[2]["err"]
    # The job script is the same entry point.
    done = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "full_grid.py"), "--workers", "0", *base],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert done.returncode == 2 and "--workers 0: expected >= 1" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


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
