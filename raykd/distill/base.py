"""Base class of KD methods: a loss over named teacher/student features.

A method declares which taps it reads (``teacher_taps[i]`` is paired with ``student_taps[i]``;
defaults come from :meth:`KDMethod.default_taps`, the reference choice, and configuration can
override them) and computes ``forward(teacher_feats, student_feats) -> scalar``. Methods with
trainable parts (FitNets' regressor) expose them as ordinary parameters; the trainer adds them
to the optimiser.

What the loss reads of a tap is the method's *summary* of it (:meth:`KDMethod.summarize`: by
default the feature itself, as an fp32 copy). The KD stage computes summaries when the tap
fires (:meth:`KDMethod.capture`), so a method whose summary is small (AT's attention map) can
fuse its gradient into the network's own and never keep the full maps.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from raykd.errors import ConfigError
from raykd.models.base import BlockNet


def expand_taps(patterns: list[str], model: BlockNet) -> list[str]:
    """Expand ``{c}`` over blocks (cascades) and ``{last}``/``{hidden}`` to the index of the last /
    last hidden layer of that block (DC-CNN: ``cascades.{c}.conv.{hidden}``)."""
    groups = model.tap_groups()
    out: list[str] = []
    for pattern in patterns:
        blocks = range(model.num_blocks) if "{c}" in pattern else [0]
        for c in blocks:
            n = len(groups[c])
            out.append(pattern.format(c=c, last=n - 1, hidden=max(0, n - 2)))
    return out


def tap_channels(model: BlockNet, name: str) -> int:
    """Output channels of the conv behind a tap name."""
    module = dict(model.named_modules()).get(name)
    if module is None:
        raise ConfigError(
            f"unknown feature tap '{name}' for {type(model).__name__}; its taps per block: "
            f"{model.tap_groups()[:1]} ..."
        )
    conv = module[0] if isinstance(module, nn.Sequential) else module
    if not isinstance(conv, nn.Conv2d):
        raise ConfigError(f"feature tap '{name}' is not a conv layer of {type(model).__name__}")
    return int(conv.out_channels)


class KDMethod(nn.Module):
    name: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    # The weight published with the reference loss definition (RepDistiller's
    # scripts/run_cifar_distill.sh; cite it in the class docstring): ``kd.weight``'s default.
    # These are classification weights: for reconstruction, ``kd.balance`` calibrates instead.
    canonical_weight: ClassVar[float] = 1.0
    # Methods with a step before distillation (factor transfer's paraphraser) set this and
    # implement ``pretrain(teacher_features, steps)``; the trainer runs it on every rank, before
    # the optimiser and DDP exist, on the same unshuffled global batches (Trainer._pretrain_method).
    needs_pretraining: ClassVar[bool] = False
    # True when the loss is a mean over samples of per-sample terms: DDP ranks may then compute
    # it on their local batch (gradient averaging gives the global-batch loss). False, the safe
    # default, makes the KD stage gather the features of all ranks first (batch-coupled losses).
    per_sample_mean: ClassVar[bool] = False

    def __init__(
        self,
        teacher: BlockNet,
        student: BlockNet,
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
    def default_taps(cls, teacher: BlockNet, student: BlockNet) -> tuple[list[str], list[str]]:
        """Reference taps: teacher conv3 vs student conv2 of every cascade (the middle layers).

        In general: per block, the teacher's 3rd and the student's 2nd tap of ``tap_groups``
        (capped at the block's last hidden tap), pairing blocks one to one.
        """
        t_groups, s_groups = teacher.tap_groups(), student.tap_groups()
        if len(t_groups) != len(s_groups):
            raise ConfigError(
                f"default taps pair blocks one to one, but the teacher has {len(t_groups)} and "
                f"the student {len(s_groups)}; set kd.teacher_taps and kd.student_taps"
            )
        return (
            [g[max(0, min(2, len(g) - 2))] for g in t_groups],
            [g[max(0, min(1, len(g) - 2))] for g in s_groups],
        )

    def summarize(self, feature: torch.Tensor) -> torch.Tensor:
        """What :meth:`summary_loss` reads of a tapped feature [B, C, H, W] (differentiable).

        Default: an fp32 copy, safe for Gram matrices and the like under bf16 autocast. A
        method that reduces the feature (AT) returns the reduction, accumulated in fp32.
        """
        return feature.float()

    def capture(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(output passed on to the next layer, summary)`` when the tap fires.

        Default: the output unchanged and :meth:`summarize`. A method may return the output
        through an autograd function of its own, to fuse its gradient with the network's.
        """
        return feature, self.summarize(feature)

    def forward(
        self,
        teacher_feats: dict[str, torch.Tensor],
        student_feats: dict[str, torch.Tensor],
        *,
        summarized: bool = False,
    ) -> torch.Tensor:
        """The loss over the tapped features by name (``summarized``: already summaries, as
        :class:`~raykd.models.taps.FeatureTaps` with ``capture=method.capture`` gives them)."""
        get = (lambda f: f) if summarized else self.summarize
        pairs = [
            (get(teacher_feats[t]), get(student_feats[s]))
            for t, s in zip(self.teacher_taps, self.student_taps, strict=True)
        ]
        return self.summary_loss(pairs)

    def summary_loss(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """The loss over (teacher, student) summary pairs; by default the summaries are the
        features, so this is :meth:`loss`."""
        return self.loss(pairs)

    def loss(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """The method's loss over (teacher, student) feature pairs, each [B, C, H, W]."""
        raise NotImplementedError
