"""A finished job's own results: its rows in words, the MLflow description and the key figure.

Reads the typed rows a job produced (:class:`~raykd.orchestration.messages.RowResult`) and the
stages' per-epoch ``metrics.jsonl``; draws and writes, never builds a model. The job
(:mod:`raykd.orchestration.job`) logs what this returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from raykd.strict_json import read_jsonl
from raykd.tracking import ui

if TYPE_CHECKING:
    from raykd.orchestration.messages import JobSummary, RowResult


def row_outcome(r: RowResult) -> str:
    """How a row ended, in words: its metrics, or why it has none."""
    psnr, ssim = r.psnr, r.ssim
    if r.ok and psnr is not None:
        return f"PSNR {psnr:6.2f}  SSIM {ssim:.4f}" if ssim is not None else f"PSNR {psnr:6.2f}"
    if r.stopped:
        return r.stopped
    return "(failed)"


def results_markdown(summary: JobSummary, name: str, tracking_uri: str, experiment_id: str) -> str:
    """The job run's description: the winner and a link to every stage's results first (the
    UI shows the first lines collapsed), then the rows it printed, best marked."""
    exp = experiment_id
    view = ui.stages_url(tracking_uri, exp).removeprefix(ui.ui_base(tracking_uri) + "/")
    best = summary.best
    lines = []
    if best is not None:
        link = f"[{best.label}](#/experiments/{exp}/runs/{best.run})" if best.run else ""
        outcome = " ".join(row_outcome(best).split())
        lines.append(f"Best: **{link or best.label}**, val {outcome}.")
    lines += [
        f"[Every stage with its results]({view}) · **{name}**: {len(summary.rows)} rows, "
        f"{summary.stages_trained} stages trained, {summary.stages_reused} reused, "
        f"{summary.wall_clock_s:.0f} s.",
        "",
        "| row | val PSNR (dB) | val SSIM | |",
        "|---|---:|---:|---|",
    ]
    for r in summary.rows:
        psnr, ssim = r.psnr, r.ssim
        ok = r.ok and psnr is not None
        cells = (f"{psnr:.2f}", f"{ssim:.4f}" if ssim is not None else "") if ok else ("—", "—")
        note = "**best**" if best is not None and r.label == best.label else ""
        if not ok:
            note = r.stopped or "failed"
        lines.append(f"| {r.label} | {cells[0]} | {cells[1]} | {note} |")
    return "\n".join(lines)[:5000]


def results_figure(
    summary: JobSummary, stage_dirs: dict[str, str], title: str, path: Path
) -> Path | None:
    """The job's key figure: final val PSNR per row (best highlighted) and val PSNR per epoch
    (from each row's stage folder in ``stage_dirs``, by stage id); None without a result."""
    done = [r for r in summary.rows if r.ok]
    if not done:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = summary.best
    psnr = [r.psnr or 0.0 for r in done]
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(12, 0.35 * len(done) + 2.5))
    labels = [r.label for r in done]
    colours = ["tab:red" if best and lab == best.label else "tab:blue" for lab in labels]
    bars.barh(labels, psnr, color=colours)
    bars.set_xlim(min(psnr) - 1.0, max(psnr) + 0.5)
    bars.invert_yaxis()
    bars.set_xlabel("validation PSNR (dB), best checkpoint")
    for r in done:
        points = _history(stage_dirs.get(r.stage_id or ""))
        curves.plot([p["epoch"] for p in points], [p["val/psnr"] for p in points], marker=".")
    curves.set_xlabel("epoch")
    curves.set_ylabel("validation PSNR (dB)")
    fig.suptitle(f"{title}: {len(done)} rows")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _history(stage_dir: str | None) -> list[dict]:
    """A stage's per-epoch records (``metrics.jsonl``); [] when it has none."""
    return read_jsonl(Path(stage_dir) / "metrics.jsonl") if stage_dir else []
