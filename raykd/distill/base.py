"""Base class of KD methods: a loss over named teacher/student features.

A method declares which taps it reads (``teacher_taps[i]`` is paired with ``student_taps[i]``;
defaults come from :meth:`KDMethod.default_taps`, the reference choice, and configuration can
override them) and computes ``forward(teacher_feats, student_feats) -> scalar``. Methods with
trainable parts (FitNets' regressor) expose them as ordinary parameters; the trainer adds them
to the optimiser.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from raykd.errors import ConfigError
from raykd.models.dccnn import DCCNN


def expand_taps(patterns: list[str], model: DCCNN) -> list[str]:
    """Expand ``{c}`` over cascades and ``{last}``/``{hidden}`` to the last / last hidden conv."""
    out: list[str] = []
    for pattern in patterns:
        fields = {"last": model.depth - 1, "hidden": model.depth - 2}
        if "{c}" in pattern:
            out += [pattern.format(c=c, **fields) for c in range(model.num_cascades)]
        else:
            out.append(pattern.format(**fields))
    return out


def tap_channels(model: nn.Module, name: str) -> int:
    """Output channels of the conv behind a tap name."""
    module = dict(model.named_modules()).get(name)
    if module is None:
        raise ConfigError(f"unknown feature tap '{name}' for {type(model).__name__}")
    conv = module[0] if isinstance(module, nn.Sequential) else module
    return int(conv.out_channels)


class KDMethod(nn.Module):
    name: ClassVar[str] = ""
    citation: ClassVar[str] = ""

    def __init__(
        self,
        teacher: DCCNN,
        student: DCCNN,
        teacher_taps: list[str] | None = None,
        student_taps: list[str] | None = None,
    ) -> None:
        super().__init__()
        default_t, default_s = self.default_taps(teacher, student)
        self.teacher_taps = expand_taps(teacher_taps, teacher) if teacher_taps else default_t
        self.student_taps = expand_taps(student_taps, student) if student_taps else default_s
        if len(self.teacher_taps) != len(self.student_taps):
            raise ConfigError(
                f"KD method '{self.name}': {len(self.teacher_taps)} teacher taps but "
                f"{len(self.student_taps)} student taps; they are paired one to one"
            )
        if not self.teacher_taps:
            raise ConfigError(f"KD method '{self.name}': no feature taps configured")
        for name in self.teacher_taps:
            tap_channels(teacher, name)
        for name in self.student_taps:
            tap_channels(student, name)

    @classmethod
    def default_taps(cls, teacher: DCCNN, student: DCCNN) -> tuple[list[str], list[str]]:
        """Reference taps: teacher conv3 vs student conv2 of every cascade (the middle layers)."""
        t = min(2, teacher.depth - 2)
        s = min(1, student.depth - 2)
        return (
            [f"cascades.{c}.conv.{t}" for c in range(teacher.num_cascades)],
            [f"cascades.{c}.conv.{s}" for c in range(student.num_cascades)],
        )

    def forward(
        self, teacher_feats: dict[str, torch.Tensor], student_feats: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        pairs = [
            (teacher_feats[t].float(), student_feats[s].float())
            for t, s in zip(self.teacher_taps, self.student_taps, strict=True)
        ]
        return self.loss(pairs)

    def loss(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """The method's loss over (teacher, student) feature pairs, each [B, C, H, W]."""
        raise NotImplementedError


def build_kd_method(
    name: str,
    teacher: DCCNN,
    student: DCCNN,
    teacher_taps: list[str] | None = None,
    student_taps: list[str] | None = None,
    **options,
) -> KDMethod:
    from raykd.distill.registry import get_kd_method

    cls = get_kd_method(name)
    try:
        return cls(teacher, student, teacher_taps, student_taps, **options)
    except TypeError as exc:
        raise ConfigError(f"KD method '{name}': bad options {options} ({exc})") from exc
