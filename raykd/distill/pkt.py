"""Probabilistic knowledge transfer (PKT): match the batch's cosine-similarity distributions."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from raykd.distill.base import KDMethod
from raykd.distill.registry import register_kd_method
from raykd.errors import ConfigError

EPS = 1e-7


def similarity_distribution(feature: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``P_ij = K_ij / Σ_j K_ij`` with ``K_ij = (cos(f_i, f_j) + 1) / 2``: [B, B], rows sum to 1.

    ``f`` is the feature flattened to [B, −1] and L2-normalised per row (``eps`` guards an
    all-zero row). Mapping the cosine to [0, 1] keeps every entry a valid (unnormalised)
    probability before the row normalisation.
    """
    f = F.normalize(feature.flatten(1), p=2, dim=1, eps=eps)
    kernel = (f @ f.t() + 1.0) / 2.0
    return kernel / kernel.sum(dim=1, keepdim=True)


def pkt_divergence(teacher: torch.Tensor, student: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``KL(P_T ‖ P_S) = mean_i Σ_j P_T,ij log((P_T,ij + ε) / (P_S,ij + ε))``: a scalar."""
    p_t = similarity_distribution(teacher, eps)
    p_s = similarity_distribution(student, eps)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).sum(dim=1).mean()


@register_kd_method("pkt")
class ProbabilisticKnowledgeTransfer(KDMethod):
    """``L = mean_pairs KL(P_T ‖ P_S)``, ``P`` from :func:`similarity_distribution`, ``ε = 1e-7``.

    The student learns to reproduce the teacher's conditional distribution of "which other
    sample in the batch is similar to me" (cosine kernel, as recommended by the paper). ``P`` is
    B×B, so teacher and student may differ in channels and spatial size (only the batch size must
    agree), and the row L2 normalisation makes the loss invariant to feature scale. There are no
    trainable parameters.
    """

    citation: ClassVar[str] = (
        "Passalis, N. & Tefas, A. Learning Deep Representations with Probabilistic Knowledge "
        "Transfer. ECCV 2018."
    )

    def loss(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        terms = []
        for t, s in pairs:
            if t.shape[0] != s.shape[0]:
                raise ConfigError(
                    f"KD method 'pkt': batch sizes differ ({t.shape[0]} vs {s.shape[0]})"
                )
            terms.append(pkt_divergence(t, s))
        return torch.stack(terms).mean()
