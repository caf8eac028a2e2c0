"""What a person meets in MLflow after a job: models stored with the run, params that mean what
they say, one run per stage, and the UI (real ``mlflow ui``, headless Chromium) opening on the
stage runs with their results.

One module fixture runs a tiny job twice (the second reuses every stage), the first from a
working directory that is deleted afterwards; the tests read what the two jobs left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from raykd.tracking import schema as S
from raykd.tracking import ui
from tests.browser import Browser, find_chromium
from tests.conftest import tiny_grid

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "raykd-ui"
ROWS = ["teacher", "student", "std_kd"]


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")} if path.is_dir() else set()


@pytest.fixture(scope="module")
def jobs(ray_session, tiny_data, tmp_path_factory):
    from raykd.orchestration.grid import run_grid
    from raykd.orchestration.job import finish_job, start_job

    base = tmp_path_factory.mktemp("ui")
    cwd, cwd2 = base / "cwd", base / "cwd2"
    cwd.mkdir()
    cwd2.mkdir()
    spec = tiny_grid(tiny_data, rows=ROWS, methods=["at"])
    kwargs = dict(root=base / "runs", experiment=EXPERIMENT, local_train=True)
    checkout_before = _tree(REPO / "mlruns")
    here = os.getcwd()
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        try:
            os.chdir(cwd)
            job = start_job("ui-test", {"test": 1}, **kwargs)
            out["rows"] = run_grid(spec, job)
            out["summary"] = finish_job(job, out["rows"])
            out["cwd_left"] = _tree(cwd)
            os.chdir(cwd2)
            job2 = start_job("ui-test", {"test": 2}, **kwargs)
            out["rows2"] = run_grid(spec, job2)
            out["summary2"] = finish_job(job2, out["rows2"])
        finally:
            os.chdir(here)
    shutil.rmtree(cwd)
    out.update(job=job, job2=job2, tracking=job.tracking, root=base / "runs")
    out["checkout_new"] = _tree(REPO / "mlruns") - checkout_before
    return out


@pytest.mark.ray
def test_model_lives_with_the_run_and_loads_after_cwd_is_gone(jobs, tmp_path, monkeypatch):
    import mlflow
    import mlflow.pytorch

    assert jobs["cwd_left"] == set(), "the job wrote into its working directory"
    assert jobs["checkout_new"] == set(), "the job wrote into the checkout's mlruns/"
    tracking, reg = jobs["tracking"], jobs["summary"].registered_model
    monkeypatch.chdir(tmp_path)  # the job's working directory no longer exists
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking.uri)
    mlflow.set_tracking_uri(tracking.uri)
    model = mlflow.pytorch.load_model(f"models:/{reg.name}@champion")
    assert model(torch.rand(2, 4, 32, 32)).shape == (2, 1, 32, 32)
    assert not (tmp_path / "mlruns").exists()
    # The logged model belongs to the job's experiment and store, linked to the best run.
    client = tracking.client
    (logged,) = client.search_logged_models(experiment_ids=[tracking.experiment_id])
    assert logged.source_run_id == reg.run_id
    assert Path(logged.artifact_location.removeprefix("file://")).is_relative_to(jobs["root"])
    outputs = client.get_run(reg.run_id).outputs.model_outputs
    assert [o.model_id for o in outputs] == [logged.model_id]  # "Logged models (1)"
    version = client.get_model_version(reg.name, reg.version)
    best = next(r for r in jobs["rows"] if r.mlflow_run_id == reg.run_id)
    assert f"Row **{best.row.kind}**" in version.description
    assert f"{best.psnr:.2f} dB" in version.description
    assert "Teacher:" in version.description


@pytest.mark.ray
def test_stage_runs_log_their_own_sections_and_name_their_teacher(jobs):
    tracking = jobs["tracking"]
    runs = {r.data.tags[S.TAG_ROW]: r for r in tracking.runs(ui.STAGE_FILTER)}
    assert sorted(runs) == sorted(ROWS)
    unused = {"teacher": ("kd.", "sft.", "student."), "student": ("kd.", "sft.", "teacher.")}
    for row, prefixes in unused.items():
        params = runs[row].data.params
        assert not [k for k in params if k.startswith(prefixes)], (row, sorted(params))
        assert "optim.epochs" in params
    kd = runs["std_kd"]
    assert kd.data.params["kd.method"] == "at" and not any(
        k.startswith("sft.") for k in kd.data.params
    )
    teacher_id = kd.data.tags[S.TAG_TEACHER_RUN]
    assert teacher_id == runs["teacher"].info.run_id
    note = kd.data.tags["mlflow.note.content"]
    assert f"(#/experiments/{tracking.experiment_id}/runs/{teacher_id})" in note
    # The distinguishing part first: row, method, depth; then dataset, acceleration, seed.
    assert kd.info.run_name.startswith("std_kd-at-D2C2 · ")
    assert runs["teacher"].info.run_name.startswith("teacher-D3C2 · ")


@pytest.mark.ray
def test_rerun_shows_each_stage_once_and_the_job_lists_all_rows(jobs):
    tracking, job2 = jobs["tracking"], jobs["job2"]
    assert jobs["summary2"].stages_trained == 0
    stages = tracking.runs(ui.STAGE_FILTER)  # what the shared view shows
    names = [r.info.run_name for r in stages]
    assert len(names) == len(set(names)) == len(ROWS), names
    children = tracking.children(job2.run_id)  # the rerun's tree: one reuse link per row
    assert sorted(c.data.tags[S.TAG_ROLE] for c in children) == ["reuse"] * len(ROWS)
    assert all(c.info.run_name.startswith("reused: ") for c in children)
    assert [r.mlflow_run_id for r in jobs["rows2"]] == [r.mlflow_run_id for r in jobs["rows"]]
    # The view the job prints is stored on the experiment.
    tags = tracking.client.get_experiment(tracking.experiment_id).tags
    assert ui.VIEW_TAG in tags


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_ui(uri: str, port: int, log: Path):
    """``mlflow ui`` on the job's store, as the job tells a person to start it."""
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300  # a loaded 2-core machine: ~2 min
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"mlflow ui did not start: {log.read_text()[-2000:]}"
                    ) from None
                time.sleep(2)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, 15)  # the server and its workers: the group this test started
        proc.wait(timeout=30)


# What the rendered runs table holds: header texts and, per run-name link, whether its text
# fits its cell (not cut with an ellipsis) and where it sits.
TABLE_JS = """(() => {
  const vw = window.innerWidth;
  const headers = [...document.querySelectorAll('[role=columnheader]')].map(h => {
    const r = h.getBoundingClientRect();
    return {text: h.innerText.trim(), left: r.left, right: r.right, width: r.width};
  });
  const names = [...document.querySelectorAll('a[href*="/runs/"]')].map(a => {
    let cell = a.closest('[role=gridcell]') || a.parentElement;
    const r = a.getBoundingClientRect(), c = cell.getBoundingClientRect();
    return {text: a.innerText.trim(), fits: a.scrollWidth <= a.clientWidth + 1
            && r.right <= c.right + 1 && r.right <= vw, width: r.width};
  });
  return {href: location.href, vw, headers, names, text: document.body.innerText};
})()"""


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(1200)
def test_mlflow_ui_opens_on_stage_runs_with_results(jobs, tmp_path):
    if find_chromium() is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium (see README)")
    tracking = jobs["tracking"]
    exp = tracking.experiment_id
    stage_names = sorted(r.info.run_name for r in tracking.runs(ui.STAGE_FILTER))
    # Not under pytest's basetemp, which later sessions on the machine rotate away.
    shots = Path(os.environ.get("RAYKD_UI_SCREENSHOTS") or tempfile.mkdtemp(prefix="raykd-ui-"))
    shots.mkdir(parents=True, exist_ok=True)
    with mlflow_ui(tracking.uri, _free_port(), tmp_path / "mlflow-ui.log") as base:
        url = ui.stages_url(tracking.uri, exp).replace(ui.LOCAL_UI, base)
        with Browser(tmp_path / "profile") as browser:  # fresh profile: nothing remembered
            browser.goto(url)
            want = " && ".join(f"document.body.innerText.includes({n!r})" for n in stage_names)
            browser.wait_for(f"{want} && document.body.innerText.includes('final_val_psnr')", 120)
            time.sleep(2)  # column widths are applied after the rows render
            page = browser.js(TABLE_JS)
            shot = browser.screenshot(shots / "stages-view.png")
            # For the record: what the bare experiment address shows in a fresh browser.
            with Browser(tmp_path / "profile-bare") as bare:
                bare.goto(f"{base}/#/experiments/{exp}")
                bare.wait_for("location.hash.split('?')[0].split('/').length > 3", 60)
                time.sleep(5)
                bare.screenshot(shots / "bare-experiment.png")
    print(f"\nscreenshots: {shots}")
    # The training-runs table, not the GenAI overview.
    assert f"#/experiments/{exp}/runs?" in page["href"], page["href"]
    assert "/overview" not in page["href"] and "Token Usage" not in page["text"]
    # Every stage's name is shown in full in its cell, the distinguishing part first.
    shown = {n["text"]: n for n in page["names"]}
    for name in stage_names:
        assert name in shown, (name, sorted(shown))
        assert shown[name]["fits"], (name, shown[name])
    # The final validation PSNR (and SSIM) columns are there and on screen, without adding any.
    headers = {h["text"]: h for h in page["headers"] if h["width"] > 0}
    for column in ("final_val_psnr", "final_val_ssim"):
        assert column in headers, sorted(headers)
        assert headers[column]["right"] <= page["vw"], headers[column]
    assert shot.stat().st_size > 10_000
