"""A trained network into the MLflow model registry, as a ``torch.export`` program with one
packed input.

The registered artifact is MLflow's ``pt2`` format: the network exported with ``torch.export``
(dynamic batch dimension) and saved with ``torch.export.save``; ``mlflow.pytorch.load_model``
gives back a module that runs any batch size. Every architecture raykd has (DCCNN, DC-UNet,
VDSR; magnitude and complex, FFT data consistency included) exports as it is. TorchScript
(``torch.jit.trace``) is kept only as the fallback for a network that does not export or whose
exported program disagrees with the eager one; the version's ``raykd.format`` tag says which
(``pt2`` or ``torchscript``). Its single input packs what the network needs into one float tensor
``[B, 4, H, W]``: zero-filled image, real and imaginary part of the measured k-space, sampling
mask; the output is the reconstruction ``[B, 1, H, W]``. A complex network (two image channels,
real and imaginary) takes ``[B, 5, H, W]`` (zero-filled real and imaginary part, k-space real and
imaginary part, mask) and returns ``[B, 2, H, W]``. That keeps the MLflow signature and
pyfunc serving simple (MLflow has no complex dtype); :func:`pack_inputs` builds it.

This module builds the artifact; :mod:`raykd.tracking.registry` only registers what it is
given (versions, score tags, the ``champion`` alias), so tracking never imports deploy.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from raykd.deploy.export import example_inputs
from raykd.tracking.registry import register_version


class PackedInputs(torch.nn.Module):
    """Adapter: one real ``[B, 4, H, W]`` tensor in, the wrapped network's output out."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

        self.c = 2 if getattr(net, "complex", False) else 1  # image channels

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        c = self.c
        zero_filled = packed[:, 0:c]
        y = torch.complex(packed[:, c : c + 1], packed[:, c + 1 : c + 2])
        return self.net(zero_filled, y, packed[:, c + 2 : c + 3])


def pack_inputs(zero_filled: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    b, _, h, w = zero_filled.shape
    mask = mask.expand(b, 1, h, w).to(zero_filled.dtype)
    return torch.cat([zero_filled, y.real, y.imag, mask], dim=1)


def scripted(model: torch.nn.Module, size: tuple[int, int]) -> tuple[Any, torch.Tensor]:
    """TorchScript of ``PackedInputs(model)``, checked against eager on another batch size."""
    wrapper = PackedInputs(model.eval()).eval()
    cplx = bool(getattr(model, "complex", False))
    example = pack_inputs(*example_inputs(2, size, seed=0, complex=cplx))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, (example,), check_trace=False)
        check = pack_inputs(*example_inputs(3, size, seed=1, complex=cplx))
        if not torch.allclose(traced(check), wrapper(check), rtol=1e-4, atol=1e-5):
            raise RuntimeError("TorchScript export differs from the eager model")
    return traced, example[:1]


def exported(model: torch.nn.Module, size: tuple[int, int]) -> tuple[Any, torch.Tensor, str]:
    """``PackedInputs(model)`` for MLflow's ``pt2`` format when it exports with a dynamic batch
    dimension and the exported program matches eager on another batch size; else the
    TorchScript fallback (:func:`scripted`). Returns (module, a 2-sample example, format)."""
    from torch.export import Dim

    wrapper = PackedInputs(model.eval()).eval()
    cplx = bool(getattr(model, "complex", False))
    # Two samples: torch.export keeps a size-1 dimension static, and MLflow exports from the
    # example it is given (dynamic where the signature's dimension is -1: the batch).
    example = pack_inputs(*example_inputs(2, size, seed=0, complex=cplx))
    check = pack_inputs(*example_inputs(3, size, seed=1, complex=cplx))
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.export.export(wrapper, (example,), dynamic_shapes=[{0: Dim.AUTO}])
            same = torch.allclose(program.module()(check), wrapper(check), rtol=1e-4, atol=1e-5)
    except Exception:  # a network torch.export cannot trace: TorchScript instead
        same = False
    if same:
        return wrapper, example, "pt2"
    traced, one = scripted(model, size)
    return traced, one, "torchscript"


def register_model(
    tracking,
    run_id: str,
    model: torch.nn.Module,
    name: str,
    score: float | None = None,
    size: tuple[int, int] = (32, 32),
    label: str = "",
) -> str:
    """Register ``run_id``'s model as a packed-input exported program (:func:`exported`; built
    only when the run has no version yet) and move the ``champion`` alias to the best version by
    ``score`` (validation PSNR); returns the version
    (:func:`raykd.tracking.registry.register_version`)."""
    return register_version(
        tracking, run_id, lambda: exported(model, size), name, score=score, label=label
    )
