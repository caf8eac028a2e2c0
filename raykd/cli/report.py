"""``raykd compare`` / ``jobs/compare_runs.py``, ``raykd benchmark-inference`` and ``raykd export``.

Heavy imports (pandas, MLflow, matplotlib, torch) happen only when one of these subcommands
runs. ``jobs/compare_runs.py`` calls :func:`compare_main`, which shares :func:`add_compare_args`
and :func:`run_compare` with the subcommand, so the script and the subcommand cannot drift apart.
"""

from __future__ import annotations

import argparse
import os


def add_compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--experiment",
        action="append",
        metavar="NAME",
        help="MLflow experiment (name or id) holding stage runs (repeatable)",
    )
    p.add_argument("--parent-run", help="a job run id: compare the stages it lists/trained")
    p.add_argument(
        "--tracking-uri",
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<root>/mlflow.db)",
    )
    p.add_argument(
        "--root",
        help="run directory holding mlflow.db (default: $RAYKD_HOME or ~/raykd-runs), or an "
        "s3:// root (with --tracking-uri) that receives the report",
    )
    p.add_argument(
        "--out",
        default="comparison",
        help="output folder (default: comparison); with an s3:// --root, a relative one is "
        "written into the root",
    )
    p.add_argument(
        "--split", choices=["val", "test"], help="eval split (default: test if all runs have it)"
    )
    p.add_argument("--student-depth", type=int, help="Table 1 student depth (default: 3)")
    p.add_argument("--teacher-depth", type=int, help="teacher depth (default: 5)")
    p.add_argument("--method", help="KD method for Table 8 and the figures (default: at)")
    p.add_argument("--optuna-storage", help="Optuna storage URL of a search (search figures)")
    p.add_argument("--study-name", help="Optuna study name (with --optuna-storage)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log a comparison run")


def run_compare(args: argparse.Namespace) -> int:
    import sys
    import warnings

    from raykd.errors import RaykdError
    from raykd.report import ReportWarning
    from raykd.report.compare import compare

    if bool(args.optuna_storage) != bool(args.study_name):
        raise RaykdError("--optuna-storage and --study-name go together")
    from raykd.tracking.probe import check_tracking_uri

    problems = check_tracking_uri(args.tracking_uri)  # an unreachable server hangs MLflow
    if problems:
        raise RaykdError(problems[0])
    from raykd.outputs import guard_output_dir

    storage, rel = _out_in_root(args)
    guard_output_dir(args.out)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ReportWarning)
        try:
            result = _compare(compare, args)
        finally:  # report gaps as one line each, without warnings' source-line noise
            for msg in dict.fromkeys(
                str(w.message) for w in caught if issubclass(w.category, ReportWarning)
            ):
                print(f"warning: {msg}", file=sys.stderr)
    for line in result.summary_lines:
        print(line)
    if storage is not None:
        storage.push(rel)
        print(f"wrote {len(result.files)} files to {storage.uri}/{rel}")
    else:
        print(f"wrote {len(result.files)} files to {result.out_dir}")
    return 0


def _out_in_root(args: argparse.Namespace):
    """With an object-store ``--root`` a relative ``--out`` is a folder in the root: written in
    this node's copy, then pushed to the bucket. Returns ``(storage, rel)`` (``None`` else)."""
    from pathlib import Path

    from raykd.storage import is_uri, open_uri

    if not is_uri(args.root) or Path(args.out).is_absolute():
        return None, ""
    if not (args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
        return None, ""  # compare refuses it in one line
    storage = open_uri(args.root)  # reached now: a bad root ends in one line
    rel = Path(args.out).as_posix().strip("/")
    args.out = str(storage.local / rel)
    return storage, rel


def _compare(compare, args: argparse.Namespace):
    return compare(
        args.experiment,
        args.parent_run,
        args.out,
        args.tracking_uri,
        root=args.root,
        split=args.split,
        student_depth=args.student_depth,
        teacher_depth=args.teacher_depth,
        method=args.method,
        optuna_storage=args.optuna_storage,
        study_name=args.study_name,
        log_to_mlflow=not args.no_mlflow,
    )


def compare_main(argv: list[str] | None = None, prog: str = "compare_runs") -> int:
    """``jobs/compare_runs.py``: the ``compare`` subcommand as a script (errors as ``prog``)."""
    from raykd.errors import run_cli

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Paper-style tables, Wilcoxon tests and figures from MLflow stage runs; "
        "logged as a comparison run.",
    )
    add_compare_args(parser)
    args = parser.parse_args(argv)
    return run_cli(run_compare, args, prog)


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from raykd.deploy.latency import benchmark_inference, log_benchmark

    results = benchmark_inference(
        depths=args.depths,
        cascades=args.cascades,
        size=args.size,
        batch=args.batch,
        device=args.device,
        repeats=args.repeats,
        warmup=args.warmup,
        channels=args.channels,
        threads=args.threads,
        precision=args.precision,
    )
    r0 = results[0]
    print(
        f"device: {r0['device']}, {args.size}x{args.size}, batch {args.batch}; compute path: cpu "
        f"{r0['cpu_capability']}, precision {r0['precision']}, memory format {r0['memory_format']}"
    )
    print("depth  params   median ms  p10 ms  p90 ms")
    for r in results:
        print(
            f"D{r['depth']}C{r['cascades']}  {r['params']:7d}  {r['median_ms']:9.3f}  "
            f"{r['p10_ms']:6.3f}  {r['p90_ms']:6.3f}"
        )
    from raykd.deploy.latency import speedup

    if (ratio := speedup(results)) is not None:
        print(f"D3C5 vs D5C5 per slice: x{ratio:.2f} faster (paper: x2.6 on GPU)")
    if args.tracking_uri or args.experiment:
        from raykd.paths import default_run_root
        from raykd.tracking import Tracking, default_tracking_uri

        uri = args.tracking_uri or default_tracking_uri(args.root or default_run_root())
        run_id = log_benchmark(results, Tracking(uri, args.experiment or "raykd-benchmarks"))
        print(f"logged benchmark run {run_id} to {uri}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from raykd.cli.train import fetch_checkpoint
    from raykd.deploy.export import export_model
    from raykd.outputs import guard_output

    fetch_checkpoint(args)
    kind = "onnx" if args.format == "onnx" else "torchscript"
    guard_output(args.out, {"checkpoint": args.checkpoint}, kind, args.force)
    size = tuple(args.size) if args.size else None
    path = export_model(args.checkpoint, args.out, args.format, args.part, size)
    note = " (verified against eager on another batch size)" if args.format == "torchscript" else ""
    print(f"wrote {path}{note}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="paper-style tables, Wilcoxon tests and figures from MLflow runs",
        description="Read stage runs from MLflow (experiments or a job run) and write Table 1, "
        "Table 3, Table 8, the teacher-student gap, paired tests over (seed, volume) units "
        "(test subjects with --folds runs; Holm-adjusted), the loss balance of KD runs and "
        "figures, and "
        "with runs of several --budget-scale values the budget study (budget.md, "
        "figures/budget.png); log them as a comparison run.",
    )
    add_compare_args(p)
    p.set_defaults(func=run_compare)
    _register_benchmark(sub)
    _register_export(sub)


def _register_benchmark(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "benchmark-inference",
        help="per-slice DC-CNN inference latency per depth (for Table 8)",
        description="Time DC-CNN inference per depth with warm-up and synchronisation; "
        "median of repeats. Logged to MLflow (raykd.role=benchmark) when --tracking-uri or "
        "--experiment is given.",
    )
    p.add_argument("--depths", type=int, nargs="+", default=[2, 3, 4, 5])
    p.add_argument("--cascades", type=int, default=5)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--size", type=int, default=240, help="square slice size (default 240)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads while timing (default: as is)")
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="auto (default): the training policy (bf16 on CUDA/AMX/AVX512-BF16, else fp32)",
    )
    p.add_argument("--tracking-uri", help="MLflow store to log to")
    p.add_argument("--experiment", help="MLflow experiment (default: raykd-benchmarks)")
    p.add_argument("--root", help="run directory for the default sqlite store")
    p.set_defaults(func=_cmd_benchmark)


def _register_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained network to TorchScript (or try ONNX)",
        description="Export a checkpoint's DC-CNN. TorchScript is verified against the eager "
        "model; ONNX fails clearly because of the complex FFT data-consistency layer.",
    )
    p.add_argument(
        "checkpoint",
        help="a raykd checkpoint (best.pt), or a stage's s3://<root>/stages/<id>/best.pt",
    )
    p.add_argument("--out", required=True, help="output file (.pt for TorchScript, .onnx)")
    p.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript")
    p.add_argument(
        "--part",
        choices=["auto", "teacher", "student"],
        default="auto",
        help="for SFT checkpoints: which network (default: teacher)",
    )
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="trace size")
    p.add_argument(
        "--force",
        action="store_true",
        help="overwrite --out even if it is not a previous export (never the checkpoint)",
    )
    p.set_defaults(func=_cmd_export)
