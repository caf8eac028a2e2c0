"""Student-friendly teacher (SFT-KD-Recon, Gayathri et al., MIDL 2023).

Teacher blocks T1..TN plus a full student S1..SN (S1 exists so the state dict is a complete
student, but gets no gradient here). For i = 1..N−1 the DC output after Ti goes through the
*shared* student blocks S(i+1)..SN, giving branch output x̂_S,i.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from raykd.errors import CheckpointError, ConfigError
from raykd.models.dccnn import DCCNN


class SFTOutput(NamedTuple):
    teacher: torch.Tensor
    branches: list[torch.Tensor]  # x̂_S,i for i = 1..N-1


class SFTModel(nn.Module):
    def __init__(self, teacher: DCCNN, student: DCCNN) -> None:
        super().__init__()
        if teacher.num_cascades != student.num_cascades:
            raise ConfigError(
                f"SFT needs the same number of cascades in teacher and student, got "
                f"{teacher.num_cascades} and {student.num_cascades}"
            )
        if teacher.num_cascades < 2:
            raise ConfigError("SFT needs at least 2 cascades (one branch per teacher block 1..N-1)")
        self.teacher = teacher
        self.student = student

    @property
    def arch(self) -> dict:
        return {"type": "sft", "teacher": self.teacher.arch, "student": self.student.arch}

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> SFTOutput:
        branches = []
        n = self.teacher.num_cascades
        for i, cascade in enumerate(self.teacher.cascades):
            x = cascade(x, y, mask)
            if i < n - 1:
                branches.append(self.student.run_cascades(x, y, mask, start=i + 1))
        return SFTOutput(x, branches)


def student_block_state(sft_state: dict[str, torch.Tensor], student: DCCNN) -> dict:
    """The S2..SN tensors of an SFT state dict, renamed for ``student``, checked strictly.

    Raises CheckpointError naming missing/unexpected/mis-shaped keys: the reference code's
    ``load_state_dict(strict=False)`` silently loaded 0 of 30 tensors.
    """
    prefix = "student."
    wanted = {
        k: v
        for k, v in student.state_dict().items()
        if k.startswith("cascades.") and int(k.split(".")[1]) >= 1
    }
    found = {k[len(prefix) :]: v for k, v in sft_state.items() if k.startswith(prefix)}
    found = {
        k: v for k, v in found.items() if k.startswith("cascades.") and int(k.split(".")[1]) >= 1
    }
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
            f"S2..S{student.num_cascades} of a D{student.depth}C{student.num_cascades} student"
        )
    return found


def load_student_blocks(student: DCCNN, sft_state: dict[str, torch.Tensor]) -> int:
    """Copy S2..SN from an SFT state dict into ``student``; returns the number of tensors loaded."""
    blocks = student_block_state(sft_state, student)
    current = student.state_dict()
    current.update(blocks)
    student.load_state_dict(current, strict=True)
    return len(blocks)
