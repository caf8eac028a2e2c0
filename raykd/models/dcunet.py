"""DC-UNet (Sun et al., IPMI 2019 style): cascades of a small U-Net + data consistency.

The paper's Table 6 uses it as a *heterogeneous* teacher for a DnCm student. Each cascade's
CNN is a U-Net with ``levels`` resolutions (channels C, 2C, 4C ...; 2x2 average pooling down,
bilinear upsampling and skip concatenation up), a 1-channel output conv and the cascade's
residual, followed by the same data-consistency layer as DC-CNN. Its full-resolution
activations (first encoder level, last decoder level, output) are its KD taps; which student
layer each one is paired with is configuration (``kd.teacher_taps`` / ``kd.student_taps``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raykd.errors import ConfigError
from raykd.models.base import BlockNet, ConvAct, with_complex
from raykd.models.dccnn import DataConsistency


def _double(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(ConvAct(c_in, c_out, relu=True), ConvAct(c_out, c_out, relu=True))


class UNetCascade(nn.Module):
    def __init__(self, levels: int, channels: int, residual: bool, complex: bool = False) -> None:
        super().__init__()
        io = 2 if complex else 1  # complex images: (real, imag) channels
        widths = [channels * 2**i for i in range(levels)]
        self.enc = nn.ModuleList(
            [_double(io if i == 0 else widths[i - 1], widths[i]) for i in range(levels)]
        )
        # dec[i] brings level i+1 back to level i (dec[0] ends at full resolution).
        self.dec = nn.ModuleList(
            [_double(widths[i + 1] + widths[i], widths[i]) for i in range(levels - 1)]
        )
        self.out = ConvAct(channels, io, relu=False)
        self.residual = residual
        self.dc = DataConsistency(complex)

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        skips, h = [], x
        for i, enc in enumerate(self.enc):
            if i > 0:
                h = F.avg_pool2d(h, 2, ceil_mode=True)
            h = enc(h)
            skips.append(h)
        for i in reversed(range(len(self.dec))):
            up = F.interpolate(h, size=skips[i].shape[-2:], mode="bilinear", align_corners=False)
            h = self.dec[i](torch.cat([up, skips[i]], dim=1))
        out = self.out(h)
        if self.residual:
            out = x + out
        return self.dc(out, y, mask)


class DCUNet(BlockNet):
    """``forward(zero_filled, y, mask)``; ``levels`` plays the role of depth in the config."""

    def __init__(
        self,
        levels: int = 2,
        cascades: int = 5,
        channels: int = 32,
        residual: bool = True,
        complex: bool = False,
    ) -> None:
        super().__init__()
        if levels < 1 or cascades < 1:
            raise ConfigError(
                f"DC-UNet needs levels >= 1 and cascades >= 1, got {levels} and {cascades}"
            )
        self.depth, self.num_cascades, self.channels = levels, cascades, channels
        self.residual, self.complex = residual, complex
        self.cascades = nn.ModuleList(
            [UNetCascade(levels, channels, residual, complex) for _ in range(cascades)]
        )

    @property
    def arch(self) -> dict:
        return with_complex(
            {
                "type": "dcunet",
                "levels": self.depth,
                "cascades": self.num_cascades,
                "channels": self.channels,
                "residual": self.residual,
            },
            self.complex,
        )

    def tap_groups(self) -> list[list[str]]:
        groups = []
        for c in range(self.num_cascades):
            p = f"cascades.{c}"
            names = [f"{p}.enc.0.0", f"{p}.enc.0.1"]
            if self.depth > 1:
                names += [f"{p}.dec.0.0", f"{p}.dec.0.1"]
            groups.append(names + [f"{p}.out"])
        return groups
