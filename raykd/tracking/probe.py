"""Is a tracking URI usable? A known scheme, a reachable server, a writable sqlite folder.

Checked before a job starts Ray (``orchestration/preflight.py``) and before ``compare`` reads a
store: an unreachable MLflow server otherwise makes the client retry for minutes in silence.
Imports neither MLflow nor Ray.
"""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

TRACKING_SCHEMES = {"", "file", "sqlite", "postgresql", "mysql", "mssql", "http", "https"}
TRACKING_TIMEOUT_S = 3.0
DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def check_tracking_uri(uri: str | None, flag: str = "--tracking-uri") -> list[str]:
    """Known scheme; an http(s) server must answer within a few seconds, a database server
    must accept a connection on its port (credentials are MLflow's to check)."""
    if not uri:
        return []
    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+")[0].lower()
    if len(scheme) == 1:  # a Windows drive letter, i.e. a plain path
        scheme = ""
    if scheme.startswith("databricks"):
        return []
    if scheme not in TRACKING_SCHEMES:
        return [
            f"{flag} {uri}: unknown scheme '{parsed.scheme}'; expected sqlite:///path, "
            "file:///path, http(s)://host:port or a database URI (postgresql, mysql, mssql)"
        ]
    if scheme in ("http", "https"):
        try:
            urllib.request.urlopen(  # noqa: S310 - the user's own tracking server
                uri.rstrip("/") + "/health", timeout=TRACKING_TIMEOUT_S
            ).close()
        except urllib.error.HTTPError:
            return []  # something answered; MLflow itself reports a wrong endpoint clearly
        except OSError as exc:  # URLError and timeouts are OSErrors
            reason = getattr(exc, "reason", exc)
            return [
                f"{flag} {uri}: no tracking server reachable within {TRACKING_TIMEOUT_S:g}s "
                f"({reason}); start it (mlflow server ...) or use a local sqlite:/// store"
            ]
    if scheme in DB_PORTS and parsed.hostname:  # no hostname: a local socket, not probed
        port = parsed.port or DB_PORTS[scheme]
        try:
            socket.create_connection((parsed.hostname, port), timeout=TRACKING_TIMEOUT_S).close()
        except OSError as exc:
            shown = uri.replace(f":{parsed.password}@", ":***@") if parsed.password else uri
            return [
                f"{flag} {shown}: no database server reachable at {parsed.hostname}:{port} "
                f"within {TRACKING_TIMEOUT_S:g}s ({exc}); start it or use a local sqlite:/// store"
            ]
    if scheme == "sqlite":
        path = parsed.path[1:] if parsed.path.startswith("//") else parsed.path
        folder = Path(path).expanduser().parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if path and not os.access(folder, os.W_OK):
            return [f"{flag} {uri}: cannot create the database under {folder} (not writable)"]
    return []
