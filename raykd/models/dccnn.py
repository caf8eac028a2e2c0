"""DC-CNN (Schlemper et al., 2017): ``m`` cascades of a ``n``-layer CNN block + data consistency.

Every conv activation is a named submodule, ``cascades.{c}.conv.{k}`` (0-based), so KD methods
read features through :class:`raykd.models.taps.FeatureTaps` without a special forward.
"""

from __future__ import annotations

import torch
from torch import nn

from raykd.data.transforms import fft2, ifft2
from raykd.errors import ConfigError
from raykd.models.base import BlockNet, ConvAct


class DataConsistency(nn.Module):
    """Noiseless hard data consistency (λ → ∞): ``k_dc = M⊙y + (1−M)⊙F(x)``, ``x = Re F⁻¹(k_dc)``.

    Taking the real part (as the reference does) is exactly data-consistent only for
    Hermitian-symmetric masks; what it always guarantees is that the sampled k-space of the
    *complex* result equals ``y``. Runs in fp32/complex64 even under autocast.
    """

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            k = fft2(x.float())
            k_dc = mask * y + (1.0 - mask) * k
            return ifft2(k_dc).real


class Cascade(nn.Module):
    """One CNN block (conv(1→C)+ReLU, (n−2)×[conv(C→C)+ReLU], conv(C→1)) followed by DC."""

    def __init__(self, depth: int, channels: int, residual: bool) -> None:
        super().__init__()
        widths = [1] + [channels] * (depth - 1) + [1]
        self.conv = nn.Sequential(
            *[ConvAct(widths[i], widths[i + 1], relu=i < depth - 1) for i in range(depth)]
        )
        self.residual = residual
        self.dc = DataConsistency()

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if self.residual:
            out = x + out
        return self.dc(out, y, mask)


class DCCNN(BlockNet):
    """DnCm. ``forward(zero_filled, y, mask) -> reconstruction`` (all [B, 1, H, W]).

    ``residual=True`` (the raykd default) adds the block input to the CNN output; it costs no
    parameters and trains faster. ``residual=False`` is the reference behaviour.
    """

    def __init__(
        self, depth: int = 5, cascades: int = 5, channels: int = 32, residual: bool = True
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ConfigError(f"DC-CNN depth must be >= 2 (D2Cm is the smallest), got {depth}")
        if cascades < 1:
            raise ConfigError(f"DC-CNN needs at least one cascade, got {cascades}")
        self.depth, self.num_cascades, self.channels = depth, cascades, channels
        self.residual = residual
        self.cascades = nn.ModuleList([Cascade(depth, channels, residual) for _ in range(cascades)])

    @property
    def arch(self) -> dict:
        """What defines the network (shapes and the residual flag); stored and checked on load."""
        return {
            "type": "dccnn",
            "depth": self.depth,
            "cascades": self.num_cascades,
            "channels": self.channels,
            "residual": self.residual,
        }

    def run_cascades(
        self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, start: int
    ) -> torch.Tensor:
        """Apply cascades ``start..m-1`` (used by the SFT student branches)."""
        return self.run_blocks(x, y, mask, start)

    def tap_groups(self) -> list[list[str]]:
        return [
            [f"cascades.{c}.conv.{k}" for k in range(self.depth)] for c in range(self.num_cascades)
        ]


def tap_names(model: BlockNet) -> list[str]:
    """All feature-tap names of a block network, in forward order."""
    return [name for group in model.tap_groups() for name in group]
