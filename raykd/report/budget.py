"""Budget study: does SFT-KD's advantage hold as training gets longer?

A grid run with ``--budget-scale 1 2 4`` trains every stage with its epochs times the scale and
tags it ``raykd.budget``; the report makes each scale its own setting (``phantom 4x budget
2×``), so every table has one section per budget. This module lines those settings up against
the budget, per dataset × acceleration and KD method:

* SFT-KD − Std-KD and SFT-KD − the equal-compute control (a plain student trained for SFT + KD
  epochs): mean volume-PSNR difference over units with its 95% CI, p and n
  (:func:`raykd.report.stats.contrast_test`, the same numbers as the paired-tests table);
* the teacher–student gap (teacher − student PSNR, :func:`raykd.report.gap.paired_gap`) without
  KD, with Std-KD, SFT-KD and the control: how much of it each closes;

as ``budget.md/.csv`` and ``figures/budget.png`` (x axis: budget scale, with the epochs of the KD
students and of the control). The point contrasts of a dataset × acceleration form one Holm
family (the cells show raw and adjusted p). A verdict per method and contrast says whether a
lead shrinks, reverses or grows as the budget grows, from a paired test of the per-unit change
between the smallest and the largest budget (:mod:`raykd.report.trend`, :data:`RULE`), or says
"no verdict".
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from raykd.kinds import RowKind as R
from raykd.report.gap import paired_gap
from raykd.report.multiplicity import adjust_records
from raykd.report.records import Setting
from raykd.report.runs import StageRuns
from raykd.report.stats import CONTRASTS, contrast_pairs, contrast_test, format_p
from raykd.report.table_model import MISSING, ReportTable, Section, method_name
from raykd.report.trend import RULE, LeadPoint, Trend, change_text, judge_trends, trend_test

# (contrast key, whose lead the verdict follows, sign turning mean Δ = SFT-KD − X into the lead)
LEADS = {
    "sft_vs_std": ("SFT-KD's lead over Std-KD (SFT-KD − Std-KD)", 1.0),
    "sft_vs_equal_compute": ("the equal-compute control's lead (control − SFT-KD)", -1.0),
}
GAPS = {  # quantity → (row, KD method applies, label)
    "gap_none": (R.STUDENT, False, "no KD"),
    "gap_std": (R.STD_KD, True, "Std-KD"),
    "gap_sft": (R.SFT_KD, True, "SFT-KD"),
    "gap_equal": (R.EQUAL_COMPUTE, False, "control"),
}


def has_budget_study(runs: StageRuns) -> bool:
    """True when the compared runs span several ``raykd.budget`` scales."""
    return len({s.budget for s in runs.settings()}) > 1


def _verdict_line(method: str, key: str, trend: Trend) -> str:
    what, _ = LEADS[key]

    def at(p: LeadPoint) -> str:
        if math.isnan(p.lead):
            return f"{MISSING} at {p.budget:g}×"
        ci = "no CI" if math.isnan(p.low) else f"[{p.low:+.2f}, {p.high:+.2f}]"
        return f"{p.lead:+.2f} dB {ci} at {p.budget:g}×"

    trail = " → ".join(at(p) for p in trend.points)
    change = change_text(trend)
    return (
        f"{method_name(method)}: {what} {trend.word} as the budget grows ({trail}"
        f"{'; ' + change if change else ''})"
    )


def _epochs(runs: StageRuns, setting: Setting, row: str) -> int | None:
    f = runs.in_setting(setting)
    values = f[f["row"] == row]["epochs"].dropna()
    return int(values.mode().iloc[0]) if not values.empty else None


def epochs_text(runs: StageRuns, setting: Setting) -> str:
    """Epochs of the student rows at a budget: ``KD 10, control 20`` (— when not logged)."""
    kd = _epochs(runs, setting, R.SFT_KD) or _epochs(runs, setting, R.STD_KD)
    ctl = _epochs(runs, setting, R.EQUAL_COMPUTE)
    return f"KD {kd or MISSING}, control {ctl or MISSING}"


def _point_records(runs: StageRuns, setting: Setting, method: str, depths: tuple) -> list[dict]:
    """The tidy records of one budget × method: two contrasts and four gaps."""
    t_depth, s_depth = depths
    base = {
        "dataset": setting.dataset,
        "acceleration": setting.acceleration,
        "budget": float(setting.budget or 1),
        "method": method,
        "epochs_kd": _epochs(runs, setting, R.SFT_KD),
        "epochs_control": _epochs(runs, setting, R.EQUAL_COMPUTE),
    }
    out = []
    for contrast in (c for c in CONTRASTS if c.key in LEADS):
        rec = contrast_test(runs, setting, contrast, method, "psnr", t_depth, s_depth)
        out.append(
            {
                **base,
                "quantity": contrast.key,
                "value": rec.get("mean_diff", math.nan),
                "ci_low": rec.get("ci_low", math.nan),
                "ci_high": rec.get("ci_high", math.nan),
                "p_value": rec.get("p_value", math.nan),
                "train_p": rec.get("train_p", math.nan),
                "n_units": rec.get("n_units", 0),
                "units": rec.get("units", ""),
            }
        )
    teacher = runs.find_seeds(setting, R.TEACHER, teacher_depth=t_depth)
    for quantity, (row, per_method, label) in GAPS.items():
        student = runs.find_seeds(setting, row, method if per_method else "", t_depth, s_depth)
        what = f"{setting.label()} teacher vs {label}{' ' + method if per_method else ''}"
        gap = paired_gap(runs, teacher, student, what)
        out.append(
            {
                **base,
                "quantity": quantity,
                "value": gap.gap,
                "ci_low": gap.low,
                "ci_high": gap.high,
                "p_value": math.nan,
                "n_units": gap.n_units,
                "units": "",
            }
        )
    return out


def _diff_cell(rec: dict[str, Any]) -> str:
    if math.isnan(rec["value"]):
        return MISSING
    if math.isnan(rec["ci_low"]):
        return f"{rec['value']:+.2f} (n={rec['n_units']}, no CI)"
    adj = rec.get("p_adjusted", math.nan)
    adjusted = "" if math.isnan(adj) else f" (Holm {adj:.3g})"
    return (
        f"{rec['value']:+.2f} [{rec['ci_low']:+.2f}, {rec['ci_high']:+.2f}], "
        f"{format_p(rec['p_value'])}{adjusted}, n={rec['n_units']}"
    )


def _gap_cell(rec: dict[str, Any]) -> str:
    if math.isnan(rec["value"]):
        return MISSING
    if math.isnan(rec["ci_low"]):
        return f"{rec['value']:.2f} (n={rec['n_units']})"
    return f"{rec['value']:.2f} [{rec['ci_low']:.2f}, {rec['ci_high']:.2f}]"


HEADER = ["Budget", "epochs", "Method", "SFT-KD − Std-KD (dB)", "SFT-KD − control (dB)"]
HEADER += [f"gap {label}" for _, _, label in GAPS.values()]


def budget_table(
    runs: StageRuns, student_depth: int | None = None, teacher_depth: int | None = None
) -> ReportTable:
    """One section per dataset × acceleration: a row per budget × KD method, then the tested
    trend verdicts."""
    depths = (teacher_depth or runs.teacher_depth(), student_depth or runs.student_depth())
    table = ReportTable("Budget study: SFT-KD's advantage against the training budget")
    table.notes = [
        runs.split_description(),
        "Budget = every stage's epochs × the scale (epochs: of the KD students and of the "
        "equal-compute control, a plain student trained for SFT + KD epochs). Δ = SFT-KD − "
        "baseline volume PSNR over units (as the paired-tests table; test subjects with folds): "
        "mean [95% CI], p (Wilcoxon) and (Holm …) its adjusted p over the family of every "
        "Δ cell of the section, n units. Gap = teacher − student PSNR (dB) [95% CI]; smaller = "
        "more of the gap closed.",
        RULE,
    ]
    blocks: dict[tuple[str, str], list[Setting]] = {}
    for s in runs.settings():
        blocks.setdefault((s.dataset, s.acceleration), []).append(s)
    for (dataset, acc), settings in blocks.items():
        settings = sorted(settings, key=lambda s: float(s.budget or 1))
        recs = {
            (st.budget, m): _point_records(runs, st, m, depths)
            for st in settings
            for m in runs.methods()
        }
        flat = [r for rs in recs.values() for r in rs]
        adjust_records(flat, lambda r: "leads" if r["quantity"] in LEADS else None)
        table.records += flat
        rows = []
        for (budget, method), rs in recs.items():
            by = {r["quantity"]: r for r in rs}
            setting = next(st for st in settings if st.budget == budget)
            rows.append(
                [f"{budget or 1}×", epochs_text(runs, setting), method_name(method)]
                + [_diff_cell(by[k]) for k in LEADS]
                + [_gap_cell(by[k]) for k in GAPS]
            )
        trends = _trends(runs, settings, recs, depths)
        judge_trends(list(trends.values()))
        label = Setting(dataset, acc).label()
        lines = [_verdict_line(m, k, t) for (m, k), t in trends.items()]
        table.records += [_trend_record(recs, m, k, t) for (m, k), t in trends.items()]
        table.summary += [f"budget study {label}: {line}" for line in lines]
        table.sections.append(Section(label, HEADER, rows, lead="  \n".join(lines)))
    return table


def _trends(runs: StageRuns, settings: list[Setting], recs: dict, depths: tuple) -> dict:
    """Per (method, lead) the points and the raw change test between the end budgets."""
    out = {}
    for method in runs.methods():
        for key, (_, sign) in LEADS.items():
            points = []
            for st in settings:
                r = next(x for x in recs[(st.budget, method)] if x["quantity"] == key)
                points.append(LeadPoint(r["budget"], sign * r["value"], *_signed_ci(r, sign)))
            contrast = next(c for c in CONTRASTS if c.key == key)
            ends = [
                contrast_pairs(runs, st, contrast, method, "psnr", *depths)
                for st in (settings[0], settings[-1])
            ]
            out[(method, key)] = trend_test(points, *ends, lead_sign=sign)
    return out


def _trend_record(recs: dict, method: str, key: str, trend: Trend) -> dict[str, Any]:
    any_point = next(iter(recs.values()))[0]
    t = trend.test
    return {
        "dataset": any_point["dataset"],
        "acceleration": any_point["acceleration"],
        "method": method,
        "budget": trend.points[-1].budget,
        "epochs_kd": None,
        "epochs_control": None,
        "quantity": f"change_{key}",
        "value": t.mean_diff if t else math.nan,
        "ci_low": t.ci_low if t else math.nan,
        "ci_high": t.ci_high if t else math.nan,
        "p_value": t.p_value if t else math.nan,
        "p_adjusted": t.p_adjusted if t else math.nan,
        "n_units": t.n_units if t else 0,
        "units": t.units if t else "",
        "verdict": trend.word,
    }


def _signed_ci(rec: dict[str, Any], sign: float) -> tuple[float, float]:
    low, high = sign * rec["ci_low"], sign * rec["ci_high"]
    return (min(low, high), max(low, high)) if not math.isnan(low) else (math.nan, math.nan)


PANELS = (
    ("sft_vs_std", "SFT-KD − Std-KD (dB)"),
    ("sft_vs_equal_compute", "SFT-KD − control (dB)"),
    ("gap", "teacher − student gap (dB)"),
)
GAP_COLOURS = {"gap_none": "#ff7f0e", "gap_std": "#7f7f7f", "gap_sft": "#2ca02c"}
GAP_COLOURS["gap_equal"] = "#9467bd"


def budget_figure(table: ReportTable, path: str | Path) -> Path:
    """``figures/budget.png``: :func:`budget_axes` saved."""
    import matplotlib.pyplot as plt

    fig = budget_axes(table)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def budget_axes(table: ReportTable):
    """Per dataset × acceleration a row of three panels against the budget: SFT-KD − Std-KD,
    SFT-KD − control (per method, 95% CI bars) and the gaps (no KD, Std-KD, SFT-KD, control; a
    line style per method). Points without a CI are hollow. Returns the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rec in table.records:
        if not str(rec["quantity"]).startswith("change_"):
            blocks.setdefault((rec["dataset"], rec["acceleration"]), []).append(rec)
    fig, axes = plt.subplots(len(blocks), 3, figsize=(13, 3.6 * len(blocks)), squeeze=False)
    for axrow, ((dataset, acc), recs) in zip(axes, blocks.items(), strict=True):
        methods = list(dict.fromkeys(r["method"] for r in recs))
        for ax, (key, ylabel) in zip(axrow, PANELS, strict=True):
            if key == "gap":
                for q, colour in GAP_COLOURS.items():
                    shared = not GAPS[q][1]
                    for j, m in enumerate(methods[:1] if shared else methods):
                        pts = [r for r in recs if r["quantity"] == q and r["method"] == m]
                        name = GAPS[q][2] + ("" if shared else f" ({method_name(m)})")
                        _series(ax, pts, name, colour, ("-", "--", ":", "-.")[j % 4])
                ax.axhline(0, color="black", lw=0.6)
            else:
                for j, m in enumerate(methods):
                    pts = [r for r in recs if r["quantity"] == key and r["method"] == m]
                    dx = 1.0 + 0.04 * (j - (len(methods) - 1) / 2)  # methods side by side
                    _series(ax, pts, method_name(m), f"C{j}", "-", dx)
                ax.axhline(0, color="black", lw=0.6)
            _budget_axis(ax, recs)
            ax.set_ylabel(ylabel)
            ax.set_title(f"{Setting(dataset, acc).label()}: {ylabel}", fontsize=9)
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _series(ax, pts: list[dict[str, Any]], name: str, colour: str, ls: str, dx: float = 1.0):
    """One line against the budget with 95% CI bars; points without a CI are hollow."""
    pts = sorted((p for p in pts if not math.isnan(p["value"])), key=lambda p: p["budget"])
    if not pts:
        ax.plot([], [], color=colour, ls=":", label=f"{name} (missing)")
        return
    x = [p["budget"] * dx for p in pts]
    ax.plot(x, [p["value"] for p in pts], color=colour, ls=ls, lw=1.3, label=name)
    for xi, p in zip(x, pts, strict=True):
        if math.isnan(p["ci_low"]):
            ax.plot(xi, p["value"], "o", mfc="white", color=colour)
            continue
        err = [[p["value"] - p["ci_low"]], [p["ci_high"] - p["value"]]]
        ax.errorbar(xi, p["value"], yerr=err, fmt="o", color=colour, capsize=3)


def _budget_axis(ax, recs: list[dict[str, Any]]) -> None:
    """Log-2 budget axis; each tick names the scale and the epochs of KD students / control."""
    ticks: dict[float, str] = {}
    for r in recs:
        kd, ctl = r["epochs_kd"], r["epochs_control"]
        epochs = f"\nKD {kd} / ctl {ctl} ep" if kd is not None or ctl is not None else ""
        ticks.setdefault(r["budget"], f"{r['budget']:g}×{epochs}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(ticks))
    ax.set_xticklabels([ticks[b] for b in sorted(ticks)], fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("budget scale (epochs of every stage ×)")
