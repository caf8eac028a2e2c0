"""Export a trained network for deployment: TorchScript (supported) and ONNX (attempted).

TorchScript: ``torch.jit.trace`` over ``(zero_filled [B,1,H,W] float32, y [B,1,H,W]
complex64, mask [B,1,H,W] or [H,W] float32)``; a complex network takes and returns
``[B,2,H,W]`` images (real, imag). The graph has no data-dependent control flow
and every op broadcasts, so one trace serves any batch size and either mask shape; the export
is checked against the eager model on a batch size other than the traced one before it is
written. (``torch.jit`` is deprecated in recent PyTorch releases but still works and is loadable
from C++ without Python; the warning is silenced here.)

ONNX: the data-consistency layer is an orthonormal complex FFT of a complex64 input. The ONNX
exporter has no mapping for ``aten::fft_fft2`` / ``fft_ifft2`` on complex tensors and ONNX has
no complex tensor inputs for most runtimes, so an export failure is reported as a
:class:`~raykd.errors.RaykdError` that says so, never skipped silently.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from raykd.errors import RaykdError

FORMATS = ("torchscript", "onnx")


def example_inputs(
    batch: int, size: tuple[int, int], seed: int = 0, mask_2d: bool = False, complex: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Realistic inputs from the forward model (random image, 4x Cartesian-like row mask);
    ``complex``: a random complex image as two channels (real, imag)."""
    from raykd.data.transforms import undersample

    gen = torch.Generator().manual_seed(seed)
    h, w = size
    target = torch.rand(batch, 2 if complex else 1, h, w, generator=gen)
    rows = (torch.rand(h, generator=gen) < 0.3).float()
    rows[:2] = 1.0
    rows[-2:] = 1.0
    mask = rows[:, None].expand(h, w).contiguous()
    zero_filled, y = undersample(target, mask)
    if not mask_2d:
        mask = mask[None, None].expand(batch, 1, h, w).contiguous()
    return zero_filled, y, mask


def _load(checkpoint: str | Path, part: str) -> tuple[torch.nn.Module, tuple[int, int], dict]:
    from raykd.train.checkpoint import checkpoint_config, load_checkpoint
    from raykd.train.stages import load_model

    model = load_model(checkpoint, part=part).eval()
    stored = checkpoint_config(load_checkpoint(checkpoint)).get("data", {})
    size = tuple(int(s) for s in stored.get("size", (64, 64)))
    return model, (size[0], size[1]), model.arch


def export_torchscript(
    checkpoint: str | Path,
    out: str | Path,
    part: str = "auto",
    size: tuple[int, int] | None = None,
    trace_batch: int = 2,
    check_batch: int = 3,
    atol: float = 1e-5,
) -> Path:
    """Trace the checkpoint's network, verify it against eager on another batch size, save."""
    model, stored_size, arch = _load(checkpoint, part)
    size = size or stored_size
    cplx = bool(getattr(model, "complex", False))
    inputs = example_inputs(trace_batch, size, complex=cplx)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(model, inputs)
    for mask_2d in (False, True):
        zf, y, mask = example_inputs(check_batch, size, seed=1, mask_2d=mask_2d, complex=cplx)
        with torch.no_grad():
            expected, got = model(zf, y, mask), traced(zf, y, mask)
        if not torch.allclose(expected, got, atol=atol, rtol=1e-4):
            raise RaykdError(
                f"TorchScript export of {checkpoint} does not reproduce the eager model on batch "
                f"{check_batch} (max abs diff {(expected - got).abs().max():.3g}); not written"
            )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"arch": arch, "trace_size": list(size), "inputs": "zero_filled, y, mask"}
    if cplx:
        meta["images"] = "complex: [B, 2, H, W] (real, imag) in and out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(traced, str(out), _extra_files={"raykd.json": json.dumps(meta)})
    return out


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    path = Path(path)
    if not path.is_file():
        raise RaykdError(f"TorchScript file {path}: not found")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location="cpu")


@contextlib.contextmanager
def _silence_fds() -> Iterator[None]:
    """Silence C-level stdout/stderr: on failure the TorchScript-based ONNX exporter dumps the
    whole IR graph from C++ (its log switch is always on), burying the actual reason."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def export_onnx(
    checkpoint: str | Path,
    out: str | Path,
    part: str = "auto",
    size: tuple[int, int] | None = None,
    opset: int = 18,
) -> Path:
    """Try an ONNX export; a RaykdError explains why it cannot work when it fails."""
    model, stored_size, _ = _load(checkpoint, part)
    inputs = example_inputs(2, size or stored_size, complex=bool(getattr(model, "complex", False)))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written next to ``out`` and renamed: a failed export never deletes an existing file.
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)

        dynamo = True
    except ImportError:
        dynamo = False  # TorchScript-based exporter: no extra dependency
    try:
        with warnings.catch_warnings(), _silence_fds():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                inputs,
                str(tmp),
                input_names=["zero_filled", "y", "mask"],
                output_names=["reconstruction"],
                opset_version=opset,
                dynamo=dynamo,
            )
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise RaykdError(
            "ONNX export failed: ONNX cannot represent the complex FFT data-consistency layer "
            "(torch.fft.fft2/ifft2 on complex64 k-space, and complex64 graph inputs); "
            f"TorchScript is the supported deployment format (--format torchscript). "
            f"Exporter said: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        ) from exc
    if not tmp.is_file():
        raise RaykdError(f"ONNX export reported success but wrote no file at {out}")
    os.replace(tmp, out)
    return out


def export_model(
    checkpoint: str | Path,
    out: str | Path,
    fmt: str = "torchscript",
    part: str = "auto",
    size: tuple[int, int] | None = None,
) -> Path:
    if fmt not in FORMATS:
        raise RaykdError(f"export format '{fmt}': expected one of {FORMATS}")
    if fmt == "onnx":
        return export_onnx(checkpoint, out, part, size)
    return export_torchscript(checkpoint, out, part, size)
