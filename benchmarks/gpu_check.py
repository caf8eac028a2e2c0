"""The GPU check: what a first GPU user must know about raykd on their GPU, in at most 10 minutes.

    python benchmarks/gpu_check.py                 # on a machine with one (or more) CUDA GPUs
    python benchmarks/gpu_check.py --budget-s 300  # a shorter run: later steps are skipped

Steps (each timed, each recorded even when it fails; a step that would start after the budget
is recorded as skipped), all on ``cuda:0`` with synthetic phantom volumes written here:

1. ``train_step``: ms per training step of a D5C5 32-channel teacher (150 x 150, batch 4) at
   raykd's default precision (``auto``: bf16 on GPUs with native bf16, else fp16 + GradScaler)
   and at fp32 (TF32 off), after warm-up steps, with ``torch.cuda.synchronize`` before the
   clock starts and before it stops.
2. ``parity``: the same D3C5 student stage (same seed, data, epochs) trained at fp32 and at the
   default precision; validation PSNR of each best checkpoint, evaluated in fp32, and the
   difference.
3. ``smoke_grid``: ``raykd grid --preset smoke`` on these volumes on a private local Ray (the
   job's own Ray Train runs on the GPU): return code, wall-clock, the device every stage
   recorded.
4. ``packing``: four student stages with ``--gpus-per-worker 0.25`` trained in their trials'
   processes: the most that ran at once (from their recorded start and end times) and the GPU
   each one used.
5. ``kill_resume``: ``raykd train`` of one stage, SIGKILLed after its second epoch, then the
   same command again: the epoch it resumed at and whether every epoch is recorded once.
6. ``latency``: per-slice inference latency of D3C5 and D5C5 at 240 x 240 (median of 50
   synchronised passes after 10 warm-up passes) and the speed-up.

The result is one JSON file, ``benchmarks/results/gpu_check_cuda-<GPU model>.json`` (named by
the device: a CPU result is never overwritten). On a machine without CUDA it prints one line,
writes nothing and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def no_cuda_line() -> str | None:
    """The one line said where there is no CUDA device; None where there is one."""
    import torch

    if torch.cuda.is_available():
        return None
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    seen = os.environ.get("CUDA_VISIBLE_DEVICES")
    hidden = f", CUDA_VISIBLE_DEVICES={seen!r}" if seen is not None else ""
    return (
        f"gpu_check: no CUDA device on this machine (torch {torch.__version__}, {build}"
        f"{hidden}); nothing measured, nothing written"
    )


def phantoms(folder: Path, volumes: int = 4, slices: int = 12, size: int = 150) -> Path:
    """Smooth random blobs in raykd's h5 layout (the suite's phantoms, at the cardiac size)."""
    import numpy as np

    from raykd.data.volumes import write_volume

    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for v in range(volumes):
        rng = np.random.default_rng(v)
        vol = np.zeros((slices, size, size), dtype=np.float32)
        for i in range(slices):
            for _ in range(4):
                cy, cx = rng.uniform(0.25, 0.75, 2)
                r = rng.uniform(0.08, 0.25)
                vol[i] += rng.uniform(0.3, 1.0) * (((yy - cy) ** 2 + (xx - cx) ** 2) < r**2)
        write_volume(folder / f"vol{v}.h5", vol * 300, attrs={"patient_id": v})
    return folder


def stage_overrides(data: Path, out: Path, kind: str, depth: int, **extra) -> list[str]:
    """A stage config on the phantoms: 3 training volumes, the 4th validates, 4x Cartesian."""
    role = "teacher" if kind == "teacher" else "student"
    base = {
        "kind": kind,
        "data.source": str(data),
        "data.train": "[vol0, vol1, vol2]",
        "data.val": "[vol3]",
        "data.size": "[150, 150]",
        "data.batch_size": "4",
        f"{role}.depth": str(depth),
        f"{role}.cascades": "5",
        f"{role}.channels": "32",
        "device": "cuda:0",
        "progress": "false",
        "output_dir": str(out),
    }
    base.update({k.replace("__", "."): str(v) for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]


def train_step(work: Path, data: Path) -> dict:
    """Synchronised ms per training step at the default precision and at fp32."""
    import torch

    from raykd.train.config import load_config
    from raykd.train.loop import Trainer

    out: dict = {"model": "teacher D5C5, 32 channels, 150x150, batch 4", "warmup": 5, "steps": 20}
    for precision in ("auto", "fp32"):
        over = stage_overrides(data, work / f"step-{precision}", "teacher", 5, precision=precision)
        trainer = Trainer(load_config(None, over))
        batch = trainer._batch(next(iter(trainer._loader(trainer.datasets["train"]))))
        for _ in range(out["warmup"]):
            trainer.step(*batch)
        torch.cuda.synchronize(trainer.device)  # the warm-up's kernels end before the clock
        t0 = time.perf_counter()
        for _ in range(out["steps"]):
            trainer.step(*batch)
        torch.cuda.synchronize(trainer.device)  # the timed kernels end before it stops
        ms = (time.perf_counter() - t0) * 1000 / out["steps"]
        out[precision] = {"ms_per_step": ms, **trainer.path.as_params()}
    out["speedup_default_over_fp32"] = out["fp32"]["ms_per_step"] / out["auto"]["ms_per_step"]
    return out


def parity(work: Path, data: Path, epochs: int = 5) -> dict:
    """Validation PSNR (fp32 evaluation) of one student stage trained at fp32 and at auto."""
    from raykd.train.config import load_config
    from raykd.train.evaluate import evaluate_model
    from raykd.train.loop import Trainer
    from raykd.train.stages import load_model

    out: dict = {"stage": f"student D3C5, 32 channels, 150x150, {epochs} epochs, seed 42"}
    for precision in ("fp32", "auto"):
        over = stage_overrides(
            data, work / f"parity-{precision}", "student", 3, precision=precision
        )
        over += [f"optim.epochs={epochs}", "seed=42", "resume=false"]
        trainer = Trainer(load_config(None, over))
        result = trainer.fit()
        model = load_model(result.best_checkpoint, part="student").to(trainer.device)
        report = evaluate_model(model, trainer.datasets["val"], trainer.device, progress=False)
        out[precision] = {
            "val_psnr": report["summary"]["psnr"][0],
            "best_epoch": result.best_epoch + 1,
            **trainer.path.as_params(),
        }
    out["diff_db"] = out["auto"]["val_psnr"] - out["fp32"]["val_psnr"]
    return out


def _cli(args: list[str], timeout: float, **popen) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "raykd.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **popen)


def _results(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.glob("stages/*/result.json"))]


def smoke_grid(work: Path, data: Path, timeout: float) -> dict:
    """``raykd grid --preset smoke`` on a private local Ray: the job's stages on the GPU."""
    root = work / "smoke"
    grid = ["grid", "--preset", "smoke", "--datasets", str(data), "--size", "64", "64"]
    t0 = time.perf_counter()
    done = _cli([*grid, "--root", str(root), "--address", "local"], timeout)
    stages = _results(root)
    return {
        "rc": done.returncode,
        "wall_s": time.perf_counter() - t0,
        "stages": len(stages),
        "devices": sorted({s["compute"]["compute.device"] for s in stages}),
        "precisions": sorted({s["compute"]["compute.precision"] for s in stages}),
        "resources_line": next((x for x in done.stderr.splitlines() if "resources:" in x), ""),
        "stderr_tail": done.stderr[-1500:] if done.returncode else "",
    }


def peak_concurrency(spans: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end before a start at the same time)."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    peak = running = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def packing(work: Path, data: Path, timeout: float) -> dict:
    """Four student stages at 0.25 GPU each, trained in their trials' processes."""
    root = work / "packing"
    grid = ["grid", "--preset", "smoke", "--datasets", str(data), "--size", "150", "150"]
    grid += ["--rows", "student", "--seeds", "4", "--trial-unit", "row", "--epochs", "30"]
    grid += ["--gpus-per-worker", "0.25", "--local-train", "--address", "local"]
    t0 = time.perf_counter()
    done = _cli([*grid, "--root", str(root)], timeout)
    stages = _results(root)
    spans = [(s["started_at"], s["finished_at"]) for s in stages]
    return {
        "rc": done.returncode,
        "wall_s": time.perf_counter() - t0,
        "stages": len(stages),
        "peak_concurrency": peak_concurrency(spans) if spans else 0,
        "spans_s": [(round(a - min(spans)[0], 1), round(b - min(spans)[0], 1)) for a, b in spans],
        "devices": sorted({s["compute"]["compute.device"] for s in stages}),
        "resources_line": next((x for x in done.stderr.splitlines() if "resources:" in x), ""),
        "stderr_tail": done.stderr[-1500:] if done.returncode else "",
    }


def kill_resume(work: Path, data: Path, timeout: float, epochs: int = 20) -> dict:
    """SIGKILL ``raykd train`` after its second epoch, rerun it: where it resumed."""
    out_dir = work / "resume"
    sets = stage_overrides(data, out_dir, "student", 3, optim__epochs=epochs)
    cmd = ["train", *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, "-m", "raykd.cli", *cmd], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    metrics = out_dir / "metrics.jsonl"
    deadline = time.time() + timeout / 2
    while time.time() < deadline and first.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    killed_after = len(metrics.read_text().splitlines()) if metrics.is_file() else 0
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = _cli(cmd, timeout / 2)
    epochs_seen = [json.loads(x)["epoch"] for x in metrics.read_text().splitlines()]
    resumed = [x for x in second.stderr.splitlines() if "resumed from" in x]
    return {
        "rc": second.returncode,
        "killed_after_epochs": killed_after,
        "resumed_line": resumed[0] if resumed else "",
        "epochs_recorded": epochs_seen,
        "each_epoch_once": epochs_seen == list(range(1, epochs + 1)),
    }


def latency() -> dict:
    """Per-slice inference latency (synchronised, median of 50) of D3C5 and D5C5 at 240 px."""
    from raykd.deploy.latency import benchmark_inference, speedup

    rows = benchmark_inference((3, 5), size=240, batch=1, device="cuda:0", repeats=50, warmup=10)
    keep = ("depth", "median_ms", "p10_ms", "p90_ms", "precision", "memory_format", "device")
    return {"rows": [{k: r[k] for k in keep} for r in rows], "speedup_d3_over_d5": speedup(rows)}


def run_steps(work: Path, data: Path, budget_s: float) -> dict:
    """Every step in order, each timed; one past the budget is skipped, a failure recorded."""
    t0 = time.perf_counter()
    steps = {
        "train_step": lambda left: train_step(work, data),
        "parity": lambda left: parity(work, data),
        "smoke_grid": lambda left: smoke_grid(work, data, left),
        "packing": lambda left: packing(work, data, left),
        "kill_resume": lambda left: kill_resume(work, data, left),
        "latency": lambda left: latency(),
    }
    out: dict = {}
    for name, step in steps.items():
        left = budget_s - (time.perf_counter() - t0)
        if left < 20:
            out[name] = {"skipped": f"budget of {budget_s:.0f} s used"}
            continue
        start = time.perf_counter()
        try:
            out[name] = step(left)
        except Exception as exc:  # noqa: BLE001 - a check records what failed and goes on
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
        out[name]["step_s"] = round(time.perf_counter() - start, 1)
        print(f"gpu_check: {name} {json.dumps(out[name])[:300]}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--budget-s", type=float, default=540, help="seconds for all steps")
    p.add_argument("--out", help="result file (default: benchmarks/results/gpu_check_<device>)")
    args = p.parse_args(argv)
    if line := no_cuda_line():
        print(line)
        return 0
    import torch

    from raykd.train.precision import device_label

    device = torch.device("cuda", 0)
    label = device_label(device)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="raykd-gpu-check-") as tmp:
        data = phantoms(Path(tmp) / "data")
        steps = run_steps(Path(tmp), data, args.budget_s)
    result = {
        "device": label,
        "device_name": torch.cuda.get_device_name(device),
        "gpus_visible": torch.cuda.device_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "bf16_native": torch.cuda.is_bf16_supported(including_emulation=False),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_s": round(time.time() - started, 1),
        "steps": steps,
    }
    out = Path(args.out or REPO / "benchmarks" / "results" / f"gpu_check_{label}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"gpu_check: wrote {out} ({result['wall_s']:.0f} s)")
    failed = [k for k, v in steps.items() if "error" in v or v.get("rc", 0) != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
