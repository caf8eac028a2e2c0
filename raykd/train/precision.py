"""Device and precision choices.

``auto`` picks bf16 autocast where the hardware has fast bf16 matrix units (CUDA with bf16,
CPUs with AMX) and fp32 elsewhere; the k-space/DC path always stays fp32 (see
:mod:`raykd.data.transforms`).
"""

from __future__ import annotations

import contextlib

import torch

from raykd.errors import ConfigError


def pick_device(spec: str = "auto") -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ConfigError(f"device '{spec}': not a valid torch device ({exc})") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{spec}' requested but CUDA is not available on this machine")
    return device


def cpu_has_amx() -> bool:
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_amx() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision 'fp16' needs a CUDA device (use 'bf16' on CPU)")
    return precision


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
