"""``raykd grid`` / ``jobs/full_grid.py`` and ``raykd search`` / ``jobs/search_kd_weights.py``:
the job commands of the orchestration layer (Ray, Tune, MLflow are imported by the handlers)."""

from __future__ import annotations

import argparse
import sys

from raykd.cli.plan import job_workers, print_plan
from raykd.cli.study_flags import add_confirm_args, add_study_args
from raykd.errors import run_cli
from raykd.kinds import ROW_KINDS, STAGE_KINDS
from raykd.plan.gpus import on_device


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
    g.add_argument(
        "--workers",
        help="Ray Train workers (DDP ranks) per stage: N for every kind, or per stage kind "
        "(teacher=4,sft=4,student=1,kd=1; kinds not named: 1); default: the preset's workers, "
        "else 1",
    )
    g.add_argument(
        "--plan",
        action="store_true",
        help="print the stage graph (what trains, what is reused), the critical path and a "
        "cost estimate, then exit: no Ray, no training",
    )
    g.add_argument(
        "--cluster",
        help="the cluster --plan estimates for: NODESxCPUScpu[GPUSgpu], e.g. 4x8cpu, 16x8gpu "
        "(default: this machine)",
    )
    g.add_argument(
        "--calibrate-steps",
        type=int,
        default=2,
        help="timed training steps per stage shape when the store has no measured cost "
        "(cached in <root>/calibration.json; default 2)",
    )
    g.add_argument("--max-concurrent", type=int, help="at most this many trials at once")
    g.add_argument(
        "--cpus-per-worker",
        type=int,
        help="CPUs per Ray Train worker (default: on CPU up to 4 per trial; on GPU each "
        "worker's share of its GPU node's CPUs)",
    )
    g.add_argument(
        "--gpus-per-worker",
        type=float,
        help="GPU share of a single-worker stage on a GPU cluster, e.g. 0.25: four stages at "
        "once per GPU (DDP ranks always get whole GPUs; default: the preset's "
        "gpus_per_worker, else 0.25 for <= 64 channels on <= 256 px slices, else 1)",
    )
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
    p.add_argument("--rows", nargs="+", help=" ".join(ROW_KINDS))
    p.add_argument("--epochs", type=int, help="epochs of every stage")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--max-slices", type=int, help="slices per volume (evenly spaced)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--test", nargs="+", help="held-out test volumes")
    add_study_args(p)
    p.add_argument(
        "--no-fixed-masks",
        dest="fixed_masks",
        action="store_false",
        default=None,
        help="seeded Cartesian masks even where the paper's fixed masks apply",
    )
    p.add_argument(
        "--trial-unit",
        choices=["row", "seed"],
        help="Tune trial = one row (fills a cluster) or all rows of a seed",
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
    workers: dict[str, int] | None = None,
    spec=None,
):
    from raykd.orchestration.console import set_verbose
    from raykd.orchestration.job import start_job
    from raykd.plan.gpus import spec_gpus_per_worker

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
        workers=workers,
        max_concurrent=args.max_concurrent,
        local_train=True if args.local_train else local_default,
        num_cpus=args.num_cpus,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=spec_gpus_per_worker(spec, args.gpus_per_worker) if spec else None,
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
        "test_slices": getattr(args, "test_slices", None),
        "folds": getattr(args, "folds", None),
        "budget_scales": getattr(args, "budget_scales", None),
        "sr_degradation": args.sr_degradation,
        "kd_balance": getattr(args, "kd_balance", None),
        "fixed_masks": getattr(args, "fixed_masks", None),
        "trial_unit": getattr(args, "trial_unit", None),
    }
    if args.epochs is not None:  # 0 is a value to refuse, not "no flag"
        over["epochs"] = {k: args.epochs for k in STAGE_KINDS}
    return over


def run_grid_args(args: argparse.Namespace) -> int:
    from raykd.orchestration.preflight import load_checked_preset, preflight_grid
    from raykd.plan.presets import preset_label

    spec, problems = load_checked_preset(args.preset or "smoke", grid_overrides(args), args)
    args.preset = preset_label(args.preset or "smoke")
    workers = job_workers(args, spec)
    preflight_grid(spec, problems, workers)  # before Ray starts: one line per problem
    if args.plan:
        from raykd.plan.rows import grid_rows

        return print_plan(args, spec, grid_rows(spec), f"grid {args.preset}")
    from raykd.orchestration.grid import grid_stage_ids, run_grid
    from raykd.orchestration.interrupt import received
    from raykd.orchestration.job import finish_job, interrupt_job

    params = {"preset": args.preset, **spec.model_dump(mode="json")}
    if workers:
        from raykd.plan.cost import describe_workers

        params["workers_per_kind"] = describe_workers(workers)
    p = args.preset
    job = _start_job(args, f"grid-{p}", f"raykd-{p}", params, p, False, workers, spec)
    spec = on_device(spec, job.resources.use_gpu)
    from raykd.orchestration.timeline import announce_estimate, log_timeline, report_actual
    from raykd.plan.rows import grid_rows

    plan = announce_estimate(job, spec, grid_rows(spec), workers)
    try:
        rows = run_grid(spec, job)
    except BaseException as exc:
        if (got := received()) is not None or isinstance(exc, KeyboardInterrupt):
            raise interrupt_job(job, got or exc, grid_stage_ids(spec)) from None
        finish_job(job, [], status="FAILED")
        raise
    failed = [r for r in rows if r.error]
    status = "FAILED" if failed else "FINISHED"
    stats = log_timeline(job)
    summary = finish_job(job, rows, status=status, warnings=spec.budget_warnings())
    report_actual(job, plan, summary.wall_clock_s, stats)
    for r in failed:
        print(f"FAILED {r.label}: {r.error}", file=sys.stderr)
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
    add_confirm_args(p)


def search_preset(args: argparse.Namespace, search) -> str:
    """The grid a search samples around: ``--preset`` when given (``smoke`` included), else
    the search space's ``base_preset``."""
    return args.preset if args.preset is not None else search.base_preset


def run_search_args(args: argparse.Namespace) -> int:
    from raykd.orchestration.preflight import load_checked_preset, preflight_search
    from raykd.plan.search_space import load_search

    search = load_search(args.space, {"num_samples": args.num_samples})
    preset = search_preset(args, search)
    base, problems = load_checked_preset(preset, grid_overrides(args), args)
    workers = job_workers(args, base)
    preflight_search(search, base, problems, workers)  # before Ray starts
    if args.plan:
        from raykd.plan.search_space import sampled_rows

        title = (
            f"search {search.name} (the stage settings its space can sample, one each; each of "
            f"its {search.num_samples} trials trains its own {search.row} stage at that cost)"
        )
        return print_plan(args, base, sampled_rows(search, base), title)
    job = _start_job(
        args,
        f"search-{search.name}",
        f"raykd-search-{search.name}",
        {"space": search.model_dump(mode="json"), "preset": preset},
        run_name=f"search-{search.name}",
        local_default=False if args.ray_train else "auto",
        workers=workers,
        spec=base,
    )
    base = on_device(base, job.resources.use_gpu)
    out, confirmed = _run_search_job(args, search, base, job)
    print_search(search, base, out, confirmed)
    return 0


def _run_search_job(args: argparse.Namespace, search, base, job):
    """The search (and its ``--confirm`` step), its result file on the job run, the job's
    summary; an interrupt or failure closes the job run (KILLED / FAILED) first."""
    from raykd.orchestration.confirm import confirm_search
    from raykd.orchestration.interrupt import received
    from raykd.orchestration.job import finish_job, interrupt_job
    from raykd.orchestration.search import run_search, search_rows
    from raykd.orchestration.timeline import log_timeline, report_actual
    from raykd.strict_json import dumps_strict

    out = None
    try:
        out = run_search(search, base, job, resume=not args.fresh)
        # Written (and pushed) before --confirm: a failed confirmation loses nothing.
        path = job.root / f"search-{search.name}-{job.run_id[:8]}.json"
        path.write_text(dumps_strict(out.model_dump(mode="json")))  # a NaN objective -> null
        job.ctx.store.storage.push(path.name)  # an object-store root: into the bucket
        job.tracking.log_artifact(job.run_id, path)
        confirmed = confirm_search(search, base, job, out, args.confirm, args.confirm_seeds)
    except BaseException as exc:
        if (got := received()) is not None or isinstance(exc, KeyboardInterrupt):
            raise interrupt_job(job, got or exc, []) from None
        finish_job(job, search_rows(out) if out is not None else [], status="FAILED")
        raise
    stats = log_timeline(job)
    summary = finish_job(job, search_rows(out))
    if stats:
        report_actual(job, None, summary.wall_clock_s, stats)
    return out, confirmed


def print_search(search, base, out, confirmed=None) -> None:
    """The best trial (or the Pareto front), the confirmation's verdict and where the Optuna
    study is."""
    per_volume = base.max_slices_per_volume
    scope = (
        f"split val, {'at most ' + str(per_volume) if per_volume else 'all'} slices per volume, "
        "mean over seeds"
    )
    first = search.objectives[0].metric
    if out.best is not None:
        print(f"best trial: {out.best.params} -> {first} {out.best.value(first):.3f} ({scope})")
    for t in out.pareto:
        values = ", ".join(f"{o.metric} {t.value(o.metric):.4g}" for o in search.objectives)
        print(f"pareto: {t.params} -> {values}")
    if confirmed is not None:
        print(confirmed.verdict)
    print(f"Optuna study '{out.study_name}' in {out.storage}")


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
