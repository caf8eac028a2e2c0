"""Architectures by name: build from a config section, rebuild from a checkpoint's ``arch``.

``ModelConfig`` fields mean, per architecture: ``depth`` = conv layers per cascade (dccnn),
U-Net levels (dcunet), total conv layers (vdsr); ``cascades`` = cascades (dccnn, dcunet) or the
SFT blocks VDSR's layers are grouped into (vdsr).
"""

from __future__ import annotations

from typing import Any

from raykd.errors import CheckpointError, ConfigError
from raykd.models.base import BlockNet
from raykd.models.dccnn import DCCNN
from raykd.models.dcunet import DCUNet
from raykd.models.vdsr import VDSR

ARCHS: dict[str, type[BlockNet]] = {"dccnn": DCCNN, "dcunet": DCUNet, "vdsr": VDSR}


def build_model(arch: str, depth: int, cascades: int, channels: int, residual: bool = True):
    if arch not in ARCHS:
        raise ConfigError(f"unknown architecture '{arch}'; expected one of {sorted(ARCHS)}")
    return ARCHS[arch](depth, cascades, channels, residual)


def model_from_arch(arch: dict[str, Any]):
    """The network described by a checkpoint's ``arch`` dict (SFT: teacher + student)."""
    kind = arch.get("type")
    if kind == "sft":
        from raykd.models.sft import SFTModel

        return SFTModel(model_from_arch(arch["teacher"]), model_from_arch(arch["student"]))
    try:
        if kind == "dccnn":
            return DCCNN(arch["depth"], arch["cascades"], arch["channels"], arch["residual"])
        if kind == "dcunet":
            return DCUNet(arch["levels"], arch["cascades"], arch["channels"], arch["residual"])
        if kind == "vdsr":
            return VDSR(arch["layers"], arch["blocks"], arch["channels"], arch["residual"])
    except KeyError as exc:
        raise CheckpointError(f"architecture {arch}: missing field {exc}") from None
    raise CheckpointError(f"unknown architecture {arch}")
