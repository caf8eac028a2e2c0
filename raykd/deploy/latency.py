"""Per-slice inference latency of DC-CNN per depth (the paper's Table 8 column), measured and
logged as a benchmark run (``raykd.role=benchmark``; the report reads it, never measures).

Timing rules: the model and inputs are on the device before the clock starts, ``warmup``
untimed passes absorb lazy initialisation (cuDNN autotuning, allocator growth, thread pools),
every timed pass ends with ``torch.cuda.synchronize()`` on GPU (kernels are asynchronous, so
without it the clock measures the launch, not the work), and the report is the median of
``repeats`` passes (robust to the odd scheduler hiccup) with p10/p90 for spread. Times are per
slice: a batch's time divided by the batch size. Inputs go through the real forward model, so
the data-consistency FFTs are timed too. Precision and memory format follow the training policy
(``precision: auto`` — bf16 autocast on CUDA with bf16 and on AMX / AVX512-BF16 CPUs, fp32
elsewhere; the DC layers stay fp32), so the latency is that of the path raykd would use.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raykd.errors import RaykdError
from raykd.tracking import schema as S


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def _inputs(size: int, batch: int, acceleration: float, device: torch.device):
    from raykd.data.masks import CartesianMask
    from raykd.data.transforms import undersample

    gen = torch.Generator().manual_seed(0)  # private generator: global RNG untouched
    target = torch.rand(batch, 1, size, size, generator=gen)
    n_keep = int(size / acceleration)
    num_low = max(0, min(10, n_keep) // 2 * 2)
    mask = CartesianMask(acceleration, seed=0, num_low=num_low)((size, size))
    mask_t = torch.from_numpy(mask)[None, None].expand(batch, 1, size, size).contiguous()
    zero_filled, y = undersample(target, mask_t)
    return zero_filled.to(device), y.to(device), mask_t.to(device)


def benchmark_inference(
    depths: tuple[int, ...] | list[int] = (2, 3, 4, 5),
    cascades: int = 5,
    size: int = 240,
    batch: int = 1,
    device: str | torch.device = "auto",
    repeats: int = 50,
    warmup: int = 10,
    channels: int = 32,
    acceleration: float = 4.0,
    threads: int | None = None,
    precision: str = "auto",
    channels_last: bool | str = "auto",
) -> list[dict[str, Any]]:
    """Median per-slice inference time (ms) of ``DCCNN(depth, cascades, channels)`` per depth.

    Returns one dict per depth: depth, cascades, channels, params, size, batch, device,
    repeats, warmup, median_ms, p10_ms, p90_ms, mean_ms and the compute path (precision,
    memory_format, cpu_capability). ``threads`` sets torch's CPU threads
    for the measurement only (on a shared, oversubscribed CPU one thread is often faster and
    far steadier than several spinning OpenMP threads).
    """
    from raykd.train.precision import pick_device, resolve_path

    if repeats < 1 or warmup < 0 or batch < 1 or size < 8:
        raise RaykdError(
            f"benchmark: need repeats >= 1, warmup >= 0, batch >= 1, size >= 8; got repeats "
            f"{repeats}, warmup {warmup}, batch {batch}, size {size}"
        )
    dev = pick_device(str(device)) if not isinstance(device, torch.device) else device
    path = resolve_path(precision, channels_last, dev)
    saved_threads = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise RaykdError(f"benchmark: threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        return _measure(
            depths, cascades, channels, size, batch, dev, repeats, warmup, acceleration, path
        )
    finally:
        torch.set_num_threads(saved_threads)


def _measure(
    depths: tuple[int, ...] | list[int],
    cascades: int,
    channels: int,
    size: int,
    batch: int,
    dev: torch.device,
    repeats: int,
    warmup: int,
    acceleration: float,
    path,
) -> list[dict[str, Any]]:
    """The timing loop of :func:`benchmark_inference` (threads already set)."""
    from raykd.models.base import count_parameters
    from raykd.models.dccnn import DCCNN
    from raykd.train.precision import autocast

    zero_filled, y, mask = _inputs(size, batch, acceleration, dev)
    if path.channels_last:
        zero_filled = zero_filled.contiguous(memory_format=torch.channels_last)
    results = []
    for depth in depths:
        with torch.random.fork_rng(devices=[]):  # weights are irrelevant; RNG stays untouched
            torch.manual_seed(0)
            model = DCCNN(int(depth), cascades, channels).to(dev).eval()
        if path.channels_last:
            model = model.to(memory_format=torch.channels_last)
        times = []
        with torch.inference_mode(), autocast(dev, path.precision):
            for _ in range(warmup):
                model(zero_filled, y, mask)
            _sync(dev)
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(zero_filled, y, mask)
                _sync(dev)
                times.append(time.perf_counter() - t0)
        per_slice = np.asarray(times) * 1000.0 / batch
        results.append(
            {
                "depth": int(depth),
                "cascades": cascades,
                "channels": channels,
                "params": count_parameters(model),
                "size": size,
                "batch": batch,
                "device": device_name(dev),
                "repeats": repeats,
                "warmup": warmup,
                "median_ms": float(np.median(per_slice)),
                "p10_ms": float(np.percentile(per_slice, 10)),
                "p90_ms": float(np.percentile(per_slice, 90)),
                "mean_ms": float(np.mean(per_slice)),
                "precision": path.precision,
                "memory_format": path.memory_format,
                "cpu_capability": path.cpu_capability,
            }
        )
        del model
    return results


def log_benchmark(results: list[dict[str, Any]], tracking) -> str:
    """Log results as an MLflow run (``raykd.role=benchmark``); returns its run id."""
    if not results:
        raise RaykdError("benchmark: nothing to log (no depths were measured)")
    first = results[0]
    params = {k: first[k] for k in ("cascades", "channels", "size", "batch", "device", "repeats")}
    params |= {"warmup": first["warmup"], "depths": [r["depth"] for r in results]}
    if "precision" in first:
        params |= {
            "compute.device": first["device"],
            "compute.cpu_capability": first["cpu_capability"],
            "compute.precision": first["precision"],
            "compute.memory_format": first["memory_format"],
        }
    params["torch"] = torch.__version__
    run_id = tracking.start_run(
        name=f"benchmark-{first['device'].split(' ')[0]}",
        tags={S.TAG_ROLE: "benchmark", "raykd.device": first["device"]},
        params=params,
    )
    metrics: dict[str, float] = {}
    for r in results:
        d = r["depth"]
        metrics |= {
            f"{S.LATENCY_MS}{d}": r["median_ms"],
            f"{S.LATENCY_P10}{d}": r["p10_ms"],
            f"{S.LATENCY_P90}{d}": r["p90_ms"],
            f"{S.BENCH_PARAMS}{d}": r["params"],
        }
    if (ratio := speedup(results)) is not None:
        metrics[S.SPEEDUP] = ratio
    tracking.log_metrics(run_id, metrics)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "benchmark.json"
        path.write_text(json.dumps(results, indent=1))
        tracking.log_artifact(run_id, path)
    tracking.end_run(run_id)
    return run_id


def speedup(results: list[dict[str, Any]], fast: int = 3, slow: int = 5) -> float | None:
    """Per-slice speed-up of D{fast}Cm over D{slow}Cm (the paper: D3C5 2.6x faster than D5C5
    on a GPU); None unless both depths were measured."""
    by = {r["depth"]: r["median_ms"] for r in results}
    if fast in by and slow in by and by[fast] > 0:
        return by[slow] / by[fast]
    return None
