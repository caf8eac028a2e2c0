"""``raykd prepare``: convert DICOM / NIfTI / fastMRI / Calgary-Campinas data to raykd's h5
layout, add a synthetic phase to magnitude volumes, or prepare the built-in MNI152 dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from raykd.errors import RaykdError


def _cmd_prepare(args: argparse.Namespace) -> int:
    if args.what == "mni152":
        from raykd.data.builtin import prepare_mni152

        paths = prepare_mni152(size=args.size)
    elif args.what == "dicom":
        from raykd.data.dicom import convert_dicom_folder
        from raykd.outputs import guard_output_dir

        out = str(guard_output_dir(_need(args.out, "OUT"), "OUT"))
        paths = convert_dicom_folder(_need(args.src, "SRC"), out)
    elif args.what == "nifti":
        from raykd.data.nifti import convert_nifti

        out = Path(_need(args.out, "OUT"))
        src = Path(_need(args.src, "SRC"))
        files = sorted([*src.glob("*.nii"), *src.glob("*.nii.gz")]) if src.is_dir() else [src]
        paths = []
        for f in files:
            name = f.name.removesuffix(".gz").removesuffix(".nii") + ".h5"
            target = out / name if (src.is_dir() or out.suffix != ".h5") else out
            _guard_volume(target, f, args.force)
            paths.append(convert_nifti(f, target, axis=args.axis))
    else:  # one h5 in, one h5 out: fastmri, calgary, synthetic-phase
        src, out = Path(_need(args.src, "SRC")), Path(_need(args.out, "OUT"))
        files = sorted(src.glob("*.h5")) if src.is_dir() else [src]
        targets = [out / f.name if out.suffix != ".h5" else out for f in files]
        for f, target in zip(files, targets, strict=True):  # check all before converting any
            _guard_volume(target, f, args.force)
        convert = _converter(args)
        paths = [convert(f, target) for f, target in zip(files, targets, strict=True)]
    for p in paths:
        print(p)
    return 0


def _crop(args: argparse.Namespace, default: tuple[int, int] | None) -> tuple[int, int] | None:
    if args.crop is None:
        return default
    return None if min(args.crop) <= 0 else (args.crop[0], args.crop[1])


def _converter(args: argparse.Namespace):
    """The one-file converter of ``args.what`` with its options bound."""
    if args.what == "calgary":
        from raykd.data.complex_readers import convert_calgary

        crop = _crop(args, (256, 256))
        return lambda f, t: convert_calgary(f, t, crop, center_slices=args.center_slices)
    if args.what == "synthetic-phase":
        from raykd.data.complex import make_complex_volume

        crop = _crop(args, None)
        return lambda f, t: make_complex_volume(f, t, crop, seed=args.phase_seed)
    if args.kspace == "measured":  # the full measured grid
        from raykd.data.complex_readers import convert_fastmri_complex

        if args.crop is not None or args.what != "fastmri":
            raise RaykdError("prepare: --kspace measured is for fastmri and keeps the full grid")
        return lambda f, t: convert_fastmri_complex(f, t, None)
    if args.complex:
        from raykd.data.complex_readers import FASTMRI_CROP, convert_fastmri_complex

        crop = _crop(args, FASTMRI_CROP)
        return lambda f, t: convert_fastmri_complex(f, t, crop)
    from raykd.data.fastmri import convert_fastmri

    return lambda f, t: convert_fastmri(f, t, prefer=args.prefer)


def _guard_volume(target: Path, src: Path, force: bool) -> None:
    from raykd.outputs import guard_output

    guard_output(target, {"SRC": src}, "volume", force, flag="OUT")


def _need(value: str | None, name: str) -> str:
    if not value:
        raise RaykdError(f"prepare: {name} is required for this source")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="prepare data in raykd's h5 layout",
        description="Convert data to raykd's layout (one h5 per volume, 'image' "
        "[N, H, W]) or prepare the built-in MNI152 dataset.",
    )
    p.add_argument(
        "what", choices=["mni152", "dicom", "nifti", "fastmri", "calgary", "synthetic-phase"]
    )
    p.add_argument("src", nargs="?", help="input file or folder (all but mni152)")
    p.add_argument("out", nargs="?", help="output folder (or .h5 file for one input)")
    p.add_argument("--size", type=int, default=240, help="mni152: padded slice size")
    p.add_argument("--axis", type=int, default=2, help="nifti: slice axis after reorienting")
    p.add_argument(
        "--prefer",
        choices=["reconstruction", "kspace"],
        default="reconstruction",
        help="fastmri: image source when both are present",
    )
    p.add_argument(
        "--complex",
        action="store_true",
        help="fastmri: keep the phase (single-coil k-space → complex volume, 'cimage')",
    )
    p.add_argument(
        "--kspace",
        choices=["simulated", "measured"],
        default="simulated",
        help="fastmri: 'measured' keeps single-coil k-space on its full measured grid (complex, "
        "no crop) for data.kspace: measured; 'simulated' (default): 320x320 images",
    )
    p.add_argument(
        "--crop",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="complex sources: centre crop (fastmri 320 320, calgary 256 256, synthetic-phase "
        "none); 0 0 keeps the full grid",
    )
    p.add_argument(
        "--center-slices", type=int, help="calgary: keep the centre N slices (the paper: 110)"
    )
    p.add_argument("--phase-seed", type=int, default=0, help="synthetic-phase: phase seed")
    p.add_argument(
        "--force",
        action="store_true",
        help="overwrite existing output files that are not raykd volumes (never an input)",
    )
    p.set_defaults(func=_cmd_prepare)
