"""Neuron selectivity transfer (NST): match the distributions of channel activation maps (MMD)."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from raykd.distill.base import KDMethod
from raykd.distill.registry import register_kd_method
from raykd.errors import ConfigError


def channel_maps(feature: torch.Tensor) -> torch.Tensor:
    """Each channel's spatial map flattened and L2-normalised over HW: [B, C, HW]."""
    return F.normalize(feature.flatten(2), p=2, dim=2)


def poly_mmd2(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Squared MMD per sample with ``k(a, b) = (aᵀb)²``, averaged over the batch: a scalar.

    ``MMD² = mean_ij k(t_i, t_j) + mean_ij k(s_i, s_j) − 2 mean_ij k(t_i, s_j)`` where ``t_i``
    (``s_j``) are the teacher's (student's) channel maps from :func:`channel_maps`; the two sets
    may have different sizes (channel counts), the maps must have the same length (HW).
    """
    t, s = channel_maps(teacher), channel_maps(student)
    k_tt = (t @ t.transpose(1, 2)).pow(2).mean(dim=(1, 2))
    k_ss = (s @ s.transpose(1, 2)).pow(2).mean(dim=(1, 2))
    k_ts = (t @ s.transpose(1, 2)).pow(2).mean(dim=(1, 2))
    return (k_tt + k_ss - 2.0 * k_ts).mean()


@register_kd_method("nst")
class NeuronSelectivityTransfer(KDMethod):
    """``L = Σ_pairs MMD²(T, S)`` with the polynomial kernel ``(aᵀb)²`` (d = 2, c = 0).

    Reference definition: RepDistiller ``distiller_zoo/NST.py`` (per-channel maps L2-normalised
    over HW; ``mean k(t,t) + mean k(s,s) − 2 mean k(s,t)``, each mean over batch and both channel
    axes), pair losses summed (``helper/loops.py``), weight β = 50 (``-b 50``). Canonical
    weight: 50.

    Each channel's L2-normalised spatial map is a sample of "where neurons fire"; NST makes the
    student's set of maps distributed like the teacher's, so channel counts may differ but the
    spatial sizes must agree. The quadratic kernel is the paper's best-performing choice (it
    relates NST to attention transfer). The per-map normalisation makes the loss invariant to
    feature scale; an all-zero map (a dead ReLU channel) becomes the zero vector. There are no
    trainable parameters.
    """

    per_sample_mean: ClassVar[bool] = True  # DDP: no feature gather needed
    canonical_weight: ClassVar[float] = 50.0
    citation: ClassVar[str] = (
        "Huang, Z. & Wang, N. Like What You Like: Knowledge Distill via Neuron Selectivity "
        "Transfer. arXiv:1707.01219, 2017. Code: github.com/HobbitLong/RepDistiller."
    )

    def loss(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        terms = []
        for i, (t, s) in enumerate(pairs):
            if t.shape[0] != s.shape[0] or t.shape[2:] != s.shape[2:]:
                t_name = self.teacher_taps[i] if i < len(self.teacher_taps) else f"#{i}"
                s_name = self.student_taps[i] if i < len(self.student_taps) else f"#{i}"
                raise ConfigError(
                    f"KD method 'nst': teacher tap '{t_name}' {tuple(t.shape)} and student tap "
                    f"'{s_name}' {tuple(s.shape)} must share batch size and spatial size"
                )
            terms.append(poly_mmd2(t, s))
        return torch.stack(terms).sum()
