"""Check everything a grid or search will need before Ray starts.

A bad flag used to surface after ~35 s inside Ray as a 155-line traceback per trial (or a
hang, for an unreachable tracking server). Here every stage config the job will build is
constructed and validated, the student/teacher depths compared, masks generated, every data
and test volume opened and scanned, and the tracking URI checked, in seconds. Problems are
collected, so one run lists all of them: one line each, then exit status 2.

This module does not import Ray.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from raykd.errors import ConfigError, RaykdError
from raykd.plan.presets import GridSpec
from raykd.plan.rows import Row, grid_rows
from raykd.plan.search_space import SearchSpec, sampled_rows
from raykd.plan.stages import row_stages, stage_config
from raykd.tracking.probe import check_tracking_uri


def _first_line(exc: BaseException) -> str:
    """A pydantic-formatted ConfigError is a header plus '  - key: msg' lines: keep the keys."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if len(lines) > 1 and lines[1].startswith("- "):
        return f"{lines[0].split(':')[0]}: " + "; ".join(ln[2:] for ln in lines[1:])
    return lines[0] if lines else type(exc).__name__


def check_spec_flags(spec: GridSpec) -> list[str]:
    """Grid-level values, named by the flag that sets them."""
    problems = []
    if spec.task == "recon":
        bad = [a for a in spec.accelerations if not a > 1]
        if bad:
            problems.append(
                f"--accelerations {' '.join(f'{a:g}' for a in bad)}: an acceleration must be "
                "> 1 (1 samples all of k-space, below 1 is meaningless)"
            )
    low = [d for d in spec.student_depths if d < 2]
    if low:
        problems.append(f"--student-depths {low}: a student needs depth >= 2 (D2Cm is smallest)")
    if spec.teacher_arch == spec.student_arch:
        deep = [d for d in spec.student_depths if d >= spec.teacher_depth]
        students = [r for r in spec.rows if r != "teacher"]
        if deep and students:
            problems.append(
                f"--student-depths {deep}: not below the teacher depth {spec.teacher_depth} "
                f"({spec.teacher_arch}); a distilled student must be smaller than its teacher"
            )
    if spec.max_slices_per_volume is not None and spec.max_slices_per_volume < 1:
        problems.append(f"--max-slices {spec.max_slices_per_volume}: expected >= 1")
    if spec.size is not None and min(spec.size) < 8:
        problems.append(f"--size {spec.size[0]} {spec.size[1]}: expected at least 8 8")
    if spec.data_path and not Path(spec.data_path).expanduser().is_dir():
        problems.append(f"--data-path {spec.data_path}: not a folder")
    return problems


def check_stages(
    spec: GridSpec, rows: list[Row], workers: int | dict[str, int] | None = None
) -> list[str]:
    """Build and validate every stage config the rows need; generate their masks; scan data.

    ``workers``: the DDP ranks per stage (one count, or one per stage kind); each stage's
    (global) batch must split evenly over its kind's ranks.
    """
    from raykd.data.sources import build_datasets

    problems: list[str] = []
    seen_data: set[str] = set()
    for row in rows:
        for kind, overrides in row_stages(spec, row):  # what row_requests builds
            try:
                cfg = stage_config(spec, row, kind, overrides)
            except RaykdError as exc:
                problems.append(f"{row.label} ({kind}): {_first_line(exc)}")
                continue
            n = workers.get(kind, 1) if isinstance(workers, dict) else workers
            if n and cfg.data.batch_size % n:
                mixed = isinstance(workers, dict) and len(set(workers.values())) > 1
                flag = f"{kind}={n}" if mixed else str(n)
                problems.append(
                    f"--workers {flag}: the global batch of {row.label} ({kind}), "
                    f"data.batch_size {cfg.data.batch_size}, cannot be split evenly over "
                    f"{n} workers; use a batch size that is a multiple of {n}"
                )
            key = cfg.data.model_dump_json()
            if key in seen_data:
                continue
            seen_data.add(key)
            try:
                build_datasets(cfg.data)  # opens and scans every volume, makes every mask
            except RaykdError as exc:
                problems.append(f"{row.dataset}: {_first_line(exc)}")
    return list(dict.fromkeys(problems))


def check_job_flags(args) -> list[str]:
    problems = []
    workers = getattr(args, "workers", None)
    if isinstance(workers, str):
        from raykd.plan.cost import parse_workers

        try:
            parse_workers(workers)
        except RaykdError as exc:
            problems.append(str(exc))
    for flag, name in (
        ("--workers", "workers"),
        ("--max-concurrent", "max_concurrent"),
        ("--num-cpus", "num_cpus"),
    ):
        value = getattr(args, name, None)
        if isinstance(value, int) and value < 1:
            problems.append(f"{flag} {value}: expected >= 1")
    if getattr(args, "epochs", None) is not None and args.epochs < 1:
        problems.append(f"--epochs {args.epochs}: expected >= 1")
    if getattr(args, "tracking_uri", None):
        problems += check_tracking_uri(args.tracking_uri)
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        problems += check_tracking_uri(os.environ["MLFLOW_TRACKING_URI"], "MLFLOW_TRACKING_URI")
    return problems


def load_checked_preset(name: str, overrides: dict[str, Any], args) -> tuple[GridSpec, list[str]]:
    """The preset with the command line's overrides, and the job-flag problems found so far.

    Raises (all problems, one line each) when the preset itself does not validate.
    """
    from raykd.plan.presets import load_preset

    problems = check_job_flags(args)
    if getattr(args, "epochs", None) is not None and args.epochs < 1:
        overrides = {**overrides, "epochs": None}  # reported above, once, by its flag
    try:
        return load_preset(name, overrides), problems
    except RaykdError as exc:
        raise_problems([*problems, _first_line(exc)])
        raise


def raise_problems(problems: list[str]) -> None:
    if problems:
        raise ConfigError("\n".join(dict.fromkeys(problems)))


def preflight_grid(
    spec: GridSpec, problems: list[str] | None = None, workers: int | dict[str, int] | None = None
) -> None:
    """Everything ``raykd grid`` needs, before Ray starts; one line per problem."""
    problems = list(problems or [])
    flag_problems = check_spec_flags(spec)
    problems += flag_problems
    if not flag_problems:  # the stage checks would repeat each flag problem per row
        problems += check_stages(spec, grid_rows(spec), workers)
    raise_problems(problems)


def preflight_search(
    search: SearchSpec,
    base: GridSpec,
    problems: list[str] | None = None,
    workers: int | dict[str, int] | None = None,
) -> None:
    """Everything ``raykd search`` needs, before Ray starts; one line per problem."""
    problems = list(problems or [])
    rows = sampled_rows(search, base)
    flag_problems = check_spec_flags(base.model_copy(update={"rows": [search.row]}))
    sampled: dict[str, Any] = {}
    if "acceleration" in search.params:
        sampled["accelerations"] = sorted({r.acceleration for r in rows})
    if "student_depth" in search.params:
        sampled["student_depths"] = sorted({r.student_depth for r in rows})
    if sampled:  # values the search space samples, named as search parameters
        probe = base.model_copy(
            update={**sampled, "rows": [search.row], "size": None, "data_path": None}
        )
        flag_problems += [
            p.replace("--accelerations", "search parameter acceleration").replace(
                "--student-depths", "search parameter student_depth"
            )
            for p in check_spec_flags(probe)
            if p.startswith(("--accelerations", "--student-depths"))
        ]
    problems += flag_problems
    if not flag_problems:
        problems += check_stages(base, rows, workers)
    raise_problems(problems)
