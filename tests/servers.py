"""Real servers for the object-storage tests, each on a free loopback port, stopped afterwards.

- :class:`S3Server`: ``moto`` in server mode (an S3 API; conditional writes enforced);
- :class:`Postgres`: a PostgreSQL cluster ``initdb``'d under a temporary folder (as the
  ``postgres`` user when the tests run as root: PostgreSQL refuses to run as root);
- :class:`MlflowServer`: ``mlflow server`` with a PostgreSQL backend store and proxied artifacts
  on the object store (workers talk HTTP to it and need no bucket credentials for MLflow).

Every process is started in its own session and its whole process group is stopped, so no
process is left behind.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ACCESS_KEY = "raykd-test-access-key"
SECRET_KEY = "raykd-Secret-7f3a9c-never-printed"  # the tests grep every output for it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The S3 endpoint the session's Ray (conftest's ray_session) is started with: a test that runs
# a job on that Ray starts its S3 server there (``S3Server(folder, port=RAY_S3_PORT)``).
RAY_S3_PORT = free_port()
RAY_S3 = f"http://127.0.0.1:{RAY_S3_PORT}"


def _wait_port(port: int, proc: subprocess.Popen, log: Path, what: str, timeout: float = 60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    raise AssertionError(f"{what} did not start: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def s3_env(endpoint: str) -> dict[str, str]:
    """The usual environment for an S3-compatible endpoint (what a cluster's nodes get)."""
    return {
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


class S3Server:
    """``moto_server`` on loopback; ``deny=True``: every request needs IAM-known credentials
    (none exist), so any key is denied."""

    def __init__(self, folder: Path, deny: bool = False, port: int | None = None) -> None:
        self.folder, self.port = folder, port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.deny = deny
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> S3Server:
        log = self.folder / f"moto-{self.port}.log"
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"} if self.deny else None
        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=out, env=env, start_new_session=True
            )
        _wait_port(self.port, self.proc, log, "moto server")
        return self

    def client(self):
        import boto3

        env = s3_env(self.endpoint)
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def __exit__(self, *exc) -> None:
        _stop(self.proc)


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))[-1:]
    if not found:
        raise FileNotFoundError(f"PostgreSQL's {name} (Debian package postgresql)")
    return found if isinstance(found, str) else found[0]


class Postgres:
    """A throw-away PostgreSQL cluster on a free loopback port (trust auth, loopback only)."""

    def __init__(self) -> None:
        self.port = free_port()
        # Not under pytest's tmp_path: as root that is private (0700) to root, and the server
        # runs as the postgres user.
        self.dir = Path(tempfile.mkdtemp(prefix="raykd-pg-", dir="/tmp"))
        self.data = self.dir / "data"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.dir, "postgres", "postgres")
        self.uri = f"postgresql://postgres@127.0.0.1:{self.port}/mlflow"

    def _run(self, *cmd: str) -> None:
        subprocess.run([*self.as_user, *cmd], check=True, capture_output=True, timeout=120)

    def __enter__(self) -> Postgres:
        self._run(_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "--no-sync", "-E", "UTF8")  # fmt: skip
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"),
                  "-o", opts, "-w", "-t", "60", "start")  # fmt: skip
        import psycopg  # the driver SQLAlchemy (MLflow's store) uses for postgresql://

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute("CREATE DATABASE mlflow")
        return self

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


class MlflowServer:
    """``mlflow server``: PostgreSQL backend store, artifacts proxied to ``artifacts`` (s3://).
    Entering starts it; :meth:`wait` waits until it answers."""

    def __init__(self, folder: Path, backend: str, artifacts: str, env: dict[str, str]) -> None:
        self.folder, self.port = folder, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.backend, self.artifacts, self.env = backend, artifacts, env
        self.proc: subprocess.Popen | None = None
        self.log = folder / "mlflow-server.log"

    def __enter__(self) -> MlflowServer:
        cmd = [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
            "--port", str(self.port), "--workers", "1",
            "--backend-store-uri", self.backend,
            "--artifacts-destination", self.artifacts, "--serve-artifacts",
        ]  # fmt: skip
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=out, env={**os.environ, **self.env}, start_new_session=True
            )
        return self

    def wait(self) -> MlflowServer:
        """Until it answers (its first start migrates the PostgreSQL schema: tens of seconds,
        so callers start other things meanwhile)."""
        assert self.proc is not None
        deadline = time.time() + 240
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2)
                return self
            except OSError:
                assert self.proc.poll() is None, self.log.read_text()[-3000:]
                time.sleep(0.5)
        raise AssertionError(f"mlflow server did not start: {self.log.read_text()[-3000:]}")

    def __exit__(self, *exc) -> None:
        _stop(self.proc)
