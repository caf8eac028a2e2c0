"""Attention transfer (AT): match per-sample spatial attention maps of teacher and student."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from raykd.distill.base import KDMethod
from raykd.distill.registry import register_kd_method
from raykd.errors import ConfigError


def attention_map(feature: torch.Tensor) -> torch.Tensor:
    """``Q = Σ_c f²`` flattened to [B, H·W] and L2-normalised per sample (row-wise).

    Normalising per sample (not over the whole batch, as the reference code does) keeps each
    sample's loss independent of the other samples in the batch.
    """
    return F.normalize(feature.pow(2).sum(dim=1).flatten(1), p=2, dim=1)


@register_kd_method("at")
class AttentionTransfer(KDMethod):
    """``L = mean_pairs mean_b ‖Q_T(b) − Q_S(b)‖₂`` with ``Q`` from :func:`attention_map`.

    The paper's L2 norm of the difference is used (the reference used L1). Teacher and student
    maps must have the same spatial size (always true in DC-CNN); otherwise ConfigError rather
    than silent interpolation. Channel counts may differ: the channel axis is summed out.
    """

    per_sample_mean: ClassVar[bool] = True  # DDP: no feature gather needed
    citation: ClassVar[str] = (
        "Zagoruyko, S. & Komodakis, N. Paying More Attention to Attention: Improving the "
        "Performance of Convolutional Neural Networks via Attention Transfer. ICLR 2017."
    )

    def loss(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        terms = []
        for i, (t, s) in enumerate(pairs):
            if t.shape[0] != s.shape[0] or t.shape[2:] != s.shape[2:]:
                names = list(zip(self.teacher_taps, self.student_taps, strict=True))
                t_name, s_name = names[i] if i < len(names) else ("?", "?")
                raise ConfigError(
                    f"KD method 'at': teacher tap '{t_name}' {tuple(t.shape)} and student tap "
                    f"'{s_name}' {tuple(s.shape)} differ in batch or spatial size"
                )
            terms.append((attention_map(t) - attention_map(s)).norm(p=2, dim=1).mean())
        return torch.stack(terms).mean()
