"""Architectures by name: the one place that builds a network, from a config section or from a
checkpoint's ``arch``.

``ModelConfig`` fields mean, per architecture: ``depth`` = conv layers per cascade (dccnn),
U-Net levels (dcunet), total conv layers (vdsr); ``cascades`` = cascades (dccnn, dcunet) or the
SFT blocks VDSR's layers are grouped into (vdsr). A checkpoint's ``arch`` names them as each
class's ``arch`` property does (``ARCH_FIELDS``).
"""

from __future__ import annotations

from typing import Any, Protocol

from raykd.errors import CheckpointError, ConfigError
from raykd.models.base import BlockNet
from raykd.models.dccnn import DCCNN
from raykd.models.dcunet import DCUNet
from raykd.models.sft import SFTModel
from raykd.models.vdsr import VDSR

ARCHS: dict[str, type[BlockNet]] = {"dccnn": DCCNN, "dcunet": DCUNet, "vdsr": VDSR}
# The constructor's positional arguments (depth, cascades, channels, residual) as each
# architecture's ``arch`` dict names them.
ARCH_FIELDS: dict[str, tuple[str, str, str, str]] = {
    "dccnn": ("depth", "cascades", "channels", "residual"),
    "dcunet": ("levels", "cascades", "channels", "residual"),
    "vdsr": ("layers", "blocks", "channels", "residual"),
}


class ModelSpec(Protocol):
    """What a model config section provides (``raykd.train.config.ModelConfig``); read-only,
    so a config whose ``arch`` is a ``Literal`` of the registered names fits."""

    @property
    def arch(self) -> str: ...
    @property
    def depth(self) -> int: ...
    @property
    def cascades(self) -> int: ...
    @property
    def channels(self) -> int: ...
    @property
    def residual(self) -> bool: ...


def build_model(
    arch: str,
    depth: int,
    cascades: int,
    channels: int,
    residual: bool = True,
    complex: bool = False,
):
    if arch not in ARCHS:
        raise ConfigError(f"unknown architecture '{arch}'; expected one of {sorted(ARCHS)}")
    return ARCHS[arch](depth, cascades, channels, residual, complex=complex)


def model_from_config(cfg: ModelSpec, complex: bool = False) -> BlockNet:
    """The network of a model config section (teacher or student), any architecture.

    ``complex`` comes from the data section (``data.complex``): the same config trains a
    magnitude network on magnitude data and a two-channel complex one on complex data.
    """
    return build_model(cfg.arch, cfg.depth, cfg.cascades, cfg.channels, cfg.residual, complex)


def model_from_arch(arch: dict[str, Any]):
    """The network described by a checkpoint's ``arch`` dict (SFT: teacher + student)."""
    kind = arch.get("type")
    if kind == "sft":
        return SFTModel(model_from_arch(arch["teacher"]), model_from_arch(arch["student"]))
    if kind not in ARCHS:
        raise CheckpointError(f"unknown architecture {arch}")
    try:
        return ARCHS[kind](
            *(arch[field] for field in ARCH_FIELDS[kind]), complex=bool(arch.get("complex"))
        )
    except KeyError as exc:
        raise CheckpointError(f"architecture {arch}: missing field {exc}") from None
