"""The commands beside the grid with an object-store ``--root``, against a loopback S3 server
(``moto``): ``raykd search`` (its stages and result file in the bucket), ``raykd evaluate`` and
``raykd export`` of a stage checkpoint given as its ``s3://`` URI (pulled and verified through
the stage store), ``raykd compare`` writing its report into the bucket; no output holds the
secret key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from raykd.cli import main
from tests.servers import RAY_S3_PORT, SECRET_KEY, S3Server, s3_env

BUCKET = "raykd-cli"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with S3Server(tmp_path_factory.mktemp("moto-cli")) as server:
        server.bucket(BUCKET)
        yield server


@pytest.fixture
def env(s3, monkeypatch, tmp_path):
    for k, v in s3_env(s3.endpoint).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("RAYKD_S3_ENDPOINT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("RAYKD_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def keys(s3, prefix: str) -> list[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


SPACE = """name: s3
base_preset: smoke
row: std_kd
num_samples: 2
objectives:
  - {metric: val_psnr, mode: max}
scheduler: {type: none}
params:
  kd_weight_scale: {loguniform: [0.1, 10.0]}
"""


@pytest.mark.ray
def test_search_with_an_object_store_root(ray_session, tmp_path, monkeypatch, tiny_data, capsys):
    """On the session's Ray, whose workers have the endpoint of RAY_S3 (conftest): trials work
    in their node's copy and share stages through the bucket."""
    with S3Server(tmp_path, port=RAY_S3_PORT) as s3:
        s3.bucket(BUCKET)
        for k, v in s3_env(s3.endpoint).items():
            monkeypatch.setenv(k, v)
        for k in ("AWS_ENDPOINT_URL", "RAYKD_S3_ENDPOINT", "MLFLOW_TRACKING_URI"):
            monkeypatch.delenv(k, raising=False)
        monkeypatch.setenv("RAYKD_CACHE", str(tmp_path / "cache"))
        monkeypatch.chdir(tmp_path)
        search_on_the_bucket(tmp_path, s3, tiny_data, capsys)


def search_on_the_bucket(env: Path, s3, tiny_data: Path, capsys) -> None:
    space = env / "space.yaml"
    space.write_text(SPACE)
    argv = ["search", "--space", str(space), "--datasets", str(tiny_data), "--size", "32", "32",
            "--epochs", "1", "--seeds", "1", "--precision", "fp32", "--local-train",
            "--root", f"s3://{BUCKET}/search", "--tracking-uri",
            f"sqlite:///{env / 'mlflow.db'}"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr()
    stored = keys(s3, "search/")
    done = [k for k in stored if k.startswith("search/stages/") and k.endswith("/done.json")]
    kinds = sorted(k.split("/")[2].split("-")[0] for k in done)
    assert kinds.count("teacher") == 1 and kinds.count("kd") == 2, kinds
    result = [k for k in stored if re.fullmatch(r"search/search-s3-[0-9a-f]{8}\.json", k)]
    assert len(result) == 1, stored
    assert result[0].replace(".json", "-stages.json") in stored  # the job's summary
    body = s3.client().get_object(Bucket=BUCKET, Key=result[0])["Body"].read()
    assert len(json.loads(body)["trials"]) == 2
    assert any(k.startswith("search/tune/") for k in stored)  # Tune's experiment state
    assert SECRET_KEY not in printed.out + printed.err


SID = "student-0123456789ab"


def stage_in_bucket(env: Path, monkeypatch, uri: str) -> bytes:
    """A finished student stage (a real DC-CNN checkpoint) published from node 'a'."""
    import torch

    from raykd.models.dccnn import DCCNN
    from raykd.orchestration.identity import StageRecord, StageStore
    from raykd.storage import resolve_root
    from raykd.train.checkpoint import save_checkpoint

    monkeypatch.setenv("RAYKD_CACHE", str(env / "node-a"))
    store = StageStore(resolve_root(uri))
    out = store.stage_dir(SID)
    out.mkdir(parents=True)
    torch.manual_seed(0)
    model = DCCNN(2, 2, 4)
    config = json.dumps({"data": {"size": [32, 32], "mask": {"acceleration": 3, "num_low": 4}}})
    payload = {"model": model.state_dict(), "arch": model.arch, "kind": "student", "config": config}
    best = save_checkpoint(out / "best.pt", payload)
    store.put(StageRecord(stage_id=SID, kind="student", output_dir=str(out),
                          best_checkpoint=str(best), best_val_loss=0.1, best_epoch=0))  # fmt: skip
    monkeypatch.setenv("RAYKD_CACHE", str(env / "node-b"))  # the command runs elsewhere
    return best.read_bytes()


def test_evaluate_a_stage_checkpoint_by_its_uri(env, s3, monkeypatch, tiny_data, capsys):
    uri = f"s3://{BUCKET}/evaluate"
    stage_in_bucket(env, monkeypatch, uri)
    ckpt = f"{uri}/stages/{SID}/best.pt"
    out = env / "m.json"
    assert main(["evaluate", ckpt, "--data", str(tiny_data / "vol0.h5"), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["checkpoint"] == ckpt and report["summary"]["psnr"][0] > 0
    assert SECRET_KEY not in "".join(capsys.readouterr()) + out.read_text()
    assert (env / "node-b").is_dir() and not (env / "node-b" / "evaluate").exists()
    # A checkpoint truncated in the bucket is refused in one line (not evaluated).
    key = f"evaluate/stages/{SID}/best.pt"
    whole = s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
    s3.client().put_object(Bucket=BUCKET, Key=key, Body=whole[:100])
    monkeypatch.setenv("RAYKD_CACHE", str(env / "node-c"))
    assert main(["evaluate", ckpt, "--data", str(tiny_data / "vol0.h5"), "--out",
                 str(env / "bad.json")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ckpt in err[0] and "best.pt is damaged" in err[0], err
    assert not (env / "bad.json").exists()
    # Not a stage checkpoint, or no such stage: one line each.
    assert main(["evaluate", f"s3://{BUCKET}/x.pt", "--data", str(tiny_data), "--out", "o"]) == 2
    assert "expected a stage checkpoint" in capsys.readouterr().err
    missing = f"{uri}/stages/kd-000000000000/best.pt"
    assert main(["evaluate", missing, "--data", str(tiny_data), "--out", "o.json"]) == 2
    assert "no such object (stage kd-000000000000 is not finished" in capsys.readouterr().err


def test_export_a_stage_checkpoint_by_its_uri(env, s3, monkeypatch, capsys):
    uri = f"s3://{BUCKET}/export"
    stage_in_bucket(env, monkeypatch, uri)
    ts = env / "student.pt"
    assert main(["export", f"{uri}/stages/{SID}/best.pt", "--out", str(ts)]) == 0
    printed = capsys.readouterr()
    assert ts.is_file() and "wrote" in printed.out
    assert SECRET_KEY not in printed.out + printed.err


def test_endpoint_option_and_refusals_keep_the_secret(env, s3, monkeypatch, capsys):
    """RAYKD_S3_ENDPOINT wins over AWS_ENDPOINT_URL_S3 (it travels to Ray workers with the
    job); a bad one ends in one line naming it without the secret."""
    uri = f"s3://{BUCKET}/endpoint"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # nothing there
    monkeypatch.setenv("RAYKD_S3_ENDPOINT", s3.endpoint)
    stage_in_bucket(env, monkeypatch, uri)  # reaches moto through RAYKD_S3_ENDPOINT
    monkeypatch.setenv("RAYKD_S3_ENDPOINT", f"http://{SECRET_KEY}@127.0.0.1:9")
    code = main(["export", f"{uri}/stages/{SID}/best.pt", "--out", str(env / "x.pt")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "cannot reach the endpoint http://127.0.0.1:9" in err and SECRET_KEY not in err


def test_compare_writes_its_report_into_the_bucket(env, s3, monkeypatch, capsys):
    import numpy as np

    from raykd.tracking import Tracking
    from tests.report_helpers import eval_json, log_stage, stage_tags

    uri = f"sqlite:///{env / 'mlflow.db'}"
    tracking = Tracking(uri, "s3-compare", artifact_root=env / "artifacts")
    psnr = np.array([[30.0, 31.0], [32.0, 33.0]])
    for row, method, shift in (("teacher", "", 3.0), ("student", "", 0.0), ("std_kd", "at", 1.0)):
        run = log_stage(tracking, env / "runs", stage_tags(row, method),
                        {"val": eval_json(psnr + shift, ("v0", "v1"))})  # fmt: skip
        tracking.end_run(run)
    root = f"s3://{BUCKET}/compare"
    argv = ["compare", "--experiment", "s3-compare", "--tracking-uri", uri, "--root", root,
            "--no-mlflow"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert f"files to {root}/comparison" in printed.out
    stored = keys(s3, "compare/comparison/")
    assert "compare/comparison/table_1.md" in stored
    # Without a tracking server, one line (an object-store root holds no sqlite store).
    assert main(["compare", "--root", root]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs --tracking-uri" in err[0]
    assert SECRET_KEY not in printed.out + printed.err
