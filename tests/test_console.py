"""What a job prints: a reduced smoke job (3 rows, 3 stages) run as a user would, from a temporary
directory, with stdout+stderr captured; then the same job again with ``--verbose`` (every stage
reused). And the slice-count wording of ``evaluate`` / ``reconstruct``.

How a console line is classified: raykd's lines carry ``[raykd`` (anywhere: ``--verbose`` keeps
Ray's ``(RayTrainWorker pid=…)`` prefix in front of them) or ``raykd:`` (data notes), or belong
to the end-of-job summary (from its ``== <job>:`` header on, lines of the summary's own
shapes); every other non-empty line is Ray's, Tune's or MLflow's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUMMARY = (
    "== ",
    "Ray/orchestration overhead",
    "compute path of trained stages",
    "val PSNR (dB)",
    "  ",  # the row table and the store's commands
    "MLflow store:",
    "stage summary:",
    "WARNING: ",
    "best student registered",
    "FAILED ",
)
ROWS = ["teacher", "student", "std_kd"]
# "[raykd] stage 3/3  <the stage's MLflow run name> (kd)<what happens>"
STAGE = re.compile(r"\[raykd\] stage (\d+)/(\d+)  (.+?) \((teacher|sft|student|kd)\)(.*)")


def classify(text: str) -> tuple[list[str], list[str]]:
    """(raykd's lines, everyone else's) among the non-empty lines of a job's console."""
    ours, theirs = [], []
    summary = False
    for line in filter(str.strip, text.splitlines()):
        summary = summary or line.startswith("== ")
        mine = "[raykd" in line or line.lstrip().startswith("raykd:")
        if mine or (summary and line.startswith(SUMMARY)):
            ours.append(line)
        else:
            theirs.append(line)
    return ours, theirs


def run_job(cwd: Path, *extra: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAYKD_VERBOSE", None)
    cmd = [sys.executable, str(REPO / "jobs" / "full_grid.py"), "--preset", "smoke"]
    cmd += ["--rows", *ROWS, "--methods", "at", "--root", str(cwd / "runs"), "--address", "local"]
    proc = subprocess.run(
        [*cmd, *extra], cwd=cwd, env=env, capture_output=True, text=True, timeout=540
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    return text


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("console_job")


@pytest.fixture(scope="module")
def quiet(job_dir) -> str:
    return run_job(job_dir)


@pytest.mark.ray
def test_default_console_is_raykd_lines_with_stage_progress(quiet):
    assert "Traceback" not in quiet
    ours, theirs = classify(quiet)
    assert len(theirs) <= 0.10 * (len(ours) + len(theirs)), "\n".join(theirs)
    started = [m for m in map(STAGE.search, quiet.splitlines()) if m and m[5] == ": starting"]
    # teacher, student, std_kd/at: three distinct stages, each announced once as k/3
    assert sorted(int(m[1]) for m in started) == [1, 2, 3]
    assert {m[2] for m in started} == {"3"}
    labels = " ".join(m[3] for m in started)
    assert "teacher" in labels and "student" in labels, labels
    assert re.search(r"std_kd\W+at\b", labels), labels  # the row and its KD method
    # every epoch line names its stage and k/N too; the result says what it averages over
    epochs = [m for m in map(STAGE.search, quiet.splitlines()) if m and " epoch " in m[5]]
    assert len(epochs) >= 3 and all("val PSNR" in m[5] for m in epochs)
    assert "split val: 1 volume, 4 slices" in quiet
    # no Ray/Train/MLflow internals by default
    for noise in ("Checkpoint successfully created", "Trial status", "pid=", "INFO mlflow"):
        assert noise not in quiet


@pytest.mark.ray
def test_verbose_console_shows_ray_and_rerun_announces_reuse(quiet, job_dir):
    text = run_job(job_dir, "--verbose")
    reused = [m for m in map(STAGE.search, text.splitlines()) if m and "reused" in m[5]]
    assert sorted(int(m[1]) for m in reused) == [1, 2, 3], text[-3000:]
    assert "0 stages trained, 0 resumed, 3 reused" in text
    _, theirs = classify(text)
    assert theirs, "--verbose printed nothing of Ray's"
    assert any("Started a local Ray instance" in line for line in theirs), theirs[:20]


@pytest.fixture(scope="module")
def subset_run(tiny_data, tmp_path_factory) -> tuple[Path, str]:
    """A 1-epoch teacher whose own validation used 2 of the 6 slices per volume, as a job with
    ``max_slices_per_volume`` does; and what ``raykd train`` printed."""
    import contextlib
    import io

    from raykd.cli import main
    from tests.conftest import tiny_overrides

    out = tmp_path_factory.mktemp("subset_teacher")
    sets = tiny_overrides(tiny_data, out, "teacher", **{"optim.epochs": "1"})
    sets.append("data.max_slices_per_volume=2")
    args = ["train"]
    for item in sets:
        args += ["--set", item]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(args) == 0
    return out / "best.pt", buf.getvalue()


@pytest.fixture(scope="module")
def subset_checkpoint(subset_run) -> Path:
    return subset_run[0]


def test_train_says_which_slices_its_validation_covers(subset_run):
    assert "(split val: 1 volume, 2 slices, at most 2 per volume)" in subset_run[1]


def test_evaluate_names_volumes_slices_and_the_jobs_subset(subset_checkpoint, tiny_data, tmp_path):
    from raykd.cli import main

    def evaluate(*extra: str) -> str:
        import contextlib
        import io

        buf = io.StringIO()
        out = tmp_path / f"m{len(extra)}.json"
        with contextlib.redirect_stdout(buf):
            assert (
                main(
                    [
                        "evaluate",
                        str(subset_checkpoint),
                        "--data",
                        str(tiny_data),
                        "--out",
                        str(out),
                        "--force",
                        *extra,
                    ]
                )
                == 0
            )
        return buf.getvalue()

    text = evaluate()
    assert f"metrics on --data {tiny_data}: 4 volumes, 24 slices (all slices" in text
    assert "used at most 2 slices per volume" in text and "--max-slices 2" in text
    text = evaluate("--max-slices", "2")
    assert "4 volumes, 8 slices (at most 2 slices of each volume" in text
    assert "note:" not in text  # the same slices as the checkpoint's own validation


def test_reconstruct_names_the_volume_and_slices(subset_checkpoint, tiny_data, tmp_path, capsys):
    from raykd.cli import main

    out = tmp_path / "r.h5"
    assert (
        main(
            [
                "reconstruct",
                str(subset_checkpoint),
                "--input",
                str(tiny_data / "vol3.h5"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "volume vol3 of --input, 6 slices (all of its slices)" in capsys.readouterr().out


def test_max_slices_refuses_zero(subset_checkpoint, tiny_data, tmp_path, capsys):
    from raykd.cli import main

    args = ["evaluate", str(subset_checkpoint), "--data", str(tiny_data)]
    args += ["--out", str(tmp_path / "m.json"), "--max-slices", "0"]
    with pytest.raises(SystemExit) as exc:  # argparse's own error: usage and one line
        main(args)
    assert exc.value.code == 2
    assert "--max-slices: expected >= 1, got 0" in capsys.readouterr().err
