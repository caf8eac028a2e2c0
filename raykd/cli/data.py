"""``raykd prepare``: convert DICOM / NIfTI / fastMRI data to raykd's h5 layout, or prepare the
built-in MNI152 dataset."""

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
    else:  # fastmri
        from raykd.data.fastmri import convert_fastmri

        src, out = Path(_need(args.src, "SRC")), Path(_need(args.out, "OUT"))
        files = sorted(src.glob("*.h5")) if src.is_dir() else [src]
        targets = [out / f.name if out.suffix != ".h5" else out for f in files]
        for f, target in zip(files, targets, strict=True):  # check all before converting any
            _guard_volume(target, f, args.force)
        paths = [
            convert_fastmri(f, target, prefer=args.prefer)
            for f, target in zip(files, targets, strict=True)
        ]
    for p in paths:
        print(p)
    return 0


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
    p.add_argument("what", choices=["mni152", "dicom", "nifti", "fastmri"])
    p.add_argument("src", nargs="?", help="input file or folder (dicom/nifti/fastmri)")
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
        "--force",
        action="store_true",
        help="overwrite existing output files that are not raykd volumes (never an input)",
    )
    p.set_defaults(func=_cmd_prepare)
