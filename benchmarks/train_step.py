"""Training-step throughput: raykd's DEFAULT step (no flags) vs a plain fp32 NCHW PyTorch loop.

    python benchmarks/train_step.py                       # all cases, what a user gets
    python benchmarks/train_step.py --cases d5c5_240 --set precision=fp32 --set channels_last=false

Prints the CPU capability class and the compute path raykd's defaults chose (precision: auto,
channels_last: auto). For each case (D5C5 teacher at 240x240, D3C5 at 150x150, an SFT step, a
KD step with the teacher forward) both steps run in this process on the same shapes: warm-up,
then interleaved timed repeats (plain, raykd, raykd, plain, ...); the table shows median
slices/s, the ratio and achieved GFLOP/s (FLOPs counted by torch's FlopCounterMode), and the
same per CPU second of this process (robust to other processes on a shared box). Results go
to benchmarks/results/train_step_<class>.json (cpu-amx, cpu-avx512_bf16, cpu-avx2,
cuda-<model>), with the load average before and after (other processes on a shared box skew
both sides); a run of some cases or with --set writes a file named after them instead of
replacing that one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raykd.data.masks import CartesianMask  # noqa: E402
from raykd.data.transforms import undersample  # noqa: E402
from raykd.models.dccnn import DCCNN  # noqa: E402
from raykd.models.sft import SFTModel  # noqa: E402
from raykd.models.taps import FeatureTaps  # noqa: E402
from raykd.train.checkpoint import save_checkpoint  # noqa: E402
from raykd.train.config import load_config  # noqa: E402
from raykd.train.loop import Trainer  # noqa: E402
from raykd.train.precision import (  # noqa: E402
    cpu_capability,
    cpu_has_amx,
    cpu_has_avx512_bf16,
    device_label,
)

CASES = {
    "d5c5_240": {"kind": "teacher", "size": 240, "teacher": 5, "student": 3},
    "d3c5_150": {"kind": "student", "size": 150, "teacher": 5, "student": 3},
    "sft_240": {"kind": "sft", "size": 240, "teacher": 5, "student": 3},
    "kd_240": {"kind": "kd", "size": 240, "teacher": 5, "student": 3},
}


def batch(size: int, n: int, device: torch.device):
    target = torch.rand(n, 1, size, size, device=device)
    mask = torch.from_numpy(CartesianMask(4, seed=0)((size, size))).to(device)
    zero_filled, y = undersample(target, mask)
    return zero_filled, y, mask, target


def baseline_step(case: dict, device: torch.device):
    """The plain loop, as the reference code does it: fp32, NCHW, Adam, L1."""
    teacher = DCCNN(case["teacher"], 5, residual=False).to(device)
    student = DCCNN(case["student"], 5, residual=False).to(device)
    kind = case["kind"]
    if kind == "teacher":
        params, fwd = teacher.parameters(), lambda x, y, m, t: F.l1_loss(teacher(x, y, m), t)
    elif kind == "student":
        params, fwd = student.parameters(), lambda x, y, m, t: F.l1_loss(student(x, y, m), t)
    elif kind == "sft":
        sft = SFTModel(teacher, student)
        params = sft.parameters()

        def fwd(x, y, m, t):
            out = sft(x, y, m)
            rec_s = sum(F.l1_loss(b, t) for b in out.branches) / len(out.branches)
            imit = sum(F.l1_loss(out.teacher, b) for b in out.branches) / len(out.branches)
            return F.l1_loss(out.teacher, t) + rec_s + imit
    else:
        teacher.eval().requires_grad_(False)
        params = student.parameters()

        def fwd(x, y, m, t):
            with (
                torch.no_grad(),
                FeatureTaps(teacher, [f"cascades.{c}.conv.2" for c in range(5)]) as tt,
            ):
                teacher(x, y, m)
            with FeatureTaps(student, [f"cascades.{c}.conv.1" for c in range(5)]) as st:
                out = student(x, y, m)
            kd = 0.0
            for c in range(5):
                qt = F.normalize(tt[f"cascades.{c}.conv.2"].pow(2).sum(1).flatten(1), dim=1)
                qs = F.normalize(st[f"cascades.{c}.conv.1"].pow(2).sum(1).flatten(1), dim=1)
                kd = kd + (qt - qs).norm(dim=1).mean()
            return F.l1_loss(out, t) + 1000.0 * kd / 5

    opt = torch.optim.Adam(params, lr=1e-3)

    def step(x, y, m, t):
        loss = fwd(x, y, m, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


def raykd_step(case: dict, device: torch.device, tmp: Path, over: list[str]):
    """raykd's training step as a user gets it: the stage config's defaults plus ``over``
    (empty by default: no precision, memory-format or compile flags)."""
    base = [
        f"kind={case['kind']}",
        f"teacher.depth={case['teacher']}",
        f"student.depth={case['student']}",
        f"device={device}",
        f"output_dir={tmp / case['kind']}",
        "progress=false",
        "resume=false",
    ]
    if case["kind"] == "kd":
        teacher = DCCNN(case["teacher"], 5)
        path = save_checkpoint(
            tmp / "teacher.pt",
            {"model": teacher.state_dict(), "arch": teacher.arch, "config": "{}"},
        )
        base += [f"teacher_checkpoint={path}", "kd.method=at"]
    trainer = Trainer(load_config(None, base + over), datasets={})
    cl = trainer.channels_last

    def step(x, y, m, t):
        if cl:  # as Trainer._batch does
            x = x.contiguous(memory_format=torch.channels_last)
        return trainer.step(x, y, m, t)[0]

    return step, trainer.path


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(step, inputs, device, steps: int) -> tuple[float, float]:
    """Slices per wall-clock second and per CPU second (this process, all threads) over
    ``steps`` steps (one host sync, as a training epoch has).

    On a shared, oversubscribed box the wall-clock rate measures the scheduler as much as the
    kernels; the CPU-time rate is what the step costs in CPU, whoever else runs (on an idle
    box wall ≈ CPU / threads).
    """
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        loss = step(*inputs)
    loss.item()
    sync(device)
    n = steps * inputs[0].shape[0]
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def measure_pair(base, fast, inputs, device, warmup: int, repeats: int, steps: int):
    """Interleaved repeats (plain, raykd, plain, raykd, ...): on a shared machine a busy
    spell slows both sides instead of one, so the ratio of medians stays fair."""
    for _ in range(warmup):
        base(*inputs)
        fast(*inputs)
    base_rates: list[tuple[float, float]] = []
    fast_rates: list[tuple[float, float]] = []
    for i in range(repeats):
        order = [(base, base_rates), (fast, fast_rates)]
        for step, rates in order if i % 2 == 0 else order[::-1]:
            rates.append(timed(step, inputs, device, steps))
    return base_rates, fast_rates


def flops_per_slice(step, inputs) -> float:
    with FlopCounterMode(display=False) as counter:
        step(*inputs)
    return counter.get_total_flops() / inputs[0].shape[0]


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def default_out(device: torch.device, capability: str, cases: list[str], over: list[str]) -> Path:
    """``results/train_step_<class>.json`` for a full run of the defaults; a run of some cases
    or with ``--set`` overrides gets a name of its own, so it never replaces the class's file."""
    cls = device_label(device) if device.type == "cuda" else f"cpu-{capability}"  # cuda-<model>
    name = f"train_step_{cls}"
    if list(cases) != list(CASES):
        name += "_" + "-".join(cases)
    if over:
        name += "_set-" + "-".join(o.replace("=", "_").replace("/", "_") for o in over)
    return Path(__file__).parent / "results" / f"{name}.json"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override the raykd step's stage config (e.g. precision=fp32, channels_last=false); "
        "default: none, i.e. raykd's defaults",
    )
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="steps per timed repeat")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--out",
        help="results JSON (default benchmarks/results/train_step_<device class>.json for all "
        "cases and no --set; a subset or overrides add their names)",
    )
    args = p.parse_args()
    device = torch.device(args.device)
    capability = cpu_capability()
    load_before = load_average()
    print(
        f"CPU capability: {capability} (ATen {torch.backends.cpu.get_cpu_capability()}, AMX "
        f"{cpu_has_amx()}, AVX512-BF16 {cpu_has_avx512_bf16()}), {torch.get_num_threads()} "
        f"threads, load average {load_before}",
        flush=True,
    )
    results, path = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases:
            case = CASES[name]
            inputs = batch(case["size"], args.batch, device)
            torch.manual_seed(0)
            base = baseline_step(case, device)
            fast, path = raykd_step(case, device, Path(tmp), args.set)
            if name == args.cases[0]:
                print(f"raykd default ({' '.join(args.set) or 'no flags'}): {path.describe()}")
            flops = flops_per_slice(base, inputs)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            base_rates, fast_rates = measure_pair(
                base, fast, inputs, device, args.warmup, args.repeats, args.steps
            )
            b = statistics.median(r[0] for r in base_rates)
            f = statistics.median(r[0] for r in fast_rates)
            bc = statistics.median(r[1] for r in base_rates)
            fc = statistics.median(r[1] for r in fast_rates)
            row = {
                "case": name,
                "baseline_slices_s": b,
                "raykd_slices_s": f,
                "ratio": f / b,
                "baseline_slices_per_cpu_s": bc,
                "raykd_slices_per_cpu_s": fc,
                "ratio_cpu_time": fc / bc,
                "gflop_per_slice": flops / 1e9,
                "baseline_gflops": b * flops / 1e9,
                "raykd_gflops": f * flops / 1e9,
                "repeats": {
                    "baseline": [r[0] for r in base_rates],
                    "raykd": [r[0] for r in fast_rates],
                    "baseline_per_cpu_s": [r[1] for r in base_rates],
                    "raykd_per_cpu_s": [r[1] for r in fast_rates],
                },
            }
            if device.type == "cuda":
                row["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
            results.append(row)
            print(
                f"{name:10s} plain fp32 {b:7.2f} sl/s  raykd {f:7.2f} sl/s  x{f / b:4.2f}  "
                f"({row['raykd_gflops']:.0f} vs {row['baseline_gflops']:.0f} GFLOP/s); per CPU "
                f"second {bc:.2f} vs {fc:.2f} sl  x{fc / bc:4.2f}; load {load_average()}",
                flush=True,
            )
    meta = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else cpu_name(),
        "cpu_capability": capability,
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "env": {k: os.environ[k] for k in ISA_ENV if k in os.environ},
        "compute_path": path.as_params() if path else None,
        "raykd_overrides": args.set,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "batch": args.batch,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "steps_per_repeat": args.steps,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    out = Path(args.out or default_out(device, capability, args.cases, args.set))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"load average after: {meta['load_average_after']}; wrote {out}")
    return 0


ISA_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "OMP_NUM_THREADS")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
