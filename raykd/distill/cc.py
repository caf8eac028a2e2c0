"""Correlation congruence (CC): match the batch's kernel (correlation) matrices of embeddings."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F

from raykd.distill.base import KDMethod
from raykd.distill.registry import register_kd_method
from raykd.errors import ConfigError
from raykd.models.base import BlockNet


def embed(feature: torch.Tensor) -> torch.Tensor:
    """Global-average-pooled feature [B, C], L2-normalised per sample."""
    return F.normalize(feature.mean(dim=(2, 3)), p=2, dim=1)


def rbf_taylor_kernel(e: torch.Tensor, gamma: float, order: int) -> torch.Tensor:
    """``K_ij = Σ_{p=0..P} e^{−2γ} (2γ)^p / p! (e_i·e_j)^p`` for unit-norm rows of ``e``: [B, B].

    For unit vectors ``exp(−γ‖a−b‖²) = e^{−2γ} exp(2γ a·b)``; this is the order-P Taylor
    expansion of the second factor.
    """
    dot = e @ e.t()
    kernel = torch.zeros_like(dot)
    for p in range(order + 1):
        kernel = kernel + (2.0 * gamma) ** p / math.factorial(p) * dot.pow(p)
    return math.exp(-2.0 * gamma) * kernel


@register_kd_method("cc")
class CorrelationCongruence(KDMethod):
    """``L = mean_pairs ‖C_T − C_S‖²_F / B²``, ``C = rbf_taylor_kernel(embed(f))``.

    Choice: the Gaussian-RBF kernel in its order-P Taylor form (``order=2``, ``gamma=0.4``, the
    paper's setting) rather than the plain correlation form, applied to GAP + L2-normalised tap
    features instead of a learned embedding head, so the method has no parameters and teacher
    and student embedding widths may differ (C is B×B).
    """

    citation: ClassVar[str] = (
        "Peng, B., Jin, X., Liu, J., Li, D., Wu, Y., Liu, Y., Zhou, S. & Zhang, Z. "
        "Correlation Congruence for Knowledge Distillation. ICCV 2019."
    )

    def __init__(
        self,
        teacher: BlockNet,
        student: BlockNet,
        teacher_taps: list[str] | None = None,
        student_taps: list[str] | None = None,
        *,
        gamma: float = 0.4,
        order: int = 2,
    ) -> None:
        super().__init__(teacher, student, teacher_taps, student_taps)
        if not gamma > 0:
            raise ConfigError(f"KD method 'cc': gamma must be > 0, got {gamma}")
        if isinstance(order, bool) or not isinstance(order, int) or order < 0:
            raise ConfigError(f"KD method 'cc': order must be an integer >= 0, got {order!r}")
        self.gamma, self.order = float(gamma), order

    def loss(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        terms = []
        for t, s in pairs:
            b = s.shape[0]
            if t.shape[0] != b:
                raise ConfigError(f"KD method 'cc': batch sizes differ ({t.shape[0]} vs {b})")
            c_t = rbf_taylor_kernel(embed(t), self.gamma, self.order)
            c_s = rbf_taylor_kernel(embed(s), self.gamma, self.order)
            terms.append((c_t - c_s).pow(2).sum() / b**2)
        return torch.stack(terms).mean()
