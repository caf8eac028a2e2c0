"""Weighted-KD / reconstruction ratio at the start of training, per KD method (issue 12).

    python benchmarks/kd_balance.py                       # trains a D5C5 teacher briefly first
    python benchmarks/kd_balance.py --teacher-checkpoint runs/teacher/best.pt
    python benchmarks/kd_balance.py --study --ratios 0.1 1 --epochs 2 --slices 8

Setting: the ``cpu`` preset's Sunnybrook data (150x150, 4x, the paper's mask; train volumes
0101/0201/0301, validation 0401), D5C5 teacher, randomly initialised D3C5 student, fp32. For
every method the trainer's own pre-training measurement (first ``--batches`` training batches of
epoch 0, :func:`raykd.train.balance.calibrate`) gives ``weight × mean KD / mean L1`` under

* canonical weighting: ``kd.weight`` = the method's published weight (CANONICAL_KD_WEIGHTS);
* default weighting: what the preset gives a KD row (``kd_balance`` → ``kd.balance.ratio``).

``--study`` instead trains each method briefly at each balance ratio (and a plain student at the
same epochs) and reports the validation metrics, the evidence for the presets' default ratio.
Results go to benchmarks/results/kd_balance.json (kd_balance_study.json with ``--study``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raykd.data.sources import build_datasets  # noqa: E402
from raykd.distill import available_kd_methods  # noqa: E402
from raykd.plan import Row, StageOverrides, load_preset, stage_config  # noqa: E402
from raykd.train.config import CANONICAL_KD_WEIGHTS, BalanceConfig, KDConfig  # noqa: E402
from raykd.train.loop import Trainer, train_stage  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def row(method: str | None, kind: str) -> Row:
    return Row(
        dataset="sunnybrook",
        acceleration=4.0,
        seed=42,
        kind="std_kd" if kind == "kd" else kind,
        student_depth=3,
        method=method,
    )


def config(spec, method: str | None, kind: str, out: Path, epochs: int | None = None, **kd):
    """The grid's stage config in fp32, written to ``out``; ``kd``: KDConfig fields to set."""
    cfg = stage_config(spec, row(method, kind), kind, StageOverrides(epochs=epochs))
    cfg = cfg.model_copy(update={"precision": "fp32", "output_dir": str(out), "resume": False})
    if kd:
        cfg.kd = KDConfig.model_validate({**cfg.kd.model_dump(), **kd})
    return cfg


def flag(ratio: float) -> str:
    return "DOMINATES" if ratio > 10 else "VANISHES" if ratio < 1e-3 else "ok"


def start_ratios(spec, teacher: str, methods: list[str], batches: int, work: Path, data) -> list:
    rows = []
    for method in methods:
        entry: dict = {"method": method}
        weightings = {
            "canonical": {"weight": CANONICAL_KD_WEIGHTS[method], "balance": None},
            "default": {},
        }
        for label, extra in weightings.items():
            cfg = config(spec, method, "kd", work / f"{method}-{label}", **extra)
            if cfg.kd.balance is not None:
                cfg.kd.balance = cfg.kd.balance.model_copy(update={"batches": batches})
            cfg.teacher_checkpoint = teacher
            trainer = Trainer(cfg, datasets=data)
            t0 = time.perf_counter()
            bal = trainer.calibrate()
            entry[label] = {
                "rule": bal["rule"],
                "r": bal["ratio"],
                "weight": bal["weights"]["kd"],
                "mean_rec": bal["means"]["rec"],
                "mean_kd_raw": bal["means"]["kd"],
                "ratio": bal["ratios"]["kd"],
                "seconds": round(time.perf_counter() - t0, 1),
            }
        rows.append(entry)
        c, d = entry["canonical"], entry["default"]
        print(
            f"{method:8s} canonical w={c['weight']:<9.4g} ratio={c['ratio']:<10.3g} "
            f"{flag(c['ratio']):9s} | default ({d['rule']}, r={d['r']}) w={d['weight']:<10.4g} "
            f"ratio={d['ratio']:<8.3g} {flag(d['ratio'])}",
            flush=True,
        )
    return rows


def study(spec, teacher, methods, ratios, epochs: int, work, data, ft_steps: int) -> list:
    def run(label: str, cfg) -> dict:
        t0 = time.perf_counter()
        result = train_stage(cfg, datasets=data)
        last = result.history[-1]
        entry = {
            "run": label,
            "val_psnr_last": last["val/psnr"],
            "val_l1_last": last["val/loss"],
            "ratio_last": last.get("train/ratio/kd"),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(json.dumps(entry), flush=True)
        return entry

    rows = [run("student", config(spec, None, "student", work / "study-student", epochs))]
    for method in methods:
        for r in ratios:
            kd: dict = {"balance": BalanceConfig(ratio=r), "weight": None}
            if method == "ft":
                kd["options"] = {"pretrain_steps": ft_steps}
            cfg = config(spec, method, "kd", work / f"study-{method}-{r:g}", epochs, **kd)
            cfg.teacher_checkpoint = teacher
            rows.append({"method": method, "r": r, **run(f"{method} r={r:g}", cfg)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--teacher-checkpoint", help="trained D5C5 teacher (else one is trained)")
    p.add_argument("--teacher-epochs", type=int, default=2)
    p.add_argument("--slices", type=int, default=None, help="max slices per volume")
    p.add_argument("--batches", type=int, default=4, help="batches measured before training")
    p.add_argument("--methods", nargs="+", default=available_kd_methods())
    p.add_argument("--study", action="store_true", help="train briefly per method and ratio")
    p.add_argument("--ratios", nargs="+", type=float, default=[0.1, 1.0])
    p.add_argument("--epochs", type=int, default=2, help="--study: epochs per run")
    p.add_argument("--ft-steps", type=int, default=50, help="--study: FT paraphraser steps")
    p.add_argument("--work", default="runs/kd_balance")
    p.add_argument("--tag", default="", help="suffix of the results file name")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    overrides = {"max_slices_per_volume": args.slices} if args.slices else {}
    spec = load_preset(args.preset, overrides)
    work = Path(args.work)
    teacher_cfg = config(spec, None, "teacher", work / "teacher", args.teacher_epochs)
    data = build_datasets(teacher_cfg.data)
    teacher = args.teacher_checkpoint
    if teacher is None:
        t0 = time.perf_counter()
        teacher = str(train_stage(teacher_cfg, datasets=data).best_checkpoint)
        print(f"teacher: {args.teacher_epochs} epochs in {time.perf_counter() - t0:.0f} s")
    if args.study:
        out = study(
            spec, teacher, args.methods, args.ratios, args.epochs, work, data, args.ft_steps
        )
        name = f"kd_balance_study{args.tag}.json"
    else:
        out = start_ratios(spec, teacher, args.methods, args.batches, work, data)
        name = f"kd_balance{args.tag}.json"
    RESULTS.mkdir(exist_ok=True)
    record = {
        "argv": sys.argv[1:],
        "preset": args.preset,
        "kd_balance": spec.kd_balance,
        "train_slices": len(data["train"]),
        "val_slices": len(data["val"]),
        "teacher_checkpoint": teacher,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "rows": out,
    }
    (RESULTS / name).write_text(json.dumps(record, indent=1))
    print(f"wrote {RESULTS / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
