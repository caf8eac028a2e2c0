"""One call from an MLflow store to the paper's tables, tests and figures (``raykd compare``).

Writes to ``out_dir``: ``table_1.md/.csv``, ``table_3.md/.csv``, ``table_8.md/.csv``,
``gap.md/.csv``, ``wilcoxon.md/.csv`` (paired tests over (seed, volume) units, per-slice test
descriptive), ``balance.md/.csv`` (loss-term ratios per KD row), ``figures/*.png``,
``warnings.txt`` (every gap or imbalance the report found), with runs of several
``raykd.budget`` scales ``budget.md/.csv`` and ``figures/budget.png`` (:mod:`raykd.report.budget`)
and ``summary.md`` (a plain-language
paragraph of which claims hold at α = 0.05 and on how many independent units, from
:func:`raykd.report.summary.summary_paragraph`, then the details); then logs all
of them as artifacts of a new MLflow run tagged ``raykd.role=comparison`` (a child of the job
run when one was given), so a comparison is itself tracked and reproducible from the store
alone. The comparison run goes to the first experiment given (or the job run's experiment).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from raykd.errors import RaykdError
from raykd.kinds import RowKind as R
from raykd.report import ReportWarning, warn
from raykd.report.collect import collect
from raykd.report.records import Setting
from raykd.report.runs import StageRuns
from raykd.report.store import resolve_uri
from raykd.tracking import schema as S


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare` wrote and concluded.

    ``files`` maps a short name (``table_1``, ``table_1_csv``, ``fig_val_loss``, ``warnings``,
    ``summary``, ...) to each file written under ``out_dir``, in writing order (the comparison
    run logs them all); ``summary_lines`` starts with ``paragraph``, the plain-language verdict
    (the CLI prints the lines one by one); ``warnings`` are the report's distinct warning
    messages; ``run_id`` is the comparison's MLflow run, None when it was not logged.
    """

    out_dir: Path
    files: dict[str, Path]
    paragraph: str
    summary_lines: tuple[str, ...]
    warnings: tuple[str, ...]
    run_id: str | None = None

    @property
    def summary_path(self) -> Path:
        return self.files["summary"]

    @property
    def warnings_path(self) -> Path:
        return self.files["warnings"]


def _figure_inputs(runs: StageRuns, method: str, t_depth, s_depth):
    """Fig. 3 rows, Fig. 4a box data and Fig. 4b curves, one entry per setting.

    Figures show one training run per model, so a multi-seed setting shows its first seed
    (named in the label); the tables pool all seeds.
    """
    from raykd.report.figures import GridRow

    grid, boxes, curves = [], [], []
    for setting in runs.settings():
        seeds = runs.seeds(setting)
        label = setting.label() + (f" (seed {seeds[0]})" if len(seeds) > 1 else "")
        found = {
            R.TEACHER: runs.find(setting, R.TEACHER, teacher_depth=t_depth),
            R.SFT_TEACHER: runs.find(setting, R.SFT_TEACHER, "", t_depth, s_depth),
            R.STUDENT: runs.find(setting, R.STUDENT, student_depth=s_depth),
            R.STD_KD: runs.find(setting, R.STD_KD, method, t_depth, s_depth) if method else None,
            R.SFT_KD: runs.find(setting, R.SFT_KD, method, t_depth, s_depth) if method else None,
        }
        ids = {k: (None if r is None else r["run_id"]) for k, r in found.items()}
        grid.append(
            GridRow(
                label,
                {
                    k: runs.examples(ids[k]) if ids[k] else None
                    for k in (R.TEACHER, R.STUDENT, R.STD_KD, R.SFT_KD)
                },
            )
        )
        names = {k: k.label for k in (R.TEACHER, R.STUDENT, R.STD_KD, R.SFT_KD)}
        boxes.append((label, {n: _per_slice(runs, ids[k], "ssim") for k, n in names.items()}))
        names = {k: k.label for k in (R.TEACHER, R.SFT_TEACHER, R.STUDENT, R.STD_KD, R.SFT_KD)}
        curves.append(
            (label, {n: runs.history(ids[k]) if ids[k] else [] for k, n in names.items()})
        )
    return grid, boxes, curves


def _per_slice(runs: StageRuns, run_id: str | None, metric: str) -> np.ndarray | None:
    if run_id is None:
        return None
    report = runs.eval(run_id)
    if report is None:
        return None
    values = [v for vol in report["volumes"] for v in vol.get("per_slice", {}).get(metric, [])]
    return np.asarray(values, dtype=np.float64) if values else None


def _experiment_name(runs: StageRuns) -> str:
    return runs.client.get_experiment(runs.experiment_ids[0]).name


def compare(
    experiments: list[str] | None = None,
    parent_run_id: str | None = None,
    out_dir: str | Path = "comparison",
    tracking_uri: str | None = None,
    *,
    root: str | Path | None = None,
    split: str | None = None,
    student_depth: int | None = None,
    teacher_depth: int | None = None,
    method: str | None = None,
    optuna_storage: str | None = None,
    study_name: str | None = None,
    log_to_mlflow: bool = True,
) -> Comparison:
    """Build every table and figure from the store and log them as a comparison run.

    ``method`` picks the KD method of Table 8 and the figures (default: AT, the paper's
    choice, when it was run). ``optuna_storage``/``study_name`` override the study a search
    job recorded on its run.
    """
    uri = resolve_uri(tracking_uri, root)  # fail fast, before the heavy imports of _build
    out = Path(out_dir).expanduser().resolve()
    (out / "figures").mkdir(parents=True, exist_ok=True)
    study = (optuna_storage, study_name) if optuna_storage and study_name else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ReportWarning)
        runs = collect(uri, experiments, parent_run_id, split)
        try:
            files, lines, method = _build(runs, out, method, teacher_depth, student_depth, study)
        finally:
            runs.close()
    warned = _hand_on(caught)
    files["warnings"] = out / "warnings.txt"
    files["warnings"].write_text("\n".join(warned) + ("\n" if warned else ""))
    lines.append(f"{len(warned)} warning(s) (missing runs/values, loss balance): see warnings.txt")
    files["summary"] = _write_summary(out, lines)
    run_id = None
    if log_to_mlflow:
        run_id = _log(
            uri,
            runs,
            files,
            split=runs.split,
            parent_run_id=parent_run_id,
            experiments=experiments,
            method=method,
        )
        lines.append(f"comparison run {run_id}")
    return Comparison(out, files, lines[0], tuple(lines), warned, run_id)


def _build(
    runs: StageRuns,
    out: Path,
    method: str | None,
    teacher_depth: int | None,
    student_depth: int | None,
    study: tuple[str, str] | None,
) -> tuple[dict[str, Path], list[str], str]:
    """Tables, figures and the summary lines (paragraph first); returns the files written,
    the lines and the KD method used."""
    from raykd.report import balance, summary

    t_depth = teacher_depth or runs.teacher_depth()
    s_depth = student_depth or runs.student_depth()
    method = _pick_method(runs, method)
    tables = _tables(runs, method, t_depth, s_depth)
    files: dict[str, Path] = {}
    for name, table in tables.items():
        files[name], files[f"{name}_csv"] = table.write(out, name)
    grid, boxes, curves = _figure_inputs(runs, method, t_depth, s_depth)
    files.update(_figures(runs, out / "figures", grid, boxes, curves, study))
    budget_files, budget_lines = _budget_study(runs, out, t_depth, s_depth)
    files.update(budget_files)
    wil, gap, bal = tables["wilcoxon"], tables["gap"], tables["balance"]
    paragraph = summary.summary_paragraph(runs, wil, gap, balance.balance_sentence(bal))
    paragraph += "".join(f" {line[0].upper()}{line[1:]}." for line in budget_lines)
    details = _summary(runs, tables["table_1"], gap, wil, method, t_depth, s_depth)
    return files, [paragraph, *details, *(f"loss balance {s}" for s in bal.summary)], method


def _budget_study(
    runs: StageRuns, out: Path, t_depth: int, s_depth: int
) -> tuple[dict[str, Path], list[str]]:
    """With runs of several ``raykd.budget`` scales: the budget table, figure and verdicts."""
    from raykd.report import budget

    if not budget.has_budget_study(runs):
        return {}, []
    table = budget.budget_table(runs, student_depth=s_depth, teacher_depth=t_depth)
    files = dict(zip(("budget", "budget_csv"), table.write(out, "budget"), strict=True))
    files["fig_budget"] = budget.budget_figure(table, out / "figures" / "budget.png")
    return files, list(table.summary)


def _pick_method(runs: StageRuns, method: str | None) -> str:
    """The KD method asked for (it must have runs), else AT when run, else the first run."""
    methods = runs.methods()
    if method and method not in methods:
        raise RaykdError(f"KD method '{method}' has no runs; runs exist for {methods}")
    return method or ("at" if "at" in methods else (methods[0] if methods else ""))


def _tables(runs: StageRuns, method: str, t_depth: int, s_depth: int) -> dict[str, Any]:
    """Every table by its file name, built in the order their warnings are listed."""
    from raykd.report import balance, benchmarks, stats, table8, tables
    from raykd.report.gap import gap_table

    depth_kw = {"student_depth": s_depth, "teacher_depth": t_depth}
    t1 = tables.table_1(runs, **depth_kw)
    t3 = tables.table_3(runs, **depth_kw)
    bench = benchmarks.latest_benchmark(runs.client, runs.experiment_ids)
    t8 = table8.table_8(runs, bench, method=method or None, teacher_depth=t_depth)
    gap = gap_table(runs, **depth_kw)
    wil = stats.paired_table(runs, **depth_kw)
    bal = balance.balance_table(runs, **depth_kw)
    return {
        "table_1": t1,
        "table_3": t3,
        "table_8": t8,
        "gap": gap,
        "wilcoxon": wil,
        "balance": bal,
    }


def _figures(
    runs: StageRuns,
    figs: Path,
    grid: list[Any],
    boxes: list[Any],
    curves: list[Any],
    study: tuple[str, str] | None,
) -> dict[str, Path]:
    """Fig. 3, 4a and 4b, then the search figures of the Optuna study (given or recorded)."""
    from raykd.report import figures

    files = {
        "fig_reconstructions": figures.reconstruction_grid(grid, figs / "reconstructions.png"),
        "fig_ssim_boxplots": figures.box_plots(boxes, figs / "ssim_boxplots.png"),
        "fig_val_loss": figures.loss_curves(curves, figs / "val_loss.png"),
    }
    study = study or runs.study()
    if study is not None:
        for path in figures.search_figures(study[0], study[1], figs):
            files[f"fig_{path.stem}"] = path
    elif runs.trial_runs():
        warn(
            "trial runs found but no Optuna study recorded on the job run; pass "
            "--optuna-storage and --study-name for the search figures"
        )
    return files


def _hand_on(caught: list[warnings.WarningMessage]) -> tuple[str, ...]:
    """Re-issue every caught warning to the caller (tests, logs, the CLI's stderr); returns
    the distinct report warnings in order."""
    messages = [str(w.message) for w in caught if issubclass(w.category, ReportWarning)]
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return tuple(dict.fromkeys(messages))


def _write_summary(out: Path, lines: list[str]) -> Path:
    """``summary.md``: the paragraph (``lines[0]``), then the details as a list."""
    path = out / "summary.md"
    path.write_text(
        f"# Comparison summary\n\n{lines[0]}\n\n## Details\n\n"
        + "\n".join(f"- {s}" for s in lines[1:])
        + "\n"
    )
    return path


def _summary(runs: StageRuns, t1, gap, wil, method: str, t_depth, s_depth) -> list[str]:
    frame = runs.frame
    from raykd.report.folds import replicates_text

    settings = [f"{s.label()} ({replicates_text(runs.seeds(s))})" for s in runs.settings()]
    lines = [
        f"{len(frame)} stage runs from {runs.source}; tables use the {runs.split} split; "
        f"teacher D{t_depth}, student D{s_depth}; KD methods: {', '.join(runs.methods()) or '-'}",
        runs.split_description(),
        f"settings: {', '.join(settings)}",
    ]
    missing = sum(1 for r in t1.records if r["status"] == "missing")
    lines.append(f"Table 1: {missing} missing cell(s) shown as —")
    lines += gap.summary
    for rec in wil.records:
        if rec.get("metric") != "psnr":
            continue
        where = Setting(rec["dataset"], rec["acceleration"], budget=rec.get("budget", ""))
        what = f"{where.label()} {rec['label']} "
        what += f"{rec['method']} PSNR"
        if "n_units" not in rec:
            lines.append(f"Paired test {what}: missing (see warnings)")
            continue
        ci = "" if np.isnan(rec["ci_low"]) else f" [{rec['ci_low']:+.3f}, {rec['ci_high']:+.3f}]"
        p = "" if np.isnan(rec["p_value"]) else f", p = {rec['p_value']:.3g}"
        if not np.isnan(rec.get("p_adjusted", np.nan)):
            p += f" (Holm-adjusted {rec['p_adjusted']:.3g} over {rec.get('family_size', 1)})"
        lines.append(
            f"Paired test {what}: mean Δ {rec['mean_diff']:+.3f} dB{ci}{p}, n = {rec['n_units']} "
            f"units ({rec['units']}) → {rec['verdict']}; per-slice Wilcoxon (descriptive, slices "
            f"are not independent): median Δ {rec['slice_median_diff']:+.3f} dB, "
            f"p = {rec['slice_p_value']:.3g}, {rec['slice_n']} slices"
        )
    if method:
        lines.append(f"figures and Table 8 use KD method {method}")
    return lines


def _log(uri: str, runs: StageRuns, files: dict[str, Path], **info) -> str:
    from raykd.tracking import Tracking

    tracking = Tracking(uri, _experiment_name(runs))
    sources = info["experiments"] or []
    run_id = tracking.start_run(
        name="comparison",
        parent_run_id=info["parent_run_id"],
        tags={
            S.TAG_ROLE: "comparison",
            "raykd.source": runs.source,
            "raykd.split": info["split"],
        },
        params={
            "experiments": ",".join(sources),
            "parent_run": info["parent_run_id"] or "",
            "split": info["split"],
            "n_stage_runs": len(runs.frame),
            "method": info["method"],
        },
    )
    try:
        for path in files.values():
            sub = "figures" if path.parent.name == "figures" else None
            tracking.log_artifact(run_id, path, sub)
    except Exception as exc:
        tracking.end_run(run_id, "FAILED")
        raise RaykdError(f"comparison run {run_id}: logging artifacts failed ({exc})") from exc
    tracking.end_run(run_id)
    return run_id


__all__ = ["Comparison", "Setting", "compare"]
