"""Training-step throughput: raykd's configured step vs a plain fp32 NCHW PyTorch loop.

    python benchmarks/train_step.py                 # all cases, default precision per device
    python benchmarks/train_step.py --cases d5c5_240 --repeats 5 --precision bf16

For each case (D5C5 teacher at 240x240, D3C5 at 150x150, an SFT step, a KD step with the
teacher forward) both steps run in this process on the same shapes: warm-up, then several
timed repeats; the table shows median slices/s, the ratio, achieved GFLOP/s (FLOPs counted by
torch's FlopCounterMode) and peak memory. Results go to benchmarks/results/train_step_<dev>.json.
"""

from __future__ import annotations

import argparse
import json
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


def raykd_step(
    case: dict,
    device: torch.device,
    precision: str,
    channels_last: bool,
    tmp: Path,
    compile_: bool = False,
):
    over = [
        f"compile={str(compile_).lower()}",
        f"kind={case['kind']}",
        f"teacher.depth={case['teacher']}",
        f"student.depth={case['student']}",
        f"precision={precision}",
        f"channels_last={str(channels_last).lower()}",
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
        over += [f"teacher_checkpoint={path}", "kd.method=at"]
    trainer = Trainer(load_config(None, over), datasets={})
    cl = channels_last

    def step(x, y, m, t):
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        return trainer.step(x, y, m, t)[0]

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(step, inputs, device, warmup: int, repeats: int, steps: int) -> list[float]:
    for _ in range(warmup):
        step(*inputs)
    sync(device)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = step(*inputs)
        loss.item()  # one host sync per repeat, as a training epoch would have
        sync(device)
        rates.append(steps * inputs[0].shape[0] / (time.perf_counter() - t0))
    return rates


def flops_per_slice(step, inputs) -> float:
    with FlopCounterMode(display=False) as counter:
        step(*inputs)
    return counter.get_total_flops() / inputs[0].shape[0]


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--channels-last", action="store_true", help="raykd step in channels-last")
    p.add_argument("--compile", action="store_true", help="raykd step under torch.compile")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="steps per timed repeat")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", help="results JSON (default benchmarks/results/train_step_<dev>.json)")
    args = p.parse_args()
    device = torch.device(args.device)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases:
            case = CASES[name]
            inputs = batch(case["size"], args.batch, device)
            torch.manual_seed(0)
            base = baseline_step(case, device)
            fast = raykd_step(
                case, device, args.precision, args.channels_last, Path(tmp), args.compile
            )
            flops = flops_per_slice(base, inputs)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            base_rates = measure(base, inputs, device, args.warmup, args.repeats, args.steps)
            base_mem = peak_mb(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            fast_rates = measure(fast, inputs, device, args.warmup, args.repeats, args.steps)
            b, f = statistics.median(base_rates), statistics.median(fast_rates)
            row = {
                "case": name,
                "baseline_slices_s": b,
                "raykd_slices_s": f,
                "ratio": f / b,
                "gflop_per_slice": flops / 1e9,
                "baseline_gflops": b * flops / 1e9,
                "raykd_gflops": f * flops / 1e9,
                "peak_mem_mb": peak_mb(device),
                "baseline_peak_mem_mb": base_mem,
                "repeats": {"baseline": base_rates, "raykd": fast_rates},
            }
            results.append(row)
            print(
                f"{name:10s} baseline {b:7.2f} sl/s  raykd {f:7.2f} sl/s  x{f / b:4.2f}  "
                f"{row['raykd_gflops']:7.1f} GFLOP/s  peak {row['peak_mem_mb']:.0f} MB",
                flush=True,
            )
    meta = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name()
        if device.type == "cuda"
        else platform.processor(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "precision": args.precision,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "batch": args.batch,
    }
    out = Path(args.out or Path(__file__).parent / "results" / f"train_step_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
