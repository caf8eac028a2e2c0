"""DC-CNN (Schlemper et al., 2017): ``m`` cascades of a ``n``-layer CNN block + data consistency.

Every conv activation is a named submodule, ``cascades.{c}.conv.{k}`` (0-based), so KD methods
read features through :class:`raykd.models.taps.FeatureTaps` without a special forward.
"""

from __future__ import annotations

import torch
from torch import nn

from raykd.data.transforms import fft2, ifft2, to_channels, to_complex
from raykd.errors import ConfigError
from raykd.models.base import BlockNet, ConvAct, with_complex


class DataConsistency(nn.Module):
    """Noiseless hard data consistency (λ → ∞): ``k_dc = M⊙y + (1−M)⊙F(x)``, ``x = Re F⁻¹(k_dc)``.

    Taking the real part (as the reference does) is exactly data-consistent only for
    Hermitian-symmetric masks; what it always guarantees is that the sampled k-space of the
    *complex* result equals ``y``. With ``complex=True`` (Schlemper et al.'s original: images as
    two channels, real and imaginary) the complex result is returned as two channels, so the
    output's k-space equals ``y`` at every sampled point. Runs in fp32/complex64 under autocast.
    """

    def __init__(self, complex: bool = False) -> None:
        super().__init__()
        self.complex = complex

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            k = fft2(to_complex(x) if self.complex else x.float())
            k_dc = mask * y + (1.0 - mask) * k
            out = ifft2(k_dc)
            return to_channels(out) if self.complex else out.real


class Cascade(nn.Module):
    """One CNN block (conv(1→C)+ReLU, (n−2)×[conv(C→C)+ReLU], conv(C→1)) followed by DC."""

    def __init__(self, depth: int, channels: int, residual: bool, complex: bool = False) -> None:
        super().__init__()
        io = 2 if complex else 1  # complex images: (real, imag) channels
        widths = [io] + [channels] * (depth - 1) + [io]
        self.conv = nn.Sequential(
            *[ConvAct(widths[i], widths[i + 1], relu=i < depth - 1) for i in range(depth)]
        )
        self.residual = residual
        self.dc = DataConsistency(complex)

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if self.residual:
            out = x + out
        return self.dc(out, y, mask)


class DCCNN(BlockNet):
    """DnCm. ``forward(zero_filled, y, mask) -> reconstruction`` (all [B, 1, H, W]).

    ``residual=True`` (the raykd default) adds the block input to the CNN output; it costs no
    parameters and trains faster. ``residual=False`` is the reference behaviour.
    ``complex=True``: images are [B, 2, H, W] (real, imag) in and out, DC in complex k-space.
    """

    def __init__(
        self,
        depth: int = 5,
        cascades: int = 5,
        channels: int = 32,
        residual: bool = True,
        complex: bool = False,
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ConfigError(f"DC-CNN depth must be >= 2 (D2Cm is the smallest), got {depth}")
        if cascades < 1:
            raise ConfigError(f"DC-CNN needs at least one cascade, got {cascades}")
        self.depth, self.num_cascades, self.channels = depth, cascades, channels
        self.residual, self.complex = residual, complex
        self.cascades = nn.ModuleList(
            [Cascade(depth, channels, residual, complex) for _ in range(cascades)]
        )

    @property
    def arch(self) -> dict:
        """What defines the network (shapes and the residual flag); stored and checked on load."""
        return with_complex(
            {
                "type": "dccnn",
                "depth": self.depth,
                "cascades": self.num_cascades,
                "channels": self.channels,
                "residual": self.residual,
            },
            self.complex,
        )

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
