"""Artifacts of finished runs, downloaded once and cached: eval JSONs, examples, histories.

Per-volume and per-slice numbers come from the ``eval/eval_<split>.json`` artifacts, not from
run metrics: they carry the std over volumes and the paired per-slice values the tests need.
A missing or unreadable artifact is a warning and None, never a silent zero.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from raykd.report import warn


class ArtifactReader:
    """Lazily downloaded artifacts of a report's runs, with one warning per distinct gap."""

    split: str  # the report's split (set by the subclass once it has chosen it)

    def __init__(self, client, cache_dir: str | Path | None = None) -> None:
        self.client = client
        self._tmp = tempfile.TemporaryDirectory(prefix="raykd-report-")
        self.cache = Path(cache_dir) if cache_dir else Path(self._tmp.name)
        self.cache.mkdir(parents=True, exist_ok=True)
        self._evals: dict[tuple[str, str], dict[str, Any] | None] = {}
        self._warned: set[str] = set()
        self.available: dict[str, set[str]] = {}

    def describe(self, run_id: str) -> str:
        """What a run is, for warnings (the subclass knows its rows)."""
        return "unknown run"

    def warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            warn(message)

    def eval_splits(self, run_id: str) -> set[str]:
        try:
            files = self.client.list_artifacts(run_id, "eval")
        except Exception:
            return set()
        found = set()
        for f in files:
            name = Path(f.path).name
            if name.startswith("eval_") and name.endswith(".json"):
                found.add(name[len("eval_") : -len(".json")])
        return found

    def _download(self, run_id: str, path: str) -> Path | None:
        dst = self.cache / run_id
        local = dst / path
        if local.is_file():
            return local
        dst.mkdir(parents=True, exist_ok=True)
        try:
            return Path(self.client.download_artifacts(run_id, path, str(dst)))
        except Exception:
            return None

    def eval(
        self, run_id: str, quiet: bool = False, split: str | None = None
    ) -> dict[str, Any] | None:
        """The run's ``eval/eval_<split>.json`` (None, with a warning, when it is missing).

        ``split`` defaults to the report's split; another one is only read for checks (e.g.
        that test volumes were not the validation volumes used for model selection).
        """
        split = split or self.split
        key = (run_id, split)
        if key not in self._evals:
            report = None
            if split in self.available.get(run_id, set()):
                path = self._download(run_id, f"eval/eval_{split}.json")
                if path is not None:
                    try:
                        report = json.loads(path.read_text())
                    except json.JSONDecodeError as exc:
                        self.warn_once(f"run {run_id}: eval_{split}.json unreadable ({exc})")
                if report is not None and not isinstance(report.get("volumes"), list):
                    self.warn_once(f"run {run_id}: eval_{split}.json has no 'volumes' list")
                    report = None
            self._evals[key] = report
        report = self._evals[key]
        if report is None and not quiet:
            self.warn_once(
                f"run {run_id} ({self.describe(run_id)}): no eval/eval_{split}.json "
                "artifact; its numbers are reported as missing"
            )
        return report

    def examples(self, run_id: str) -> dict[str, np.ndarray] | None:
        """The run's example reconstructions (``examples/<split>_examples.npz``, else val's)."""
        for split in dict.fromkeys([self.split, "val"]):
            path = self._download(run_id, f"examples/{split}_examples.npz")
            if path is not None:
                with np.load(path, allow_pickle=False) as data:
                    return {k: data[k] for k in data.files}
        self.warn_once(f"run {run_id} ({self.describe(run_id)}): no example reconstructions")
        return None

    def history(self, run_id: str, key: str = "val_loss") -> list[tuple[int, float]]:
        """Per-epoch values of a metric, sorted by step."""
        hist = self.client.get_metric_history(run_id, key)
        return sorted((int(m.step), float(m.value)) for m in hist)

    def close(self) -> None:
        """Delete the downloaded artifacts."""
        self._tmp.cleanup()
