"""Shared helpers of the report tests: stage runs with hand-chosen eval JSONs logged into a
real MLflow store (as ``raykd.orchestration.train_fn.finish_stage`` logs them), a comparison
with its warnings captured, and readers of the Markdown tables it writes.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from raykd.report import ReportWarning
from raykd.tracking import Tracking
from raykd.tracking import schema as S

KIND_OF_ROW = {
    "teacher": "teacher",
    "sft_teacher": "sft",
    "student": "student",
    "equal_compute": "student",
}


def eval_json(
    psnr: np.ndarray, volumes: tuple[str, ...], zero_filled: np.ndarray | None = None
) -> dict[str, Any]:
    """An eval JSON (schema of raykd.train.evaluate) from [volume, slice] PSNR; the other
    metrics follow PSNR. ``zero_filled``: the zero-filled input's PSNR, logged under
    ``S.EVAL_ZERO_FILLED`` as stages do since they log it at finish."""
    per = {
        "psnr": psnr,
        "ssim": 0.9 + (psnr - 30) * 0.01,
        "vif": 0.8 + (psnr - 30) * 0.01,
        "hfn": 0.3 - (psnr - 30) * 0.01,
        "nmse": 0.01 - (psnr - 30) * 1e-4,
        "hfen": 0.2 - (psnr - 30) * 0.01,
    }
    vols = [
        {
            "volume": name,
            "path": f"/nonexistent/{name}.h5",
            "slices": list(range(psnr.shape[1])),
            "metrics": {m: float(v[i].mean()) for m, v in per.items()},
            "per_slice": {m: [float(x) for x in v[i]] for m, v in per.items()},
        }
        for i, name in enumerate(volumes)
    ]
    summary = {
        m: [float(np.mean([v["metrics"][m] for v in vols])), 0.0] for m in per
    }  # fmt: skip
    report: dict[str, Any] = {"volumes": vols, "summary": summary}
    if zero_filled is not None:
        report[S.EVAL_ZERO_FILLED] = eval_json(zero_filled, volumes)
    return report


def stage_tags(row: str, method: str = "", seed: str = "42", student_depth: int = 3) -> dict:
    """The tags of a stage run of the phantom 4x setting (teacher depth 5)."""
    kind = KIND_OF_ROW.get(row, "kd")
    return {
        S.TAG_ROLE: "stage",
        S.TAG_KIND: kind,
        S.TAG_ROW: row,
        S.TAG_METHOD: method,
        S.TAG_DATASET: "phantom",
        S.TAG_ACCELERATION: "4",
        S.TAG_SEED: seed,
        S.TAG_TEACHER_DEPTH: "" if kind == "student" else "5",
        S.TAG_STUDENT_DEPTH: "" if kind == "teacher" else str(student_depth),
    }


def log_stage(
    tracking: Tracking,
    folder: Path,
    tags: dict[str, str],
    evals: dict[str, dict],
    params: dict[str, Any] | None = None,
) -> str:
    """A stage run (end it with ``tracking.end_run``) with ``eval/eval_<split>.json`` for each
    of ``evals`` and ``params`` (nested, flattened as stages log them: ``optim.epochs``)."""
    name = f"{tags[S.TAG_ROW]}-{tags[S.TAG_METHOD]}-{tags[S.TAG_SEED]}"
    run = tracking.start_run(name, tags, params=params)
    folder = folder / run
    folder.mkdir(parents=True)
    for split, report in evals.items():
        path = folder / f"eval_{split}.json"
        path.write_text(json.dumps(report))
        tracking.log_artifact(run, path, "eval")
    return run


def compare_quietly(experiments: list[str], uri: str, out: Path, **kw: Any) -> dict[str, Any]:
    """``raykd compare`` with every ReportWarning captured: {result, out, warnings}."""
    from raykd.report.compare import compare

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = compare(experiments, out_dir=out, tracking_uri=uri, **kw)
    msgs = [str(w.message) for w in caught if issubclass(w.category, ReportWarning)]
    return {"result": result, "out": out, "warnings": msgs}


def section(markdown: str, heading: str) -> list[list[str]]:
    """Rows (cells stripped) of the Markdown table under ``## heading``."""
    lines = markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0].splitlines()
    rows = [ln for ln in lines if ln.startswith("| ")]
    return [[c.strip() for c in r.strip("|").split("|")] for r in rows]


def cell(rows: list[list[str]], label: str, col: str) -> str:
    header = rows[0]
    for r in rows[1:]:
        if r[0] == label:
            return r[header.index(col)]
    raise AssertionError(f"no row {label}")
