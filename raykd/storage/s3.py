"""A run root on S3-compatible object storage (AWS S3, MinIO, Ceph, moto), through boto3.

Guarantees, each resting on one atomic primitive of the store:

- an object is written whole or not at all (a single ``PutObject``), so a reader never sees half
  a checkpoint; a finished stage's record (``done.json``, with each checkpoint's size and
  SHA-256) is written after its checkpoints, so whoever reads the record finds them complete,
  and reuse checks them against the digests before trusting them (as on a local disk);
- the record is *published once*: ``PutObject`` with ``If-None-Match: *`` (the second writer
  gets 412 and keeps the first record);
- a stage is *claimed* with the same conditional write of ``<stage>.lock``; the holder renews it
  with ``If-Match`` on its own ETag every ``LEASE_S / 4`` seconds; a claim not renewed for
  ``LEASE_S`` (its holder died) is taken over with ``If-Match`` on the stale ETag, so two
  waiters never both take it; it is released by a delete conditional on the holder's ETag.

Limits: a holder cut off from the store for longer than ``LEASE_S`` loses its claim (it is told
so on stderr and the stage may then train twice; the first record published wins); the store
must implement conditional writes (AWS S3 since 2024, MinIO, Ceph RGW, moto).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from raykd.errors import RaykdError

LEASE_S = 60.0
SKIP_PUSH = ("done.json", ".tmp")  # published once, or never whole


class StorageError(RaykdError):
    """The run root's object store cannot be used (scheme, endpoint, bucket, credentials)."""


def parse_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` → ``(bucket, prefix)``; any other scheme is refused."""
    parts = urlsplit(uri)
    if parts.scheme != "s3":
        raise StorageError(
            f"--root {uri}: unsupported scheme '{parts.scheme}://' (a local folder or "
            "s3://bucket/prefix on S3-compatible storage)"
        )
    if not parts.netloc or "@" in parts.netloc:
        raise StorageError(f"--root {uri}: expected s3://bucket/prefix (no credentials in it)")
    return parts.netloc, parts.path.strip("/")


def endpoint() -> str | None:
    """The S3 endpoint: ``RAYKD_S3_ENDPOINT`` (raykd's own: a job sends it to its Ray workers
    on every node), else the usual ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (None: AWS)."""
    keys = ("RAYKD_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    return next((os.environ[k] for k in keys if os.environ.get(k)), None)


def _shown(url: str | None) -> str:
    """An endpoint as it may be shown: without user/password, if someone put them there."""
    if not url:
        return "AWS S3"
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _status(exc: Exception) -> int:
    response = getattr(exc, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


class ObjectStorage:
    shared = False  # each node works in its own copy

    def __init__(self, bucket: str, prefix: str, local: Path) -> None:
        self.bucket, self.prefix, self.local = bucket, prefix, local
        self.uri = f"s3://{bucket}/{prefix}".rstrip("/")
        self._client = None

    # -- the client and its errors ---------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:
                raise StorageError(
                    f"--root {self.uri}: needs boto3 (pip install 'raykd[s3]')"
                ) from None
            config = Config(
                connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"}
            )
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            self._client = boto3.client(
                "s3", endpoint_url=endpoint(), region_name=region or "us-east-1", config=config
            )
        return self._client

    def check(self) -> None:
        """Reach the bucket now, so a bad endpoint, a missing bucket or denied credentials end
        in one line before anything trains."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(""), MaxKeys=1)
        except ClientError as exc:
            code, status = _code(exc), _status(exc)
            if status == 404 or code in ("404", "NoSuchBucket"):
                why = f"bucket '{self.bucket}' does not exist"
            elif status == 403 or code in ("403", "AccessDenied", "InvalidAccessKeyId"):
                why = "access denied (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
            else:
                why = f"{code or status} from the object store"
            raise StorageError(f"--root {self.uri}: {why} at {_shown(endpoint())}") from None
        except BotoCoreError as exc:
            name = type(exc).__name__
            if name == "NoCredentialsError":
                why = "no credentials (set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
            else:
                why = f"cannot reach the endpoint {_shown(endpoint())} ({name})"
            raise StorageError(f"--root {self.uri}: {why}") from None

    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _objects(self, rel: str) -> Iterator[dict[str, Any]]:
        pages = self.client.get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.bucket, Prefix=self._key(rel.rstrip("/") + "/")):
            yield from page.get("Contents", [])

    # -- files ------------------------------------------------------------------------------------
    def read_text(self, rel: str) -> str | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(rel))["Body"]
        except self.client.exceptions.NoSuchKey:
            return None
        return body.read().decode()

    def pull(self, rel: str) -> None:
        """Bring this node's copy of ``rel`` (a folder) up to date with the store."""
        start = len(self._key(""))
        for obj in self._objects(rel):
            path = self.local / obj["Key"][start:]
            stamp = obj["LastModified"].timestamp()
            have = path.stat() if path.is_file() else None
            if have and have.st_size == obj["Size"] and have.st_mtime >= stamp:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
            self.client.download_file(self.bucket, obj["Key"], str(tmp))
            os.utime(tmp, (stamp, stamp))
            os.replace(tmp, path)  # a reader of the copy sees the old file or the new one

    def push(self, rel: str) -> None:
        """Send this node's new or changed files under ``rel`` (a folder, or a file)."""
        folder = self.local / rel
        if folder.is_file():  # one file (a job summary, a figure)
            self.client.upload_file(str(folder), self.bucket, self._key(rel))
            return
        if not folder.is_dir():
            return
        start = len(self._key(""))
        remote = {o["Key"][start:]: o for o in self._objects(rel)}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            if path.name.endswith(SKIP_PUSH):
                continue
            name = path.relative_to(self.local).as_posix()
            have = remote.get(name)
            stat = path.stat()
            if (
                have
                and have["Size"] == stat.st_size
                and have["LastModified"].timestamp() >= stat.st_mtime
            ):
                continue
            self.client.upload_file(str(path), self.bucket, self._key(name))
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(name))
            stamp = head["LastModified"].timestamp()
            os.utime(path, (stamp, stamp))  # as old as the object: not sent again unchanged

    def publish(self, rel: str, text: str) -> bool:
        """Create ``rel`` with ``text`` unless it exists (``If-None-Match: *``); True if created."""
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self._key(rel), Body=text.encode(), IfNoneMatch="*"
            )
        except Exception as exc:
            if _status(exc) in (409, 412):
                return False
            raise
        path = self.local / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return True

    def move_aside(self, rel: str, aside: str) -> str:
        """Copy a stage's objects to ``aside`` and delete them, its record first."""
        for obj in sorted(self._objects(rel), key=lambda o: not o["Key"].endswith("/done.json")):
            new = self._key(aside) + obj["Key"][len(self._key(rel)) :]
            source = {"Bucket": self.bucket, "Key": obj["Key"]}
            self.client.copy_object(Bucket=self.bucket, Key=new, CopySource=source)
            with contextlib.suppress(Exception):  # moved by another trial first
                self.client.delete_object(Bucket=self.bucket, Key=obj["Key"], IfMatch=obj["ETag"])
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.local / rel, self.local / aside)
        return f"{self.uri}/{aside}"

    # -- coordination -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def claim(self, name: str, poll_s: float = 2.0) -> Iterator[None]:
        """Exclusive claim of ``name`` among every process using this store (see the module)."""
        key = self._key(f"stages/{name}.lock")
        etag = self._acquire(key, poll_s)
        stop = threading.Event()
        state = {"etag": etag}
        beat = threading.Thread(target=self._renew, args=(key, state, stop), daemon=True)
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join()
            with contextlib.suppress(Exception):
                self.client.delete_object(Bucket=self.bucket, Key=key, IfMatch=state["etag"])

    def _owner(self) -> bytes:
        who = {"host": socket.gethostname(), "pid": os.getpid(), "t": time.time()}
        return json.dumps(who).encode()

    def _acquire(self, key: str, poll_s: float) -> str:
        while True:
            try:
                out = self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=self._owner(), IfNoneMatch="*"
                )
                return out["ETag"]
            except Exception as exc:
                if _status(exc) not in (409, 412):
                    raise
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=key)
            except Exception as exc:
                if _status(exc) == 404:
                    continue  # released meanwhile
                raise
            now = _server_time(head)
            if now - head["LastModified"].timestamp() > LEASE_S:
                try:  # the holder stopped renewing: one waiter takes over
                    out = self.client.put_object(
                        Bucket=self.bucket, Key=key, Body=self._owner(), IfMatch=head["ETag"]
                    )
                    return out["ETag"]
                except Exception as exc:
                    if _status(exc) not in (404, 409, 412):
                        raise
            time.sleep(poll_s)

    def _renew(self, key: str, state: dict[str, str], stop: threading.Event) -> None:
        while not stop.wait(LEASE_S / 4):
            try:
                out = self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=self._owner(), IfMatch=state["etag"]
                )
                state["etag"] = out["ETag"]
            except Exception as exc:
                if _status(exc) in (404, 412):
                    sys.stderr.write(f"[raykd] WARNING: lost the claim s3://{self.bucket}/{key}\n")
                    return
                # a passing network error: try again at the next beat

    # -- logs -------------------------------------------------------------------------------------
    def append_line(self, rel: str, line: str) -> None:
        """One object per line (objects cannot be appended to): ``<rel>.d/<time>-<random>``."""
        name = f"{rel}.d/{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
        self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=line.encode())

    def read_lines(self, rel: str) -> list[dict[str, Any]]:
        out = []
        for obj in sorted(self._objects(f"{rel}.d"), key=lambda o: o["Key"]):
            body = self.client.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"].read()
            out.append(json.loads(body))
        return out

    def ray_storage(self, rel: str) -> tuple[str, Any]:
        """Ray Train/Tune's ``storage_path`` and ``storage_filesystem`` for ``rel``."""
        from pyarrow import fs

        url = endpoint()
        # allow_delayed_open: a small file is one PutObject (no multipart upload to complete).
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        options: dict[str, Any] = {"region": region or "us-east-1", "allow_delayed_open": True}
        if url:
            parts = urlsplit(url)
            options |= {"endpoint_override": parts.netloc, "scheme": parts.scheme or "https"}
        return f"{self.bucket}/{self._key(rel)}", fs.S3FileSystem(**options)


def _server_time(response: dict[str, Any]) -> float:
    """The store's clock (its ``Date`` header), so leases do not depend on this node's clock."""
    from email.utils import parsedate_to_datetime

    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    return parsedate_to_datetime(date).timestamp() if date else time.time()
