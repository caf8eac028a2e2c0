"""Device, precision and memory-format choices: the compute path of a stage.

``precision: auto`` (the default) picks bf16 autocast where the hardware has fast bf16 units —
CUDA GPUs with bf16 (fp16 on older GPUs), CPUs with AMX or AVX512-BF16 — and fp32 elsewhere
(AVX2-only CPUs, where bf16 is emulated and slower). ``channels_last: auto`` follows the same
choice: channels-last pays only together with bf16 (``benchmarks/train_step.py``: on the AMX
Xeon it adds to bf16's gain, in fp32 on AVX2 it was slower). The k-space / data-consistency
path always stays fp32 (see :mod:`raykd.data.transforms`).

The CPU capability is what the process will actually run: the hardware probes
(``torch.cpu._is_amx_tile_supported``, ``_is_avx512_bf16_supported``), capped by what the user
told the kernel libraries to use (``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from raykd.errors import ConfigError

# CPU capability classes, fastest bf16 first. The result files of benchmarks/train_step.py are
# named after them (train_step_cpu-amx.json, ...).
CPU_CLASSES = ("amx", "avx512_bf16", "avx512", "avx2", "other")
BF16_CPU_CLASSES = ("amx", "avx512_bf16")


def pick_device(spec: str = "auto") -> torch.device:
    """The torch device of a stage's ``device`` setting; a GPU always with its index (``cuda``
    alone: this process's current GPU, the one Ray Train or the trial set)."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ConfigError(f"device '{spec}': not a valid torch device ({exc})") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{spec}' requested but CUDA is not available on this machine")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


# ---- hardware probes (tests fake these to cover every capability class) --------------------
def cpu_has_amx() -> bool:
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def cpu_has_avx512_bf16() -> bool:
    try:
        return bool(torch.cpu._is_avx512_bf16_supported())
    except AttributeError:
        return False


def aten_cpu_capability() -> str:
    """The vector ISA ATen dispatches to ('AVX512', 'AVX2', 'DEFAULT'; ATEN_CPU_CAPABILITY)."""
    return torch.backends.cpu.get_cpu_capability()


def cuda_bf16() -> bool:
    """bf16 in the GPU's own units (Ampere and later); not where it is only emulated (V100,
    T4: ``is_bf16_supported()`` alone says yes there, and bf16 then runs slowly)."""
    if not torch.cuda.is_available():
        return False
    return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def _onednn_allows(isa: str) -> bool:
    """False when ``ONEDNN_MAX_CPU_ISA`` caps oneDNN (which runs the convolutions) below ``isa``.

    oneDNN's ISA names in increasing order; an unknown or absent cap allows everything.
    """
    order = ["SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI"]
    order += ["AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16"]
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "")).upper()
    if cap in ("", "ALL") or cap not in order:
        return True
    return order.index(cap) >= order.index(isa)


def cpu_capability() -> str:
    """This process's CPU class: 'amx', 'avx512_bf16', 'avx512', 'avx2' or 'other'."""
    aten = aten_cpu_capability().upper()
    if not aten.startswith("AVX512"):
        return "avx2" if aten.startswith("AVX2") else "other"
    if cpu_has_amx() and _onednn_allows("AVX512_CORE_AMX"):
        return "amx"
    if cpu_has_avx512_bf16() and _onednn_allows("AVX512_CORE_BF16"):
        return "avx512_bf16"
    return "avx512"


# ---- the policy ---------------------------------------------------------------------------
def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → bf16 on bf16-capable GPUs and on AMX / AVX512-BF16 CPUs, fp16 on older GPUs,
    fp32 elsewhere; an explicit choice is kept (fp16 needs CUDA)."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if cuda_bf16() else "fp16"
        return "bf16" if cpu_capability() in BF16_CPU_CLASSES else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision 'fp16' needs a CUDA device (use 'bf16' on CPU)")
    return precision


def resolve_channels_last(setting: bool | str, precision: str) -> bool:
    """``auto`` → channels-last with a half-precision path, NCHW with fp32 (where it was slower)."""
    if setting == "auto":
        return precision in ("bf16", "fp16")
    return bool(setting)


@dataclass(frozen=True)
class ComputePath:
    """How a stage computes: logged to MLflow (``compute.*`` params) and printed once."""

    device: str
    cpu_capability: str
    precision: str
    memory_format: str  # channels_last | contiguous
    # CUDA only: TF32 for fp32 convolutions/matmuls ("off" | "conv"); None on CPU.
    tf32: str | None = None

    @property
    def channels_last(self) -> bool:
        return self.memory_format == "channels_last"

    def describe(self) -> str:
        tf32 = f" (TF32 {self.tf32})" if self.tf32 else ""
        return (
            f"compute path: device {self.device}, cpu {self.cpu_capability}, precision "
            f"{self.precision}{tf32}, memory format {self.memory_format}"
        )

    def as_params(self) -> dict[str, str]:
        params = {
            "compute.device": self.device,
            "compute.cpu_capability": self.cpu_capability,
            "compute.precision": self.precision,
            "compute.memory_format": self.memory_format,
        }
        if self.tf32 is not None:
            params["compute.tf32"] = self.tf32
        return params


def resolve_path(precision: str, channels_last: bool | str, device: torch.device) -> ComputePath:
    """The compute path a stage (or a benchmark) runs with on ``device``."""
    prec = resolve_precision(precision, device)
    cl = resolve_channels_last(channels_last, prec)
    name, tf32 = str(device), None
    if device.type == "cuda" and torch.cuda.is_available():
        name = f"{device} ({torch.cuda.get_device_name(device)})"
        tf32 = cuda_tf32(prec)
    fmt = "channels_last" if cl else "contiguous"
    return ComputePath(name, cpu_capability(), prec, fmt, tf32)


def cuda_tf32(precision: str) -> str:
    """TF32 on CUDA: off for ``fp32`` (fp32 means IEEE fp32, as on CPU); under bf16/fp16
    autocast the convolutions left in fp32 use TF32 as torch does by default ("conv")."""
    return "off" if precision == "fp32" else "conv"


def configure_cuda(path: ComputePath, device: torch.device) -> None:
    """Make ``device`` this process's current GPU (NCCL, autocast and the CUDA RNG use it) and
    set the CUDA math to ``path`` (every stage sets it: a chain's stages share the process).
    cuDNN autotuning is on: a stage's slices all have one shape."""
    if device.type != "cuda" or path.tf32 is None:
        return
    torch.cuda.set_device(device)
    torch.backends.cudnn.benchmark = True
    # torch.backends.cudnn is replaced by a module object at import (``conv`` is set there):
    # its stub does not declare the attribute that the running torch has.
    torch.backends.cudnn.conv.fp32_precision = (  # type: ignore[attr-defined]
        "ieee" if path.tf32 == "off" else "tf32"
    )
    torch.backends.cuda.matmul.fp32_precision = "ieee"


def device_label(device: torch.device) -> str:
    """The device class result files are named by: ``cpu-<class>`` (``cpu-amx``) or
    ``cuda-<GPU model>`` (``cuda-NVIDIA_H100_80GB_HBM3``), so a GPU's never overwrites a CPU's."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return "cuda-" + "".join(c if c.isalnum() or c in "-." else "_" for c in name)
    return f"cpu-{cpu_capability()}"


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
