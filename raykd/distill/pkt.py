"""Probabilistic knowledge transfer (PKT): match the batch's cosine-similarity distributions."""

from __future__ import annotations

from typing import ClassVar

import torch

from raykd.distill.base import KDMethod
from raykd.distill.registry import register_kd_method
from raykd.errors import ConfigError

EPS = 1e-7


def similarity_distribution(feature: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``P_ij = K_ij / Σ_j K_ij`` with ``K_ij = (cos(f_i, f_j) + 1) / 2``: [B, B], rows sum to 1.

    ``f`` is the feature flattened to [B, −1] and divided by ``‖f‖₂ + eps`` per row (as the
    reference does; an all-zero row stays zero). Mapping the cosine to [0, 1] keeps every entry
    a valid (unnormalised) probability before the row normalisation.
    """
    f = feature.flatten(1)
    f = f / (f.norm(p=2, dim=1, keepdim=True) + eps)
    kernel = (f @ f.t() + 1.0) / 2.0
    return kernel / kernel.sum(dim=1, keepdim=True)


def pkt_divergence(teacher: torch.Tensor, student: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``mean_{i,j} P_T,ij log((P_T,ij + ε) / (P_S,ij + ε))`` over all B² entries: a scalar.

    This is the reference's reduction: the row-wise KL divergence averaged over rows *and*
    divided by B once more (``torch.mean`` over the B×B matrix).
    """
    p_t = similarity_distribution(teacher, eps)
    p_s = similarity_distribution(student, eps)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


@register_kd_method("pkt")
class ProbabilisticKnowledgeTransfer(KDMethod):
    """``L = Σ_pairs mean_{i,j} P_T,ij log((P_T,ij+ε)/(P_S,ij+ε))``, ``ε = 1e-7``.

    Reference definition: RepDistiller ``distiller_zoo/PKT.py`` ("code from author",
    passalis/probabilistic_kt: ``cosine_similarity_loss``), i.e. ``torch.mean`` over the B×B
    matrix = KL(P_T‖P_S) averaged over rows and divided by B; weight β = 30000 (``-b 30000``).
    Canonical weight: 30000. RepDistiller applies it to one (pooled) feature; several tap pairs
    are summed, as for its multi-layer losses. ``P`` from :func:`similarity_distribution`.

    The student learns to reproduce the teacher's conditional distribution of "which other
    sample in the batch is similar to me" (cosine kernel, as recommended by the paper). ``P`` is
    B×B, so teacher and student may differ in channels and spatial size (only the batch size must
    agree), and the row L2 normalisation makes the loss invariant to feature scale. There are no
    trainable parameters.
    """

    canonical_weight: ClassVar[float] = 30000.0
    citation: ClassVar[str] = (
        "Passalis, N. & Tefas, A. Learning Deep Representations with Probabilistic Knowledge "
        "Transfer. ECCV 2018. Code: github.com/passalis/probabilistic_kt; "
        "github.com/HobbitLong/RepDistiller."
    )

    def loss(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        terms = []
        for t, s in pairs:
            if t.shape[0] != s.shape[0]:
                raise ConfigError(
                    f"KD method 'pkt': batch sizes differ ({t.shape[0]} vs {s.shape[0]})"
                )
            terms.append(pkt_divergence(t, s))
        return torch.stack(terms).sum()
