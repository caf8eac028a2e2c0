"""Block-structured networks: what SFT, KD taps and checkpoints need from a model.

A :class:`BlockNet` maps ``(x, y, mask)`` to an image as ``end(B_N(...B_1(begin(x))))``. Blocks
take and return a *state* (the image for cascaded DC networks; features plus the input image
for VDSR), so a student-friendly teacher can hand its state after block i to the student's
blocks i+1..N whatever the architecture (SFT-KD-Recon's branches). ``tap_groups`` lists, per
block, the full-resolution activations in forward order: KD methods pick default taps from it.
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

import torch
from torch import nn

from raykd.models.fused import conv_relu, fusable


def with_complex(arch: dict[str, Any], complex: bool) -> dict[str, Any]:
    """``arch`` plus ``complex: True`` for two-channel complex networks; a magnitude network's
    arch dict stays as it always was, so existing checkpoints and identities still match."""
    return {**arch, "complex": True} if complex else arch


def count_parameters(model: nn.Module) -> int:
    """All parameters of a network (trainable or not): the size Table 8 and searches report."""
    return sum(p.numel() for p in model.parameters())


class ConvAct(nn.Sequential):
    """conv3x3 (+ ReLU): one tap point. The output is the activation KD methods read.

    Without autograd on the CPU's bf16 channels-last path (a KD teacher, evaluation, inference)
    the conv and its ReLU run as one oneDNN kernel (:mod:`raykd.models.fused`); the module's
    structure, state dict and taps are the same either way, and a hook on the inner conv or
    ReLU turns the fusion off.
    """

    def __init__(self, c_in: int, c_out: int, relu: bool) -> None:
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=True)]
        if relu:
            layers.append(nn.ReLU(inplace=False))
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self) == 2 and fusable(x, self):
            conv = cast(nn.Conv2d, self[0])  # fusable() checked it
            return conv_relu(x, conv.weight, conv.bias)
        return super().forward(x)


class BlockNet(nn.Module):
    block_attr: ClassVar[str] = "cascades"  # the ModuleList holding the blocks (state-dict prefix)
    complex: bool = False  # True: images are two channels (real, imag)

    @property
    def io_channels(self) -> int:
        """Image channels in and out: 2 for complex networks (real, imag), 1 for magnitude."""
        return 2 if self.complex else 1

    @property
    def block_modules(self) -> nn.ModuleList:
        return getattr(self, self.block_attr)

    @property
    def num_blocks(self) -> int:
        return len(self.block_modules)

    @property
    def arch(self) -> dict[str, Any]:
        """What defines the network; stored in checkpoints and checked on load."""
        raise NotImplementedError

    def begin(self, x: torch.Tensor) -> Any:
        return x

    def end(self, state: Any) -> torch.Tensor:
        return state

    def run_blocks(self, state: Any, y: torch.Tensor, mask: torch.Tensor, start: int = 0) -> Any:
        """Apply blocks ``start..N-1`` to a state (SFT student branches start mid-network)."""
        for block in self.block_modules[start:]:
            state = block(state, y, mask)
        return state

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.end(self.run_blocks(self.begin(x), y, mask))

    def tap_groups(self) -> list[list[str]]:
        """Per block, the names of its full-resolution activations in forward order."""
        raise NotImplementedError
