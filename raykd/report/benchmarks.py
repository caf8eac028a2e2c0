"""Benchmark runs as the report reads them: the latest ``raykd.role=benchmark`` run's per-depth
latency, parameter counts and speed-up (keys: :mod:`raykd.tracking.schema`).

Measuring is :mod:`raykd.deploy.latency`'s job; this module only reads what it logged.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from raykd.report.store import search_all
from raykd.tracking import schema as S


@dataclass
class Benchmark:
    """The numbers of one benchmark run, as Table 8 uses them."""

    run_id: str
    device: str
    size: str
    batch: str
    repeats: str
    cascades: str
    channels: str
    start_time: int
    by_depth: dict[int, dict[str, float]] = field(default_factory=dict)
    speedup: float | None = None  # D3 vs D5 per slice, when both were measured

    def median_ms(self, depth: int, cascades: int, channels: int) -> float | None:
        """The measured latency of exactly this architecture, or None if it was not measured
        (another channel or cascade count is a different network, not a stand-in)."""
        if (str(cascades), str(channels)) != (str(self.cascades), str(self.channels)):
            return None
        rec = self.by_depth.get(int(depth))
        return float(rec["median_ms"]) if rec else None

    def params(self, depth: int, cascades: int, channels: int) -> int | None:
        """The parameter count the benchmark logged for exactly this DC-CNN, or None."""
        if (str(cascades), str(channels)) != (str(self.cascades), str(self.channels)):
            return None
        value = self.by_depth.get(int(depth), {}).get("params", math.nan)
        return None if math.isnan(value) else int(value)

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.start_time / 1000))
        return (
            f"Latency: median per-slice inference time over {self.repeats} repeats, batch "
            f"{self.batch}, {self.size}x{self.size}, C{self.cascades}, {self.channels} channels, "
            f"on {self.device} "
            f"(benchmark run {self.run_id}, {when})."
        )


def latest_benchmark(client, experiment_ids: list[str] | None = None) -> Benchmark | None:
    """The newest finished benchmark run, preferring ``experiment_ids``, else any experiment."""
    flt = f"tags.`{S.TAG_ROLE}` = 'benchmark' and attributes.status = 'FINISHED'"
    runs = search_all(client, experiment_ids, flt) if experiment_ids else []
    if not runs:
        all_ids = [e.experiment_id for e in client.search_experiments()]
        runs = search_all(client, all_ids, flt) if all_ids else []
    if not runs:
        return None
    run = max(runs, key=lambda r: r.info.start_time or 0)
    by_depth: dict[int, dict[str, float]] = {}
    metrics = run.data.metrics
    for key, value in metrics.items():
        if key.startswith(S.LATENCY_MS):
            d = int(key.removeprefix(S.LATENCY_MS))
            by_depth[d] = {
                "median_ms": value,
                "p10_ms": metrics.get(f"{S.LATENCY_P10}{d}", math.nan),
                "p90_ms": metrics.get(f"{S.LATENCY_P90}{d}", math.nan),
                "params": metrics.get(f"{S.BENCH_PARAMS}{d}", math.nan),
            }
    p = run.data.params
    return Benchmark(
        run_id=run.info.run_id,
        device=p.get("device", "?"),
        size=p.get("size", "?"),
        batch=p.get("batch", "?"),
        repeats=p.get("repeats", "?"),
        cascades=p.get("cascades", "?"),
        channels=p.get("channels", "?"),
        start_time=run.info.start_time or 0,
        by_depth=by_depth,
        speedup=metrics.get(S.SPEEDUP),
    )
