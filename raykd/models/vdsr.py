"""VDSR (Kim, Lee & Lee, CVPR 2016) for MRI super-resolution, as a block network.

``layers`` conv3x3 layers — conv(1→C)+ReLU, (layers−2)×[conv(C→C)+ReLU], conv(C→1) — plus the
global residual from the input (the bicubically upsampled low-resolution image, or the
k-space-truncated one); ``complex=True``: input and output are two channels (real, imag).
For SFT-KD the first ``layers − 1`` convs are grouped into
``blocks`` consecutive blocks (sizes as equal as possible, earlier blocks larger) and the
output conv and residual close the last block, so the student-friendly teacher can branch into
the student after any block as it does after a cascade. Teacher and student must then share the
channel width C (the state passed between them is a C-channel feature map).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from raykd.errors import ConfigError
from raykd.models.base import BlockNet, ConvAct, with_complex


class VDSRBlock(nn.Module):
    """Consecutive conv layers; the last block also holds the output conv and the residual."""

    def __init__(self, convs: list[ConvAct], head: ConvAct | None, residual: bool) -> None:
        super().__init__()
        self.convs = nn.Sequential(*convs)
        self.head = head
        self.residual = residual

    def forward(self, state, y, mask):
        h, x0 = state
        h = self.convs(h)
        if self.head is not None:
            h = self.head(h)
            if self.residual:
                h = x0 + h
        return h, x0


def block_sizes(n: int, blocks: int) -> list[int]:
    """Split ``n`` layers into ``blocks`` consecutive groups, earlier ones larger (11, 3: 4,4,3)."""
    return [n // blocks + (1 if i < n % blocks else 0) for i in range(blocks)]


class VDSR(BlockNet):
    block_attr = "blocks"

    def __init__(
        self,
        layers: int = 12,
        blocks: int = 3,
        channels: int = 64,
        residual: bool = True,
        complex: bool = False,
    ) -> None:
        super().__init__()
        if layers < 3:
            raise ConfigError(f"VDSR needs >= 3 conv layers (in, hidden, out), got {layers}")
        if not 1 <= blocks <= layers - 1:
            raise ConfigError(
                f"VDSR with {layers} layers can be split into 1..{layers - 1} blocks, got {blocks}"
            )
        self.depth, self.num_cascades, self.channels = layers, blocks, channels
        self.residual, self.complex = residual, complex
        io = self.io_channels  # complex images: (real, imag) channels
        convs = [ConvAct(io, channels, relu=True)]
        convs += [ConvAct(channels, channels, relu=True) for _ in range(layers - 2)]
        sizes = block_sizes(layers - 1, blocks)
        mods, start = [], 0
        for i, size in enumerate(sizes):
            head = ConvAct(channels, io, relu=False) if i == blocks - 1 else None
            mods.append(VDSRBlock(convs[start : start + size], head, residual))
            start += size
        self.blocks = nn.ModuleList(mods)

    @property
    def arch(self) -> dict:
        return with_complex(
            {
                "type": "vdsr",
                "layers": self.depth,
                "blocks": self.num_cascades,
                "channels": self.channels,
                "residual": self.residual,
            },
            self.complex,
        )

    def begin(self, x: torch.Tensor):
        return x, x

    def end(self, state) -> torch.Tensor:
        return state[0]

    def tap_groups(self) -> list[list[str]]:
        groups = []
        for b, block in enumerate(self.blocks):
            names = [f"blocks.{b}.convs.{k}" for k in range(len(cast(VDSRBlock, block).convs))]
            if block.head is not None:
                names.append(f"blocks.{b}.head")
            groups.append(names)
        return groups
