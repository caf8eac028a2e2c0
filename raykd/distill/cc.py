"""Correlation congruence (CC): match how neighbouring samples' embeddings deviate."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from raykd.distill.base import KDMethod, tap_channels
from raykd.distill.registry import register_kd_method
from raykd.errors import ConfigError
from raykd.models.base import BlockNet


def cc_loss(e_s: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
    """``mean_{i<B−1} Σ_d |e_S − e_T|_{i,d} · |e_S − e_T|_{i+1,d}`` for embeddings [B, D]."""
    delta = (e_s - e_t).abs()
    return (delta[:-1] * delta[1:]).sum(dim=1).mean()


@register_kd_method("cc")
class CorrelationCongruence(KDMethod):
    """``L = Σ_pairs mean_{i<B−1} Σ_d δ_{i,d} δ_{i+1,d}``, ``δ = |E_S(gap(f_S)) − E_T(gap(f_T))|``.

    Reference definition: RepDistiller ``distiller_zoo/CC.py`` (the class in use, "code emailed
    to me by the original author"): absolute embedding differences of consecutive samples in the
    batch, multiplied, summed over the embedding dimension and averaged over the B − 1 products;
    no square. ``E_S`` and ``E_T`` are trainable linear embeddings to ``dim`` = 128 (RepDistiller
    ``LinearEmbed``, ``--feat_dim 128``) of the globally average-pooled tap features (the
    reference embeds the pooled penultimate feature); both are trained with the student. Weight
    β = 0.02 (``-b 0.02``). Canonical weight: 0.02. Several tap pairs are summed. Batch size must
    be at least 2. Both embeddings get gradients only from this loss; as in the reference,
    nothing stops them from shrinking, so the term can fade during training.
    """

    canonical_weight: ClassVar[float] = 0.02
    citation: ClassVar[str] = (
        "Peng, B., Jin, X., Liu, J., Li, D., Wu, Y., Liu, Y., Zhou, S. & Zhang, Z. "
        "Correlation Congruence for Knowledge Distillation. ICCV 2019. "
        "Code: github.com/HobbitLong/RepDistiller (distiller_zoo/CC.py)."
    )

    def __init__(
        self,
        teacher: BlockNet,
        student: BlockNet,
        teacher_taps: list[str] | None = None,
        student_taps: list[str] | None = None,
        *,
        dim: int = 128,
    ) -> None:
        super().__init__(teacher, student, teacher_taps, student_taps)
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"KD method 'cc': dim must be an integer >= 1, got {dim!r}")
        self.dim = dim
        self.embed_t = nn.ModuleList(
            nn.Linear(tap_channels(teacher, n), dim) for n in self.teacher_taps
        )
        self.embed_s = nn.ModuleList(
            nn.Linear(tap_channels(student, n), dim) for n in self.student_taps
        )

    def loss(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        terms = []
        for i, (t, s) in enumerate(pairs):
            b = s.shape[0]
            if t.shape[0] != b:
                raise ConfigError(f"KD method 'cc': batch sizes differ ({t.shape[0]} vs {b})")
            if b < 2:
                raise ConfigError("KD method 'cc': needs a batch of at least 2 (data.batch_size)")
            e_t = self.embed_t[i](t.mean(dim=(2, 3)))
            e_s = self.embed_s[i](s.mean(dim=(2, 3)))
            terms.append(cc_loss(e_s, e_t))
        return torch.stack(terms).sum()
