"""Strict JSON: no NaN/Infinity (Python writes them as bare ``NaN``, which other readers reject).

Shared by the metrics files (:func:`raykd.train.evaluate.write_json`) and the job summaries.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

NULL_REASONS = {
    "nan": "undefined (e.g. an all-zero target slice: no PSNR peak, no NMSE denominator)",
    "inf": "infinite (the prediction equals the target exactly)",
    "-inf": "minus infinity",
}


def json_safe(data: Any) -> tuple[Any, dict[str, str]]:
    """``data`` with every non-finite float replaced by ``None``, and why, by JSON path.

    Strict JSON has no NaN/Infinity (Python writes them as bare ``NaN``, which other readers
    reject), so metrics files carry ``null`` plus a ``null_reasons`` entry instead.
    """
    reasons: dict[str, str] = {}

    def walk(node: Any, where: str) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, f"{where}.{k}" if where else str(k)) for k, v in node.items()}
        if isinstance(node, list | tuple):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(node)]
        if isinstance(node, np.generic):
            node = node.item()
        if isinstance(node, float) and not np.isfinite(node):
            kind = "nan" if node != node else ("inf" if node > 0 else "-inf")
            reasons[where] = NULL_REASONS[kind]
            return None
        return node

    return walk(data, ""), reasons


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (``metrics.jsonl``, ``events.jsonl``, ``usage.jsonl``);
    [] when it does not exist, blank lines skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def dumps_strict(data: Any) -> str:
    """``data`` as indented strict JSON: a non-finite number becomes ``null``; anything JSON
    has no type for (a path, a date) becomes its ``str``."""
    return json.dumps(json_safe(data)[0], indent=1, default=str, allow_nan=False)
