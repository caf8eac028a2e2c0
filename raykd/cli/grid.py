"""``raykd grid`` / ``jobs/full_grid.py`` and ``raykd search`` / ``jobs/search_kd_weights.py``:
the job commands of the orchestration layer (Ray, Tune, MLflow are imported by the handlers)."""

from __future__ import annotations

import argparse
import sys

from raykd.errors import run_cli
from raykd.kinds import ROW_KINDS, STAGE_KINDS


def add_job_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where and how to run")
    g.add_argument("--root", help="run directory (default $RAYKD_HOME or ~/raykd-runs)")
    g.add_argument("--experiment", help="MLflow experiment name (default: the preset name)")
    g.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite under --root)")
    g.add_argument(
        "--address",
        help="Ray cluster address; 'local' starts a private loopback Ray (default: $RAY_ADDRESS, "
        "else the cluster a `ray start` on this machine recorded, else a private local Ray)",
    )
    g.add_argument("--num-cpus", type=int, help="CPUs for a local Ray (default: all)")
    g.add_argument("--workers", type=int, help="Ray Train workers (DDP ranks) per stage")
    g.add_argument("--max-concurrent", type=int, help="at most this many trials at once")
    g.add_argument(
        "--local-train",
        action="store_true",
        help="run Train in-process (num_workers=0): debugging, tiny machines",
    )
    g.add_argument(
        "--verbose",
        action="store_true",
        help="show Ray/Tune/Train/MLflow output too (default: raykd's own lines only)",
    )


def _preset_names() -> list[str]:
    from raykd.plan.presets import preset_names

    return preset_names()


def add_grid_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset",
        default=None,  # grid: smoke; search: the search space's base_preset
        metavar="NAME|FILE.yaml[:NAME]",
        help=f"grid preset: one of {', '.join(_preset_names())} (search_spaces/paper_grid.yaml; "
        "sr_* = super-resolution, dcunet* = heterogeneous teacher), or a preset file of your "
        "own with presets: and datasets: (default: smoke; search: the space's base_preset)",
    )
    p.add_argument("--datasets", nargs="+", help="mni152, sunnybrook, or folders of h5")
    p.add_argument("--data-path", help="where a built-in dataset's volumes are (e.g. Sunnybrook)")
    p.add_argument("--accelerations", nargs="+", type=float, help="(SR presets: scales)")
    p.add_argument("--sr-degradation", choices=["kspace", "image"], help="SR input degradation")
    p.add_argument("--methods", nargs="+", help="KD methods (at fitnets fsp sp cc ...)")
    p.add_argument("--student-depths", nargs="+", type=int, help="2..4 (D2C5..D4C5)")
    p.add_argument("--seeds", type=int, help="number of seeds")
    p.add_argument(
        "--rows",
        nargs="+",
        help=" ".join(ROW_KINDS),
    )
    p.add_argument("--epochs", type=int, help="epochs of every stage")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--max-slices", type=int, help="slices per volume (evenly spaced)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--test", nargs="+", help="held-out test volumes")
    p.add_argument(
        "--no-fixed-masks",
        dest="fixed_masks",
        action="store_false",
        default=None,
        help="seeded Cartesian masks even where the paper's fixed masks apply",
    )
    p.add_argument(
        "--kd-balance",
        type=float,
        help="r: calibrate each KD weight so weighted KD = r x L1 at the start",
    )


def _start_job(
    args: argparse.Namespace,
    name: str,
    experiment: str,
    params: dict,
    run_name: str,
    local_default: bool | str = False,
):
    from raykd.orchestration.console import set_verbose
    from raykd.orchestration.job import start_job

    if args.verbose:
        set_verbose(True)
    return start_job(
        name,
        run_name=run_name,
        params=params,
        root=args.root,
        experiment=args.experiment or experiment,
        tracking_uri=args.tracking_uri,
        address=args.address,
        workers=args.workers,
        max_concurrent=args.max_concurrent,
        local_train=True if args.local_train else local_default,
        num_cpus=args.num_cpus,
    )


def grid_overrides(args: argparse.Namespace) -> dict:
    over = {
        "datasets": args.datasets,
        "accelerations": args.accelerations,
        "methods": args.methods,
        "student_depths": args.student_depths,
        "seeds": args.seeds,
        "rows": args.rows,
        "size": args.size,
        "max_slices_per_volume": args.max_slices,
        "precision": args.precision,
        "data_path": args.data_path,
        "test": args.test,
        "sr_degradation": args.sr_degradation,
        "kd_balance": getattr(args, "kd_balance", None),
        "fixed_masks": getattr(args, "fixed_masks", None),
    }
    if args.epochs is not None:  # 0 is a value to refuse, not "no flag"
        over["epochs"] = {k: args.epochs for k in STAGE_KINDS}
    return over


def run_grid_args(args: argparse.Namespace) -> int:
    from raykd.orchestration.grid import grid_stage_ids, run_grid
    from raykd.orchestration.interrupt import received
    from raykd.orchestration.job import finish_job, interrupt_job
    from raykd.orchestration.preflight import load_checked_preset, preflight_grid
    from raykd.plan.presets import preset_label

    spec, problems = load_checked_preset(args.preset or "smoke", grid_overrides(args), args)
    args.preset = preset_label(args.preset or "smoke")
    preflight_grid(spec, problems, args.workers)  # before Ray starts: one line per problem
    job = _start_job(
        args,
        f"grid-{args.preset}",
        f"raykd-{args.preset}",
        {"preset": args.preset, **spec.model_dump(mode="json")},
        run_name=args.preset,
    )
    try:
        rows = run_grid(spec, job)
    except BaseException as exc:
        if (got := received()) is not None or isinstance(exc, KeyboardInterrupt):
            raise interrupt_job(job, got or exc, grid_stage_ids(spec)) from None
        finish_job(job, [], status="FAILED")
        raise
    failed = [r for r in rows if r.get("error")]
    status = "FAILED" if failed else "FINISHED"
    finish_job(job, rows, status=status, warnings=spec.budget_warnings())
    for r in failed:
        print(f"FAILED {r['label']}: {r['error']}", file=sys.stderr)
    from raykd.orchestration.console import HIDDEN_HINT, is_verbose

    if failed and not is_verbose():
        print(HIDDEN_HINT, file=sys.stderr)
    return 1 if failed else 0


def _guard(fn, args, prog: str) -> int:
    return run_cli(fn, args, prog, "rerun the same command to resume: finished stages are reused")


def grid_main(argv: list[str] | None = None, prog: str = "full_grid.py") -> int:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Run the SFT-KD-Recon grid (Table 1) on Ray with MLflow tracking.",
    )
    add_grid_args(p)
    add_job_args(p)
    args = p.parse_args(argv)
    return _guard(run_grid_args, args, prog)


def add_search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--space",
        default="kd_weights",
        help="search space: a name in search_spaces/ or a YAML file "
        "(kd_weights, depth_acceleration, pareto)",
    )
    p.add_argument("--num-samples", type=int, help="trials to run (extends a resumed study)")
    p.add_argument("--fresh", action="store_true", help="do not restore a previous Tune run")
    p.add_argument(
        "--ray-train",
        action="store_true",
        help="always train a trial's stages as Ray Train runs (default: in the trial's process "
        "where a stage gets one CPU worker anyway, which saves ~12 s of Ray Train start/stop "
        "per stage chain)",
    )


def search_preset(args: argparse.Namespace, search) -> str:
    """The grid a search samples around: ``--preset`` when given (``smoke`` included), else
    the search space's ``base_preset``."""
    return args.preset if args.preset is not None else search.base_preset


def run_search_args(args: argparse.Namespace) -> int:
    import json

    from raykd.orchestration.interrupt import received
    from raykd.orchestration.job import finish_job, interrupt_job
    from raykd.orchestration.preflight import load_checked_preset, preflight_search
    from raykd.orchestration.search import run_search, search_rows
    from raykd.plan.search_space import load_search

    search = load_search(args.space, {"num_samples": args.num_samples})
    preset = search_preset(args, search)
    base, problems = load_checked_preset(preset, grid_overrides(args), args)
    preflight_search(search, base, problems, args.workers)  # before Ray starts
    job = _start_job(
        args,
        f"search-{search.name}",
        f"raykd-search-{search.name}",
        {"space": search.model_dump(mode="json"), "preset": preset},
        run_name=f"search-{search.name}",
        local_default=False if args.ray_train else "auto",
    )
    try:
        out = run_search(search, base, job, resume=not args.fresh)
    except BaseException as exc:
        if (got := received()) is not None or isinstance(exc, KeyboardInterrupt):
            raise interrupt_job(job, got or exc, []) from None
        finish_job(job, [], status="FAILED")
        raise
    path = job.root / f"search-{search.name}-{job.run_id[:8]}.json"
    from raykd.train.evaluate import json_safe  # strict JSON: a NaN objective becomes null

    path.write_text(json.dumps(json_safe(out)[0], indent=1, default=str, allow_nan=False))
    job.tracking.log_artifact(job.run_id, path)
    rows = search_rows(out)
    finish_job(job, rows)
    per_volume = base.max_slices_per_volume
    scope = (
        f"split val, {'at most ' + str(per_volume) if per_volume else 'all'} slices per volume, "
        "mean over seeds"
    )
    if "best" in out:
        print(
            f"best trial: {out['best']['params']} -> {search.objectives[0].metric} "
            f"{out['best'][search.objectives[0].metric]:.3f} ({scope})"
        )
    for t in out.get("pareto", []):
        print(
            f"pareto: {t['params']} -> "
            + ", ".join(f"{o.metric} {t[o.metric]:.4g}" for o in search.objectives)
        )
    print(f"Optuna study '{out['study']['name']}' in {out['study']['storage']}")
    return 0


def search_main(argv: list[str] | None = None, prog: str = "search_kd_weights.py") -> int:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Optuna search through Ray Tune over KD method, loss weights, depth, "
        "acceleration (search_spaces/*.yaml).",
    )
    add_search_args(p)
    add_grid_args(p)
    add_job_args(p)
    args = p.parse_args(argv)
    return _guard(run_search_args, args, prog)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="Optuna search on Ray (same as jobs/search_kd_weights.py)",
        description="Optuna search through Ray Tune (search_spaces/*.yaml).",
    )
    add_search_args(p)
    add_grid_args(p)
    add_job_args(p)
    p.set_defaults(func=run_search_args)

    p = sub.add_parser(
        "grid",
        help="run the paper's grid on Ray (same as jobs/full_grid.py)",
        description="Run the SFT-KD-Recon grid (Table 1) on Ray with MLflow.",
    )
    add_grid_args(p)
    add_job_args(p)
    p.set_defaults(func=run_grid_args)
