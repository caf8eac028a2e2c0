"""The paper's figures as PNG files (matplotlib, Agg backend: no display needed).

- :func:`reconstruction_grid` — Fig. 3: target, a zoomed inset, ZF, teacher, student, Std-KD,
  SFT-KD and residual maps |recon − target| on one colour scale shared by the row, built from
  the ``examples/<split>_examples.npz`` artifacts (the same fixed slices for every run).
- :func:`box_plots` — Fig. 4a: per-slice SSIM of teacher, student, Std-KD and SFT-KD.
- :func:`loss_curves` — Fig. 4b: per-epoch validation loss (the runs' ``val_loss`` history).
- :func:`search_figures` — for an Optuna search: optimisation history, parameter importances
  and (with two or more objectives) the Pareto front, via ``optuna.visualization.matplotlib``.

A missing run leaves a labelled gap ("missing") in the figure instead of a shifted layout.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; must precede pyplot (optuna's plots use pyplot)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from raykd.errors import RaykdError  # noqa: E402
from raykd.report import warn  # noqa: E402

MODELS = (
    ("teacher", "Teacher"),
    ("student", "Student"),
    ("std_kd", "Std-KD"),
    ("sft_kd", "SFT-KD"),
)
COLOURS = {
    "Teacher": "#1f77b4",
    "SFT teacher": "#9467bd",
    "Student": "#ff7f0e",
    "Std-KD": "#7f7f7f",
    "SFT-KD": "#2ca02c",
}
DPI = 120


@dataclass
class GridRow:
    """One row of Fig. 3: a setting label and the example arrays of each model (None: missing)."""

    label: str
    examples: dict[str, dict[str, np.ndarray] | None]


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _psnr(target: np.ndarray, pred: np.ndarray) -> float:
    mse = float(np.mean((target - pred) ** 2))
    peak = float(target.max())
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def inset_box(image: np.ndarray) -> tuple[int, int, int]:
    """(top, left, side) of the square with the most edge energy: where errors show."""
    from scipy import ndimage

    h, w = image.shape
    side = max(8, min(h, w) // 3)
    energy = ndimage.laplace(image.astype(np.float64)) ** 2
    best, box = -1.0, (0, 0, side)
    step = max(1, side // 2)
    for top in range(0, h - side + 1, step):
        for left in range(0, w - side + 1, step):
            e = float(energy[top : top + side, left : left + side].sum())
            if e > best:
                best, box = e, (top, left, side)
    return box


def _pick_slice(
    label: str, examples: dict[str, dict[str, np.ndarray] | None]
) -> dict[str, np.ndarray | None]:
    """The same slice from every model's examples (the middle stored slice of the first)."""
    ref_key = next((k for k, _ in MODELS if examples.get(k) is not None), None)
    if ref_key is None:
        return {}
    ref = examples[ref_key]
    k = len(ref["slices"]) // 2
    sid, vol = int(ref["slices"][k]), str(ref["volume"])
    out: dict[str, np.ndarray | None] = {
        "target": ref["target"][k],
        "zero_filled": ref["zero_filled"][k],
    }
    for key, name in MODELS:
        ex = examples.get(key)
        if ex is None:
            out[key] = None
            continue
        hits = np.flatnonzero(np.asarray(ex["slices"]).astype(int) == sid)
        if str(ex["volume"]) != vol or hits.size == 0:
            warn(f"{label}: the {name} examples do not hold slice {sid} of {vol}; panel left empty")
            out[key] = None
            continue
        if not np.allclose(ex["target"][hits[0]], out["target"], atol=1e-5):
            warn(f"{label}: the {name} example's target differs from the others (other data?)")
        out[key] = ex["recon"][hits[0]]
    return out


def reconstruction_grid(rows: list[GridRow], path: str | Path) -> Path:
    """Fig. 3: one row per setting; images share the target's grey scale, residual maps share
    one colour scale per row (so the three residuals are directly comparable)."""
    if not rows:
        raise RaykdError("reconstruction grid: no settings to plot")
    titles = ["Target", "Target inset", "ZF"] + [n for _, n in MODELS]
    titles += [f"|{n} − target|" for _, n in MODELS[1:]]
    ncol = len(titles)
    fig, axes = plt.subplots(
        len(rows), ncol, figsize=(1.7 * ncol + 0.6, 1.9 * len(rows)), squeeze=False
    )
    for r, row in enumerate(rows):
        panels = _pick_slice(row.label, row.examples)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
        if not panels:
            warn(f"{row.label}: no example reconstructions at all; row left empty")
            axes[r][0].set_ylabel(row.label)
            for ax in axes[r]:
                ax.text(0.5, 0.5, "missing", ha="center", va="center", transform=ax.transAxes)
            continue
        target = panels["target"]
        vmax = float(target.max()) or 1.0
        top, left, side = inset_box(target)
        images = [target, target[top : top + side, left : left + side], panels["zero_filled"]]
        images += [panels.get(k) for k, _ in MODELS]
        for c, img in enumerate(images):
            ax = axes[r][c]
            if img is None:
                ax.text(0.5, 0.5, "missing", ha="center", va="center", transform=ax.transAxes)
                continue
            ax.imshow(img, cmap="gray", vmin=0, vmax=vmax)
            if c >= 2:
                ax.set_xlabel(f"{_psnr(target, img):.2f} dB", fontsize=7)
        axes[r][0].add_patch(
            Rectangle((left, top), side, side, fill=False, edgecolor="yellow", linewidth=1)
        )
        residuals = [
            None if panels.get(k) is None else np.abs(panels[k] - target) for k, _ in MODELS[1:]
        ]
        rmax = max((float(x.max()) for x in residuals if x is not None), default=1.0) or 1.0
        im = None
        for j, res in enumerate(residuals):
            ax = axes[r][3 + len(MODELS) + j]
            if res is None:
                ax.text(0.5, 0.5, "missing", ha="center", va="center", transform=ax.transAxes)
                continue
            im = ax.imshow(res, cmap="inferno", vmin=0, vmax=rmax)
        if im is not None:
            fig.colorbar(im, ax=list(axes[r][-3:]), fraction=0.02, pad=0.01)
        axes[r][0].set_ylabel(row.label, fontsize=9)
    for c, title in enumerate(titles):
        axes[0][c].set_title(title, fontsize=8)
    return _save(fig, path)


def box_plots(
    groups: list[tuple[str, dict[str, np.ndarray | None]]],
    path: str | Path,
    ylabel: str = "SSIM (per slice)",
) -> Path:
    """Fig. 4a: one panel per setting, one box per model (a missing model is labelled)."""
    if not groups:
        raise RaykdError("box plots: no settings to plot")
    fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups), 3.2), squeeze=False)
    for ax, (label, data) in zip(axes[0], groups, strict=True):
        names = list(data)
        present = [n for n in names if data[n] is not None and np.isfinite(data[n]).any()]
        values = [np.asarray(data[n])[np.isfinite(data[n])] for n in present]
        if values:
            bp = ax.boxplot(
                values, positions=[names.index(n) for n in present], widths=0.6, patch_artist=True
            )
            for patch, n in zip(bp["boxes"], present, strict=True):
                patch.set_facecolor(COLOURS.get(n, "#cccccc"))
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(
            [n if n in present else f"{n}\n(missing)" for n in names], rotation=30, fontsize=8
        )
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_title(label, fontsize=9)
        ax.set_ylabel(ylabel)
    fig.tight_layout()
    return _save(fig, path)


def loss_curves(
    groups: list[tuple[str, dict[str, list[tuple[int, float]]]]],
    path: str | Path,
    ylabel: str = "validation loss (L1)",
) -> Path:
    """Fig. 4b: per-epoch validation loss of each model, one panel per setting."""
    if not groups:
        raise RaykdError("loss curves: no settings to plot")
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.2), squeeze=False)
    for ax, (label, curves) in zip(axes[0], groups, strict=True):
        for name, points in curves.items():
            if not points:
                ax.plot([], [], label=f"{name} (missing)", color=COLOURS.get(name), ls=":")
                continue
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, label=name, color=COLOURS.get(name), lw=1.4)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _sqlite_exists(storage: str) -> None:
    if storage.startswith("sqlite:///"):
        db = Path(storage.removeprefix("sqlite:///"))
        if not db.is_file():
            raise RaykdError(f"Optuna storage {storage}: database file {db} not found")


def search_figures(storage: str, study_name: str, out_dir: str | Path) -> list[Path]:
    """Optimisation history, parameter importances and Pareto front of an Optuna study."""
    import optuna
    from optuna.visualization import matplotlib as ovm

    _sqlite_exists(storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError as exc:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise RaykdError(f"Optuna study '{study_name}' not in {storage}; studies: {names}") from exc
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise RaykdError(f"Optuna study '{study_name}': no completed trials to plot")
    out_dir = Path(out_dir)
    names = study.metric_names or [f"objective {i}" for i in range(len(study.directions))]
    multi = len(study.directions) > 1
    paths = []
    # rc_context: Optuna's plots switch the global style to ggplot; keep that local.
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore")  # ExperimentalWarning and target-name chatter
        if multi:  # Optuna draws no best-value line for several objectives: draw our own
            fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False)
            for i, (name, direction) in enumerate(zip(names, study.directions, strict=True)):
                _history_panel(axes[0][i], done, i, name, direction)
            fig.tight_layout()
            paths.append(_save(fig, out_dir / "optuna_history.png"))
        else:
            ax = ovm.plot_optimization_history(study, target_name=names[0])
            paths.append(_save(ax.figure, out_dir / "optuna_history.png"))
        # PED-ANOVA (Optuna's default) ranks params by how they reach *low* values: flip the
        # sign of maximised objectives so "important" means "important for a good value".
        sign = -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
        if len({k for t in done for k in t.params}) and len(done) >= 2:
            ax = ovm.plot_param_importances(
                study, target=lambda t: sign * t.values[0], target_name=names[0]
            )
            paths.append(_save(ax.figure, out_dir / "optuna_importance.png"))
        else:
            warn(f"study '{study_name}': too few trials/params for parameter importances")
        if len(names) in (2, 3):
            ax = ovm.plot_pareto_front(study, target_names=names)
            paths.append(_save(ax.figure, out_dir / "optuna_pareto.png"))
        else:
            warn(f"study '{study_name}' has {len(names)} objective(s): Pareto front not plotted")
    return paths


def _history_panel(ax, trials: list, i: int, name: str, direction) -> None:
    """Objective ``i`` per completed trial and its running best (per its direction)."""
    import optuna

    numbers = np.array([t.number for t in trials])
    values = np.array([t.values[i] for t in trials], dtype=np.float64)
    maximise = direction == optuna.study.StudyDirection.MAXIMIZE
    best = np.maximum.accumulate(values) if maximise else np.minimum.accumulate(values)
    ax.scatter(numbers, values, s=14, color="#1f77b4", label=name)
    ax.step(numbers, best, where="post", color="#d62728", lw=1.2, label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(name)
    ax.set_title(f"{name} ({'max' if maximise else 'min'}imise)", fontsize=9)
    ax.legend(fontsize=7)
