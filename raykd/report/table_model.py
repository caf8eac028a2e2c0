"""The table model every report table shares: cells, sections, Markdown and CSV rendering,
and the display conventions (decimals, which way is better, method names, the legend).

A cell whose run is missing shows "—" (and a :class:`~raykd.report.ReportWarning` names it); a
cell missing some seeds pools the others and is marked ‡; a cell that does not apply (the
zero-filled image has no SFT-KD variant) is blank. Numbers are never zeroed or dropped. Every
table is written as Markdown (for reading) and as a tidy CSV (unrounded, for analysis).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

MISSING = "—"
NOT_APPLICABLE = ""
DECIMALS = {"psnr": 2, "ssim": 4, "nmse": 4, "hfn": 4, "hfen": 4, "vif": 4}
HIGHER_IS_BETTER = {
    "psnr": True,
    "ssim": True,
    "vif": True,
    "nmse": False,
    "hfn": False,
    "hfen": False,
}
METHOD_NAMES = {
    "at": "AT",
    "fitnets": "FitNets",
    "fsp": "FSP",
    "sp": "SP",
    "cc": "CC",
    "pkt": "PKT",
    "nst": "NST",
    "ft": "FT",
}
FRAMEWORKS = {"std": "Std-KD", "sft": "SFT-KD"}
PARTIAL = "‡"
LEGEND = (
    f"{MISSING} = run missing (see the warnings); {PARTIAL} = some seeds missing, the others "
    "pooled; blank = not applicable."
)
SEED_NOTE = (
    "Several seeds: mean over seeds of the per-seed volume means ± sample std over seeds "
    "(± sample std over all seed × volume values, 'vol.')."
)
EQUAL_COMPUTE = "Student, equal compute"


def method_name(method: str) -> str:
    return METHOD_NAMES.get(method, method.upper())


@dataclass
class Cell:
    """One table value: mean ± std over ``n`` volumes of run ``run_id``.

    Pooled over seeds (``pooled``): ``mean`` is the mean of the per-seed volume means, ``std``
    their sample std over seeds (``std_seeds``) and ``std_volumes`` the sample std over all
    seed × volume values; ``partial`` when some of the setting's seeds have no run.
    """

    mean: float = math.nan
    std: float = math.nan
    n: int = 0
    run_id: str = ""
    status: str = "ok"  # ok | missing | n/a
    best: bool = False
    pooled: bool = False
    seeds: tuple[str, ...] = ()
    std_seeds: float = math.nan
    std_volumes: float = math.nan
    partial: bool = False

    @property
    def std_over(self) -> str:
        return "seeds" if self.pooled else "volumes"

    def text(self, metric: str) -> str:
        if self.status == "missing":
            return MISSING
        if self.status == "n/a":
            return NOT_APPLICABLE
        if math.isnan(self.mean):  # e.g. VIF below 41 px: the metric is undefined, not lost
            return "undefined"
        d = DECIMALS.get(metric, 4)
        if not self.pooled:
            body = f"{self.mean:.{d}f} ± {self.std:.{d}f}"
            return f"**{body}**" if self.best else body
        spread = "n/a" if math.isnan(self.std_seeds) else f"{self.std_seeds:.{d}f}"
        body = f"{self.mean:.{d}f} ± {spread}"
        body = f"**{body}**" if self.best else body
        mark = PARTIAL if self.partial else ""
        return f"{body} (vol. ± {self.std_volumes:.{d}f}){mark}"


@dataclass
class Section:
    heading: str
    header: list[str]
    rows: list[list[str]]
    lead: str = ""


@dataclass
class ReportTable:
    """A table as Markdown sections (one per setting) plus its tidy numbers for CSV."""

    title: str
    sections: list[Section] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)

    @property
    def frame(self) -> pd.DataFrame:
        return pd.DataFrame.from_records(self.records)

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        out += [*(f"{n}  " for n in self.notes), ""] if self.notes else []
        for s in self.sections:
            out += [f"## {s.heading}", ""]
            if s.lead:
                out += [s.lead, ""]
            out.append("| " + " | ".join(s.header) + " |")
            out.append("|" + "|".join("---" for _ in s.header) + "|")
            out += ["| " + " | ".join(r) + " |" for r in s.rows]
            out.append("")
        return "\n".join(out)

    def write(self, out_dir: str | Path, stem: str, csv: bool = True) -> list[Path]:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        md = out_dir / f"{stem}.md"
        md.write_text(self.markdown())
        paths = [md]
        if csv:
            path = out_dir / f"{stem}.csv"
            self.frame.to_csv(path, index=False)
            paths.append(path)
        return paths
