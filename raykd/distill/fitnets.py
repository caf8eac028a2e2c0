"""FitNets: regress the student's hint layer onto the teacher's guided layer with an MSE."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from raykd.distill.base import KDMethod, tap_channels
from raykd.distill.registry import register_kd_method
from raykd.errors import ConfigError
from raykd.models.base import BlockNet


@register_kd_method("fitnets")
class FitNets(KDMethod):
    """``L = Σ_pairs mean_{b, c, h, w} (r_i(f_S) − f_T)²``; ``r_i`` = 1x1 conv if channels differ.

    Reference definition: RepDistiller ``distiller_zoo/FitNet.py`` (``HintLoss`` =
    ``nn.MSELoss()``, the *mean* over every element) on one hint pair, weight β = 100
    (``scripts/run_cifar_distill.sh``, ``-b 100``). Canonical weight: 100. With several tap pairs
    the pair losses are summed, as RepDistiller does for its multi-layer losses (AT, NST).
    Deviation, scale-neutral: the reference regressor is conv3x3 + BN + ReLU; here it is a 1x1
    conv, or the identity when the channel counts already match, because the default hint is a
    cascade's linear output (a ReLU regressor could not reproduce its negative values). The loss
    reduction is unchanged, so the weight is too.

    One regressor per tap pair (``self.regressors``), built from the tap channel counts; its
    parameters are ordinary trainable parameters that the trainer adds to the optimiser. Using
    no regressor when channels already match follows the paper's intent (the regressor only
    exists to bridge a width mismatch) and keeps the method parameter-free in the default case.
    """

    per_sample_mean: ClassVar[bool] = True  # DDP: no feature gather needed
    canonical_weight: ClassVar[float] = 100.0
    citation: ClassVar[str] = (
        "Romero, A., Ballas, N., Kahou, S. E., Chassang, A., Gatta, C. & Bengio, Y. "
        "FitNets: Hints for Thin Deep Nets. ICLR 2015. Code: github.com/HobbitLong/RepDistiller."
    )

    def __init__(
        self,
        teacher: BlockNet,
        student: BlockNet,
        teacher_taps: list[str] | None = None,
        student_taps: list[str] | None = None,
    ) -> None:
        super().__init__(teacher, student, teacher_taps, student_taps)
        regressors: list[nn.Module] = []
        for t_name, s_name in zip(self.teacher_taps, self.student_taps, strict=True):
            c_t, c_s = tap_channels(teacher, t_name), tap_channels(student, s_name)
            regressors.append(nn.Conv2d(c_s, c_t, kernel_size=1) if c_s != c_t else nn.Identity())
        self.regressors = nn.ModuleList(regressors)

    @classmethod
    def default_taps(cls, teacher: BlockNet, student: BlockNet) -> tuple[list[str], list[str]]:
        """Reference: the last conv of cascade index 2 (of the last cascade if there are fewer)."""
        t_groups, s_groups = teacher.tap_groups(), student.tap_groups()
        return (
            [t_groups[min(2, len(t_groups) - 1)][-1]],
            [s_groups[min(2, len(s_groups) - 1)][-1]],
        )

    def loss(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        terms = []
        for i, (t, s) in enumerate(pairs):
            hint = self.regressors[i](s)
            if hint.shape != t.shape:
                raise ConfigError(
                    f"KD method 'fitnets': regressed student tap '{self.student_taps[i]}' "
                    f"{tuple(hint.shape)} does not match teacher tap '{self.teacher_taps[i]}' "
                    f"{tuple(t.shape)}"
                )
            terms.append(F.mse_loss(hint, t))
        return torch.stack(terms).sum()
