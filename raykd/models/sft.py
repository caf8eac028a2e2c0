"""Student-friendly teacher (SFT-KD-Recon, Gayathri et al., MIDL 2023).

Teacher blocks T1..TN plus a full student S1..SN (S1 exists so the state dict is a complete
student, but gets no gradient here). For i = 1..N−1 the state after Ti (the DC output of a
cascade; VDSR's feature map) goes through the *shared* student blocks S(i+1)..SN, giving branch
output x̂_S,i. Any pair of :class:`~raykd.models.base.BlockNet` with the same number of blocks
works: DC-CNN → DC-CNN, DC-UNet → DC-CNN (heterogeneous, Table 6), VDSR → VDSR.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from raykd.errors import CheckpointError, ConfigError
from raykd.models.base import BlockNet


class SFTOutput(NamedTuple):
    teacher: torch.Tensor
    branches: list[torch.Tensor]  # x̂_S,i for i = 1..N-1


class SFTModel(nn.Module):
    def __init__(self, teacher: BlockNet, student: BlockNet) -> None:
        super().__init__()
        if teacher.num_blocks != student.num_blocks:
            raise ConfigError(
                f"SFT needs the same number of blocks (cascades) in teacher and student, got "
                f"{teacher.num_blocks} and {student.num_blocks}"
            )
        if teacher.complex != student.complex:
            raise ConfigError(
                "SFT needs teacher and student of the same image kind (both complex or both "
                f"magnitude), got complex={teacher.complex} and complex={student.complex}"
            )
        if teacher.num_blocks < 2:
            raise ConfigError("SFT needs at least 2 blocks (one branch per teacher block 1..N-1)")
        if teacher.arch["type"] == "vdsr" and teacher.channels != student.channels:
            raise ConfigError(
                f"SFT with VDSR passes C-channel features from teacher to student blocks: "
                f"channels must match, got {teacher.channels} and {student.channels}"
            )
        self.teacher = teacher
        self.student = student

    @property
    def arch(self) -> dict:
        return {"type": "sft", "teacher": self.teacher.arch, "student": self.student.arch}

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> SFTOutput:
        branches = []
        n = self.teacher.num_blocks
        state = self.teacher.begin(x)
        for i, block in enumerate(self.teacher.block_modules):
            state = block(state, y, mask)
            if i < n - 1:
                branches.append(self.student.end(self.student.run_blocks(state, y, mask, i + 1)))
        return SFTOutput(self.teacher.end(state), branches)

    def untrained_student_parameters(self) -> list[nn.Parameter]:
        """Student parameters that no branch uses: S1 (branches start at S2), and anything of
        the student outside its blocks. SFT-KD-Recon leaves them at their initialisation (Fig. 2:
        "all the blocks of the student learn initial weights except the first block"); they are
        exactly the tensors :func:`load_student_blocks` does not load."""
        return [
            p
            for name, p in self.student.named_parameters()
            if (_block_index(name, self.student.block_attr) or 0) < 1
        ]


def _block_index(key: str, prefix: str) -> int | None:
    """Block number of a state-dict key under ``prefix`` ('cascades.3.conv...' → 3)."""
    if not key.startswith(prefix + "."):
        return None
    return int(key.split(".")[1])


def student_block_state(sft_state: dict[str, torch.Tensor], student: BlockNet) -> dict:
    """The S2..SN tensors of an SFT state dict, renamed for ``student``, checked strictly.

    Raises CheckpointError naming missing/unexpected/mis-shaped keys: the reference code's
    ``load_state_dict(strict=False)`` silently loaded 0 of 30 tensors.
    """
    prefix, blocks = "student.", student.block_attr

    def later_block(key: str) -> bool:
        index = _block_index(key, blocks)
        return index is not None and index >= 1

    wanted = {k: v for k, v in student.state_dict().items() if later_block(k)}
    found = {k[len(prefix) :]: v for k, v in sft_state.items() if k.startswith(prefix)}
    found = {k: v for k, v in found.items() if later_block(k)}
    missing = sorted(set(wanted) - set(found))
    unexpected = sorted(set(found) - set(wanted))
    shape_bad = [
        f"{k}: checkpoint {tuple(found[k].shape)} vs student {tuple(v.shape)}"
        for k, v in wanted.items()
        if k in found and found[k].shape != v.shape
    ]
    if missing or unexpected or shape_bad:
        raise CheckpointError(
            "SFT checkpoint does not match the student: "
            f"{len(missing)} missing ({missing[:4]}), {len(unexpected)} unexpected "
            f"({unexpected[:4]}), shape mismatches {shape_bad[:4]}; expected the student blocks "
            f"S2..S{student.num_blocks} of a {student.arch} student"
        )
    return found


def load_student_blocks(student: BlockNet, sft_state: dict[str, torch.Tensor]) -> int:
    """Copy S2..SN from an SFT state dict into ``student``; returns the number of tensors loaded."""
    blocks = student_block_state(sft_state, student)
    current = student.state_dict()
    current.update(blocks)
    student.load_state_dict(current, strict=True)
    return len(blocks)
