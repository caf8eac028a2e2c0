"""``raykd train``, ``raykd evaluate`` and ``raykd reconstruct``: one stage from a config file,
and a checkpoint's metrics or reconstruction on volumes outside any job."""

from __future__ import annotations

import argparse


def _cmd_train(args: argparse.Namespace) -> int:
    from raykd.train.config import load_config
    from raykd.train.evaluate import evaluate_model, slice_count, write_json
    from raykd.train.loop import Trainer
    from raykd.train.stages import load_model

    overrides = list(args.set or [])
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    cfg = load_config(args.config, overrides)
    if args.restart:
        from raykd.train.rundir import move_aside

        moved = move_aside(cfg.output_dir)
        if moved is not None:
            print(f"--restart: moved the previous run in {cfg.output_dir} to {moved}")
    trainer = Trainer(cfg)
    result = trainer.fit()
    part = "teacher" if cfg.kind in ("teacher", "sft") else "student"
    model = load_model(result.best_checkpoint, part=part).to(trainer.device)
    report = evaluate_model(model, trainer.datasets["val"], trainer.device)
    write_json(report, result.output_dir / "eval_val.json")
    summary = ", ".join(f"{k} {v[0]:.4f}" for k, v in report["summary"].items())
    scope = slice_count(report, "val", cfg.data.max_slices_per_volume)
    print(f"best epoch {result.best_epoch + 1}: validation {summary} ({scope})")
    print(f"data: {trainer.datasets['val'].describe_kspace()}")
    print(f"checkpoint: {result.best_checkpoint}")
    return 0


def _eval_dataset(args: argparse.Namespace, ckpt_path: str):
    from raykd.data.dataset import SliceDataset
    from raykd.data.sources import build_mask, build_sr_mask
    from raykd.train.checkpoint import checkpoint_config, load_checkpoint
    from raykd.train.config import MaskConfig, SRConfig

    stored = checkpoint_config(load_checkpoint(ckpt_path)).get("data", {})
    size = tuple(args.size) if args.size else tuple(stored.get("size", (240, 240)))
    if args.mask:
        mask_cfg = MaskConfig(kind="file", path=args.mask)
    elif args.acceleration:
        mask_cfg = MaskConfig(kind="cartesian", acceleration=args.acceleration, seed=args.mask_seed)
    else:
        mask_cfg = MaskConfig(**stored.get("mask", {}))
    data = args.data if hasattr(args, "data") else args.input
    # A complex model reads the volumes' complex images; an SR model its degradation.
    sr = SRConfig(**stored["sr"]) if stored.get("sr") else None
    mask = build_sr_mask(sr) if sr is not None and not args.mask else build_mask(mask_cfg)
    return SliceDataset(
        data,
        size,
        mask,
        sr=sr,
        complex=bool(stored.get("complex", False)),
        max_slices=args.max_slices,
        kspace=stored.get("kspace", "simulated"),  # measured: the checkpoint's grid and crop
    )


def _scope_note(args: argparse.Namespace) -> str | None:
    """Why this PSNR may differ from the job's: a job that evaluated a subset of each volume's
    slices (``data.max_slices_per_volume``) against all of them here, or the reverse."""
    from raykd.train.checkpoint import checkpoint_config, load_checkpoint

    stored = checkpoint_config(load_checkpoint(args.checkpoint)).get("data", {})
    job = stored.get("max_slices_per_volume")
    if job == args.max_slices:
        return None
    if job is None:
        return (
            f"note: the checkpoint's own validation used all slices of each volume; this one "
            f"at most {args.max_slices} per volume"
        )
    return (
        f"note: the checkpoint's own validation (its job's and MLflow's val PSNR) used at most "
        f"{job} slices per volume (data.max_slices_per_volume); "
        + (
            "this one uses all of them, so the numbers differ: pass "
            f"--max-slices {job} to evaluate the same slices"
            if args.max_slices is None
            else f"this one at most {args.max_slices}"
        )
    )


def fetch_checkpoint(args: argparse.Namespace) -> None:
    """A checkpoint given as a stage's object-store URI: pulled and verified into this node's
    copy of the root; ``args.checkpoint`` becomes that file, ``args.checkpoint_ref`` is what was
    given (what outputs name)."""
    from raykd.orchestration.stage_ref import local_checkpoint

    args.checkpoint_ref = str(args.checkpoint)
    args.checkpoint = str(local_checkpoint(args.checkpoint))


def _model_and_data(args: argparse.Namespace, data_flag: str, data: str, what: str):
    """Guard ``--out`` against the inputs, then the checkpoint's model and the dataset to run it
    on, on the chosen device (shared by ``evaluate`` and ``reconstruct``)."""
    from raykd.outputs import guard_output
    from raykd.train.precision import pick_device
    from raykd.train.stages import load_model

    fetch_checkpoint(args)
    inputs = {"checkpoint": args.checkpoint, data_flag: data, "--mask": args.mask}
    guard_output(args.out, inputs, what, args.force)
    device = pick_device(args.device)
    dataset = _eval_dataset(args, args.checkpoint)
    return load_model(args.checkpoint, part=args.part).to(device), dataset, device


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from raykd.train.evaluate import coverage, evaluate_model, write_json

    model, dataset, device = _model_and_data(args, "--data", args.data, "metrics")
    report = evaluate_model(model, dataset, device)
    report["checkpoint"] = args.checkpoint_ref
    if args.zero_filled:
        report["zero_filled"] = evaluate_model(None, dataset, device)["summary"]
    write_json(report, args.out)
    per_volume = f"at most {args.max_slices}" if args.max_slices else "all"
    print(
        f"metrics on --data {args.data}: {coverage(report)} ({per_volume} slices of each "
        "volume; mean ± std over volumes)"
    )
    for name, (mean, std) in report["summary"].items():
        print(f"{name:6s} {mean:.4f} ± {std:.4f}")
    if note := _scope_note(args):
        print(note)
    print(f"wrote {args.out}")
    return 0


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    from raykd.data.volumes import COMPLEX_KEY, write_volume
    from raykd.train.evaluate import reconstruct_volume

    model, dataset, device = _model_and_data(args, "--input", args.input, "reconstruction")
    rec = reconstruct_volume(model, dataset, 0, device)
    extra = {"zero_filled": rec["zero_filled"], "target": rec["target"]}
    if "recon_complex" in rec:  # complex model: the complex result too ('image' = magnitude)
        extra[COMPLEX_KEY] = rec["recon_complex"]
    write_volume(
        args.out,
        rec["recon"],
        attrs={"checkpoint": args.checkpoint_ref, "source": str(args.input)},
        extra=extra,
    )
    vol = dataset.volumes[0]
    per_volume = f"at most {args.max_slices}" if args.max_slices else "all"
    print(
        f"wrote {args.out}: volume {vol.key} of --input, {rec['recon'].shape[0]} slices "
        f"({per_volume} of its slices)"
    )
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected >= 1, got {value}")
    return value


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "checkpoint",
        help="a raykd checkpoint (best.pt / last.pt), or a stage's s3://<root>/stages/<id>/best.pt",
    )
    p.add_argument(
        "--part",
        choices=["auto", "teacher", "student"],
        default="auto",
        help="for SFT checkpoints: which network to use (default: teacher)",
    )
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="crop/pad size (default: the checkpoint's training size)",
    )
    p.add_argument("--mask", help="fixed mask .npy (default: the checkpoint's training mask)")
    p.add_argument("--acceleration", type=float, help="use a seeded Cartesian mask instead")
    p.add_argument("--mask-seed", type=int, default=0)
    p.add_argument(
        "--max-slices",
        type=_positive,
        help="at most this many evenly spaced slices per volume, as a job's "
        "data.max_slices_per_volume does (default: all slices)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--force",
        action="store_true",
        help="overwrite --out even if it exists and is not this command's kind of output "
        "(an input is never overwritten)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train one stage (teacher | sft | student | kd)",
        description="Train one stage from a YAML/JSON config, then evaluate the "
        "best checkpoint on the validation volumes (eval_val.json).",
    )
    p.add_argument("config", nargs="?", help="stage config file (YAML or JSON)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set optim.epochs=10 (repeatable)",
    )
    p.add_argument("--output-dir", help="where checkpoints and metrics go")
    p.add_argument(
        "--restart",
        action="store_true",
        help="start over even if the output dir holds a run (of any config): the old run is "
        "moved to <dir>.replaced-<time>; without it a run of the same config resumes and one "
        "of another config is refused",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="metrics of a checkpoint on a volume or folder",
        description="Reconstruct every volume and write per-volume and per-slice "
        "PSNR/SSIM/NMSE/HFN/HFEN/VIF as JSON.",
    )
    _add_eval_args(p)
    p.add_argument("--data", required=True, help="an h5 volume or a folder of them")
    p.add_argument("--out", required=True, help="output JSON")
    p.add_argument("--zero-filled", action="store_true", help="also report zero-filled metrics")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "reconstruct",
        help="reconstruct one volume to h5",
        description="Undersample a volume with the mask, reconstruct it and "
        "write 'image' (reconstruction), 'zero_filled' and 'target'.",
    )
    _add_eval_args(p)
    p.add_argument("--input", required=True, help="an h5 volume in raykd's layout")
    p.add_argument("--out", required=True, help="output h5")
    p.set_defaults(func=_cmd_reconstruct)
