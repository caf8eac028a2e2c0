"""conv3x3 + ReLU as one oneDNN kernel for bf16 channels-last forward passes without autograd.

Eager PyTorch writes the conv output, then reads it again for the ReLU and writes the
activation; oneDNN can apply the ReLU as a post-op of the conv instead
(``torch.ops.mkldnn._convolution_pointwise``, the op Inductor emits for CPU convolutions).
Measured in-process on the AMX Xeon (``benchmarks/train_step.py`` cases, fused on vs off): a KD
step, whose frozen teacher runs without autograd, ×1.06; a D5C5 *training* step ×0.96 when the
fused forward was paired with eager's backward — so it is used without autograd only (the KD
teacher, validation, evaluation, inference).

Conditions: CPU, bf16 (autocast or bf16 tensors), channels-last (or one-channel) input, grad
mode off, the 3x3/pad-1 conv :class:`~raykd.models.base.ConvAct` builds, no hooks on the inner
modules (a tap on them must see their own outputs), not under torch.compile (Inductor fuses by
itself).
"""

from __future__ import annotations

import torch
from torch import nn

_OP = getattr(getattr(torch.ops, "mkldnn", None), "_convolution_pointwise", None)
_ONES = [1, 1]


def _available() -> bool:
    """oneDNN's bf16 convolutions need AVX512-BW/VL/DQ or AVX-NE-CONVERT (or an ISA cap,
    ``ONEDNN_MAX_CPU_ISA``, that allows them); elsewhere the fused op raises where eager conv2d
    falls back to a slow reference path, so only the eager path is used."""
    try:
        return (
            _OP is not None
            and torch.backends.mkldnn.is_available()
            and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        )
    except Exception:  # a build without oneDNN or without the probe
        return False


AVAILABLE = _available()


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return x.dtype


def fusable(x: torch.Tensor, block: nn.Sequential) -> bool:
    """Whether ``block`` (Conv2d 3x3 pad 1, ReLU) may run fused on ``x``."""
    if not AVAILABLE or torch.is_grad_enabled() or x.device.type != "cpu" or x.dim() != 4:
        return False
    if _compute_dtype(x) != torch.bfloat16:
        return False
    if x.shape[1] != 1 and not x.is_contiguous(memory_format=torch.channels_last):
        return False  # (a one-channel input is channels-last once copied to bf16)
    if torch.compiler.is_compiling():
        return False
    conv = block[0]
    if not isinstance(conv, nn.Conv2d) or not isinstance(block[1], nn.ReLU):
        return False
    if (conv.stride, conv.padding, conv.dilation, conv.groups) != ((1, 1), (1, 1), (1, 1), 1):
        return False
    if conv.padding_mode != "zeros":
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks for m in block) and not (
        nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks
    )


def conv_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``relu(conv2d(x, weight, bias, padding=1))`` in bf16, one kernel; inputs are cast to
    bf16 as autocast would cast them."""
    if _OP is None:  # callers check fusable() first
        raise RuntimeError("the oneDNN fused convolution is not available in this torch build")
    dtype = torch.bfloat16
    bias = bias.to(dtype) if bias is not None else None
    x = x.to(dtype).contiguous(memory_format=torch.channels_last)
    return _OP(x, weight.to(dtype), bias, _ONES, _ONES, _ONES, 1, "relu", [], "")
