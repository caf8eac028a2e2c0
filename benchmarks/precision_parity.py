"""Accuracy parity: the same teacher trained in fp32 and in raykd's fast default.

    python benchmarks/precision_parity.py --epochs 3 --max-slices 40
    python benchmarks/precision_parity.py --fast-precision bf16    # force bf16 autocast

Both runs use the same seed, data (Sunnybrook 150x150 from $RAYKD_SHARED_DATA, else the
built-in MNI152), mask and budget; the validation PSNR of both and their difference are printed
and written to benchmarks/results/precision_parity.json. The fast default must stay within
0.1 dB of fp32.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raykd.paths import shared_data_dir  # noqa: E402
from raykd.train.config import load_config  # noqa: E402
from raykd.train.loop import train_stage  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-slices", type=int, default=40)
    p.add_argument("--fast-precision", default="auto", choices=["auto", "bf16", "fp16"])
    p.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "precision_parity.json")
    )
    args = p.parse_args()
    if (shared_data_dir() / "sunnybrook").is_dir():
        data = [
            "data.source=sunnybrook",
            "data.train=[0101,0201,0301]",
            "data.val=[0401]",
            "data.size=[150,150]",
            "data.mask.kind=file",
            "data.mask.path=shared:masks/cardiac_150/mask_4x.npy",
        ]
    else:
        data = ["data.source=mni152", "data.size=[240,240]"]
    common = [
        *data,
        "kind=teacher",
        f"optim.epochs={args.epochs}",
        "progress=false",
        f"data.max_slices_per_volume={args.max_slices}",
        "resume=false",
    ]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in (
            ("fp32", ["precision=fp32", "channels_last=false"]),
            ("fast", [f"precision={args.fast_precision}", "channels_last=true"]),
        ):
            cfg = load_config(None, [*common, *extra, f"output_dir={tmp}/{name}"])
            t0 = time.perf_counter()
            result = train_stage(cfg)
            best = min(result.history, key=lambda h: h["val/loss"])
            results[name] = {
                "val_psnr": best["val/psnr"],
                "val_loss": best["val/loss"],
                "wall_s": time.perf_counter() - t0,
                "config": extra,
            }
    diff = results["fast"]["val_psnr"] - results["fp32"]["val_psnr"]
    verdict = "PASS" if abs(diff) <= 0.1 else "FAIL"
    print(
        f"fp32 {results['fp32']['val_psnr']:.3f} dB ({results['fp32']['wall_s']:.0f}s)  "
        f"fast {results['fast']['val_psnr']:.3f} dB ({results['fast']['wall_s']:.0f}s)  "
        f"diff {diff:+.3f} dB  {verdict} (|diff| <= 0.1 dB)"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"results": results, "diff_db": diff, "verdict": verdict}, indent=1)
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
