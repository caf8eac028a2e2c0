"""Accuracy parity: the same D5C5 teacher trained in fp32 and in raykd's fast default.

    python benchmarks/precision_parity.py                       # 3 seeds, 10 epochs, 24 sl/vol
    python benchmarks/precision_parity.py --fast-precision bf16 # force bf16 (e.g. on AVX2)

For each seed, both runs use the same seed, data (Sunnybrook 4x with the paper's 150x150 mask from
$RAYKD_SHARED_DATA, train 0101/0201/0301, validate 0401, ``--max-slices`` evenly spaced slices
per volume), and budget, on this machine's device (its GPU where there is one). The "fast" run
is the stage config's defaults (``precision: auto``,
``channels_last: auto``) — what a user gets — unless ``--fast-precision`` forces one; where
``auto`` is fp32 (AVX2) the script says so and forces bf16, which runs (slowly) on any CPU.
The best checkpoint of each run is evaluated on the validation volume in fp32, as every
stage's final metrics are (``final_val_psnr``/``ssim``). Results go to
benchmarks/results/precision_parity_<device class>.json (``cpu-amx``, ``cuda-<GPU model>``: a
GPU's result never overwrites a CPU's).

Verdict: the mean over seeds of (fast − fp32) validation PSNR must be within ±0.1 dB. One seed
is not enough: after 10 epochs the two runs follow different trajectories (bf16 rounding acts
like a different seed), so a single difference mixes precision with run-to-run variation; the
report gives the per-seed differences, their spread and fp32's own spread over seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raykd.paths import shared_data_dir  # noqa: E402
from raykd.train.config import load_config  # noqa: E402
from raykd.train.evaluate import evaluate_model  # noqa: E402
from raykd.train.loop import Trainer  # noqa: E402
from raykd.train.precision import (  # noqa: E402
    cpu_capability,
    device_label,
    pick_device,
    resolve_path,
)
from raykd.train.stages import load_model  # noqa: E402


def train_and_evaluate(over: list[str]) -> dict:
    cfg = load_config(None, over)
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    result = trainer.fit()
    wall = time.perf_counter() - t0
    model = load_model(result.best_checkpoint, part="teacher").to(trainer.device)
    report = evaluate_model(model, trainer.datasets["val"], trainer.device, progress=False)
    summary = {k: v[0] for k, v in report["summary"].items()}
    best = result.history[result.best_epoch]
    return {
        "val_psnr": summary["psnr"],
        "val_ssim": summary["ssim"],
        "loop_val_psnr": best["val/psnr"],
        "best_epoch": result.best_epoch + 1,
        "train_s": wall,
        "compute_path": trainer.path.as_params(),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--max-slices", type=int, default=24, help="evenly spaced slices per volume")
    p.add_argument("--seed", type=int, default=42, help="first seed")
    p.add_argument("--seeds", type=int, default=3, help="seeds (fp32 and fast run per seed)")
    p.add_argument("--fast-precision", choices=["bf16", "fp16"], help="default: raykd's auto")
    p.add_argument("--out", help="default benchmarks/results/precision_parity_<class>.json")
    args = p.parse_args()
    if not (shared_data_dir() / "sunnybrook").is_dir():
        print(f"shared Sunnybrook data not found under {shared_data_dir()} (RAYKD_SHARED_DATA)")
        return 2
    common = [
        "kind=teacher",
        "teacher.depth=5",
        "teacher.cascades=5",
        "data.source=sunnybrook",
        "data.train=[0101,0201,0301]",
        "data.val=[0401]",
        "data.size=[150,150]",
        "data.mask.kind=file",
        "data.mask.path=shared:masks/cardiac_150/mask_4x.npy",
        f"data.max_slices_per_volume={args.max_slices}",
        f"optim.epochs={args.epochs}",
        "progress=false",
        "resume=false",
    ]
    fast_over: list[str] = []
    note = "raykd defaults (precision auto, channels_last auto)"
    if args.fast_precision:
        fast_over, note = [f"precision={args.fast_precision}"], f"forced {args.fast_precision}"
    elif resolve_path("auto", "auto", pick_device("auto")).precision == "fp32":
        fast_over, note = ["precision=bf16"], "auto is fp32 on this machine; bf16 forced"
    load = [round(x, 2) for x in os.getloadavg()]
    label = device_label(pick_device("auto"))
    print(f"device {label}, fast run: {note}, load average {load}", flush=True)
    import statistics
    import tempfile

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seed, args.seed + args.seeds):
            pair = {"seed": seed}
            for name, extra in (
                ("fp32", ["precision=fp32", "channels_last=false"]),
                ("fast", fast_over),
            ):
                over = [*common, f"seed={seed}", *extra, f"output_dir={tmp}/{seed}/{name}"]
                r = pair[name] = train_and_evaluate(over)
                r["overrides"] = extra
                print(
                    f"seed {seed} {name}: val PSNR {r['val_psnr']:.3f} dB, SSIM "
                    f"{r['val_ssim']:.4f} (best epoch {r['best_epoch']}, {r['train_s']:.0f}s, "
                    f"{r['compute_path']['compute.precision']}/"
                    f"{r['compute_path']['compute.memory_format']})",
                    flush=True,
                )
            pair["diff_db"] = pair["fast"]["val_psnr"] - pair["fp32"]["val_psnr"]
            pair["diff_ssim"] = pair["fast"]["val_ssim"] - pair["fp32"]["val_ssim"]
            runs.append(pair)
    diffs = [r["diff_db"] for r in runs]
    diff = statistics.fmean(diffs)
    diff_ssim = statistics.fmean(r["diff_ssim"] for r in runs)
    sd = statistics.stdev(diffs) if len(diffs) > 1 else None
    fp32_sd = statistics.stdev(r["fp32"]["val_psnr"] for r in runs) if len(runs) > 1 else None
    verdict = "PASS" if abs(diff) <= 0.1 else "FAIL"
    spread = f", sd {sd:.3f} dB over seeds; fp32 alone sd {fp32_sd:.3f} dB" if sd else ""
    print(
        f"mean difference over {len(runs)} seed(s) {diff:+.3f} dB PSNR{spread}, "
        f"{diff_ssim:+.4f} SSIM: {verdict} (|mean dPSNR| <= 0.1 dB)"
    )
    out = Path(args.out or Path(__file__).parent / "results" / f"precision_parity_{label}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    setup = {
        "data": "sunnybrook 4x (paper mask), 150x150, train 0101/0201/0301, val 0401",
        "max_slices_per_volume": args.max_slices,
        "epochs": args.epochs,
        "seeds": list(range(args.seed, args.seed + args.seeds)),
        "model": "D5C5, 32 channels",
        "fast": note,
        "cpu_capability": cpu_capability(),
        "device": label,
        "load_average_before": load,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    out.write_text(
        json.dumps(
            {
                "setup": setup,
                "runs": runs,
                "diff_db": diff,
                "diff_db_per_seed": diffs,
                "diff_db_sd": sd,
                "fp32_psnr_sd": fp32_sd,
                "diff_ssim": diff_ssim,
                "verdict": verdict,
            },
            indent=1,
        )
    )
    print(f"wrote {out}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
