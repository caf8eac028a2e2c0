"""Similarity-preserving KD (SP): match the batch's pairwise similarity matrices."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from raykd.distill.base import KDMethod
from raykd.distill.registry import register_kd_method
from raykd.errors import ConfigError


def similarity_matrix(feature: torch.Tensor) -> torch.Tensor:
    """``G = normalize_rows(f fᵀ)`` with ``f`` flattened to [B, −1]: [B, B]."""
    f = feature.flatten(1)
    return F.normalize(f @ f.t(), p=2, dim=1)


@register_kd_method("sp")
class SimilarityPreserving(KDMethod):
    """``L = Σ_pairs ‖G_T − G_S‖²_F / B²`` with ``G`` from :func:`similarity_matrix`.

    Reference definition: RepDistiller ``distiller_zoo/SP.py`` ("verified by original author":
    ``G = normalize_rows(f fᵀ)``, squared Frobenius norm of the difference divided by B²), pair
    losses summed (``helper/loops.py``; the paper's Eq. 4 sums over layer pairs too), weight
    γ = 3000 (``-b 3000``, the paper's CIFAR setting). Canonical weight: 3000.

    ``G`` is B×B, so teacher and student may differ in channels and spatial size; only the
    batch size must agree. Row normalisation makes the loss invariant to feature scale.
    """

    canonical_weight: ClassVar[float] = 3000.0
    citation: ClassVar[str] = (
        "Tung, F. & Mori, G. Similarity-Preserving Knowledge Distillation. ICCV 2019. "
        "Code: github.com/HobbitLong/RepDistiller."
    )

    def loss(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        terms = []
        for t, s in pairs:
            b = s.shape[0]
            if t.shape[0] != b:
                raise ConfigError(f"KD method 'sp': batch sizes differ ({t.shape[0]} vs {b})")
            terms.append((similarity_matrix(t) - similarity_matrix(s)).pow(2).sum() / b**2)
        return torch.stack(terms).sum()
