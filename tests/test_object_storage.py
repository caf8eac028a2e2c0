"""The stage store on S3-compatible object storage, against a real S3 API server on loopback
(``moto`` in server mode, started here): claim, complete, verify and read back a stage from
another node's private copy; a truncated checkpoint refused; two claimants on one stage; a dead
holder's claim taken over once; bad roots refused in one line; Ray's storage on the bucket."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from raykd.orchestration.identity import StageRecord, StageStore
from raykd.storage import resolve_root, storage_for
from raykd.storage.s3 import StorageError
from tests.servers import SECRET_KEY, S3Server, s3_env

REPO = Path(__file__).resolve().parents[1]
SID = "teacher-0123456789ab"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with S3Server(tmp_path_factory.mktemp("moto")) as server:
        server.bucket("raykd-runs")
        yield server


@pytest.fixture
def env(s3, monkeypatch, tmp_path):
    for k, v in s3_env(s3.endpoint).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("RAYKD_S3_ENDPOINT", raising=False)  # it would win over the server's
    return tmp_path


def node(monkeypatch, tmp_path: Path, name: str, uri: str) -> StageStore:
    """A stage store as a node with its own private working copy sees it."""
    monkeypatch.setenv("RAYKD_CACHE", str(tmp_path / name))
    return StageStore(resolve_root(uri))


def train(store: StageStore, sid: str = SID, loss: float = 0.5) -> StageRecord:
    """What a worker leaves: checkpoints and metrics in its copy, then the record."""
    out = store.stage_dir(sid)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"w": torch.arange(4096.0) * loss}, out / "best.pt")
    torch.save({"w": torch.ones(4096)}, out / "last.pt")
    (out / "metrics.jsonl").write_text('{"epoch": 1}\n')
    best = str(out / "best.pt")
    record = StageRecord(
        stage_id=sid, kind="teacher", output_dir=str(out), best_checkpoint=best,
        best_val_loss=loss, best_epoch=1,
    )  # fmt: skip
    return store.put(record)


def test_claim_complete_verify_read_back_from_another_node(env, monkeypatch):
    uri = "s3://raykd-runs/read-back"
    a = node(monkeypatch, env, "a", uri)
    with a.lock(SID, poll_s=0.1):
        assert a.get(SID) is None
        written = train(a)
    assert set(written.checkpoints) == {"best.pt", "last.pt"}
    b = node(monkeypatch, env, "b", uri)
    assert b.root != a.root and not b.stage_dir(SID).exists()  # private copies
    record, problem = b.get_intact(SID)
    assert problem is None and record is not None
    assert record.output_dir == str(b.stage_dir(SID))  # this node's copy, pulled
    assert Path(record.best_checkpoint).read_bytes() == (a.stage_dir(SID) / "best.pt").read_bytes()
    assert (b.stage_dir(SID) / "metrics.jsonl").read_text() == '{"epoch": 1}\n'
    # Published once: a second record for the stage (a twin job) leaves the first standing.
    again = train(b, loss=0.25)
    assert again.best_val_loss == 0.5 and a.get(SID).best_val_loss == 0.5
    b.log_use(SID, "trained", job="j1")
    a.log_use(SID, "reused", job="j2")
    assert b.uses("j1")["trained"] == [SID] and a.uses("j2")["reused"] == [SID]


def test_truncated_checkpoint_in_the_store_is_refused(env, monkeypatch, s3):
    uri = "s3://raykd-runs/truncated"
    a = node(monkeypatch, env, "a", uri)
    train(a)
    key = f"truncated/stages/{SID}/best.pt"
    whole = s3.client().get_object(Bucket="raykd-runs", Key=key)["Body"].read()
    s3.client().put_object(Bucket="raykd-runs", Key=key, Body=whole[: len(whole) // 2])
    b = node(monkeypatch, env, "b", uri)
    record, problem = b.get_intact(SID)
    assert record is None
    assert f"best.pt is damaged: {len(whole) // 2} bytes, {len(whole)} when written" in problem
    assert f"moved aside to s3://raykd-runs/truncated/stages/{SID}.damaged-" in problem
    assert b.get(SID) is None and a.get(SID) is None  # it trains again, everywhere
    kept = s3.client().list_objects_v2(Bucket="raykd-runs", Prefix="truncated/stages/")
    assert any(".damaged-" in o["Key"] and o["Key"].endswith("done.json") for o in kept["Contents"])


def test_two_claimants_train_one_stage_once(env, monkeypatch):
    uri = "s3://raykd-runs/twins"
    stores = [node(monkeypatch, env, name, uri) for name in ("a", "b")]
    trained, held, overlap = [], [], []

    def job(store: StageStore, name: str) -> None:
        with store.lock(SID, poll_s=0.1):
            held.append(name)
            overlap.append(len(held))
            if store.get(SID) is None:  # under the claim: no list-then-write race
                time.sleep(0.5)
                trained.append(name)
                train(store)
            held.remove(name)

    threads = [threading.Thread(target=job, args=(s, n)) for s, n in zip(stores, "ab", strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(trained) == 1 and max(overlap) == 1
    assert all(s.get_intact(SID)[0] is not None for s in stores)


def test_a_dead_holders_claim_is_taken_over_by_one_waiter(env, monkeypatch, s3):
    import raykd.storage.s3 as s3mod

    monkeypatch.setattr(s3mod, "LEASE_S", 1.0)
    uri = "s3://raykd-runs/stale"
    key = f"stale/stages/{SID}.lock"
    s3.client().put_object(Bucket="raykd-runs", Key=key, Body=b'{"pid": 1}')  # never renewed
    stores = [node(monkeypatch, env, name, uri) for name in ("a", "b")]
    held, overlap = [], []

    def waiter(store: StageStore) -> None:
        with store.lock(SID, poll_s=0.1):
            held.append(1)
            overlap.append(len(held))
            time.sleep(0.3)
            held.pop()

    threads = [threading.Thread(target=waiter, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert overlap == [1, 1]  # both got it, one after the other
    assert "Contents" not in s3.client().list_objects_v2(Bucket="raykd-runs", Prefix=key)


def test_ray_storage_is_the_same_bucket(env, monkeypatch, s3):
    store = node(monkeypatch, env, "a", "s3://raykd-runs/ray-storage")
    kwargs = store.ray_storage("ray")
    assert kwargs["storage_path"] == "raykd-runs/ray-storage/ray"
    fs = kwargs["storage_filesystem"]
    with fs.open_output_stream(kwargs["storage_path"] + "/probe") as f:
        f.write(b"ok")
    body = s3.client().get_object(Bucket="raykd-runs", Key="ray-storage/ray/probe")["Body"]
    assert body.read() == b"ok"


def test_local_root_keeps_its_folder(tmp_path):
    storage = storage_for(tmp_path)
    assert storage.shared and storage.local == tmp_path.resolve()
    assert StageStore(tmp_path).ray_storage("ray") == {"storage_path": str(tmp_path / "ray")}


def _refusal(uri: str) -> str:
    with pytest.raises(StorageError) as info:
        resolve_root(uri)
    text = str(info.value)
    assert "\n" not in text and uri in text and SECRET_KEY not in text
    return text


def test_bad_roots_end_in_one_line_naming_the_uri_and_cause(env, monkeypatch, tmp_path):
    assert "unsupported scheme 'gs://'" in _refusal("gs://raykd-runs/x")
    assert "bucket 'no-such-bucket' does not exist" in _refusal("s3://no-such-bucket/x")
    with S3Server(tmp_path, deny=True) as denied:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", denied.endpoint)
        assert "access denied" in _refusal("s3://raykd-runs/x")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{_closed_port()}")
    assert "cannot reach the endpoint http://127.0.0.1:" in _refusal("s3://raykd-runs/x")


def _closed_port() -> int:
    from tests.servers import free_port

    return free_port()  # nothing listens there once the probe socket is closed


def test_cli_refuses_a_missing_bucket_before_anything_starts(env, tiny_data):
    cmd = [sys.executable, "-m", "raykd.cli", "grid", "--preset", "smoke", "--datasets",
           str(tiny_data), "--size", "32", "32", "--root", "s3://no-such-bucket/runs",
           "--plan"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=env)
    assert out.returncode != 0
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "s3://no-such-bucket/runs" in lines[0] and "does not exist" in lines[0]
    assert SECRET_KEY not in out.stdout + out.stderr
