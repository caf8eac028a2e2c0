"""Attention transfer (AT): match per-sample spatial attention maps of teacher and student."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from raykd.distill.base import KDMethod
from raykd.distill.registry import register_kd_method
from raykd.errors import ConfigError

# Elements per fp32 chunk of the CPU reduction: 1 MiB, so the fp32 copy that vector_norm
# makes of a bf16 chunk stays in L2 instead of a full-size temporary in memory.
_CHUNK_ELEMENTS = 1 << 18


def channel_squares(feature: torch.Tensor) -> torch.Tensor:
    """``Σ_c f²`` per pixel ([B, C, *S] → [B, *S]) in fp32, for a feature in any float dtype.

    Not differentiable (see :class:`_ChannelSquares`). On the CPU the reduction follows the
    memory layout (``benchmarks/train_step.py``): with the channels strided (NCHW) it is one
    ``addcmul_`` pass per channel into a cache-sized fp32 accumulator (``vector_norm`` over a
    strided dim ran at 25–38 ms for a 4×32×240² fp32 map against 1.3–1.5 ms this way, AMD
    EPYC, AVX2 and AVX-512 kernels, and made the fp32 KD step ×0.87–0.90 of a plain loop); with
    the channels innermost (channels-last) an fp32 feature is one ``vector_norm`` call and a bf16
    one is reduced in chunks of a few rows, because one call over the whole map first converts
    all of it to an fp32 temporary (read 2 bytes, write and read 4 per element), which cost more
    than the rest of the AT loss (AMX Xeon).
    """
    if feature.device.type != "cpu" or feature.dim() < 3:
        return torch.linalg.vector_norm(feature, dim=1, dtype=torch.float32).pow(2)
    batch, channels, rows = feature.shape[0], feature.shape[1], feature.shape[2]
    if feature.stride(1) != 1 and channels > 1:
        out = feature[:, 0].to(torch.float32).square()
        for c in range(1, channels):
            out.addcmul_(feature[:, c], feature[:, c])
        return out
    if feature.dtype == torch.float32:
        return torch.linalg.vector_norm(feature, dim=1).pow(2)
    row_size = channels * feature[0, 0, 0].numel()
    step = max(1, _CHUNK_ELEMENTS // row_size)
    out = torch.empty((batch, *feature.shape[2:]), dtype=torch.float32, device=feature.device)
    for b in range(batch):
        for r in range(0, rows, step):
            torch.linalg.vector_norm(
                feature[b, :, r : r + step], dim=0, dtype=torch.float32, out=out[b, r : r + step]
            )
    return out.pow_(2)


def _square_grad(feature: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``∂(Σ_c f²)/∂f · g = 2·f·g`` broadcast over channels, in the feature's dtype and layout."""
    return (2 * grad).unsqueeze(1).to(feature.dtype)


class _ChannelSquares(torch.autograd.Function):
    """:func:`channel_squares` with a one-pass backward.

    Autograd's own backward of the fp32 computation broadcasts an fp32 [B, 1, H, W] gradient
    against the bf16 channels-last feature and converts the result back: three full-size
    passes. Here the gradient ``2·f·g`` is one multiply in the feature's own dtype and layout
    (it differs from the fp32 path only by bf16 rounding).
    """

    @staticmethod
    def forward(ctx, feature: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(feature)
        return channel_squares(feature)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (feature,) = ctx.saved_tensors
        return feature * _square_grad(feature, grad)


class _TapSquares(torch.autograd.Function):
    """The tapped feature passed on unchanged, plus its :func:`channel_squares`.

    Used at capture time (:meth:`AttentionTransfer.capture`): the gradient of the squares is
    added to the gradient arriving from the network's next layer in one ``addcmul`` pass,
    where the unfused path writes ``2·f·g`` and autograd then adds it (two more passes over
    the feature map, ≈ 8 % of a KD step at 240², AMX Xeon).
    """

    @staticmethod
    def forward(ctx, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(feature)
        return feature.view_as(feature), channel_squares(feature)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor | None, grad_sq: torch.Tensor | None):
        (feature,) = ctx.saved_tensors
        if grad_sq is None:
            return grad_out
        scale = _square_grad(feature, grad_sq)
        return feature * scale if grad_out is None else torch.addcmul(grad_out, feature, scale)


def attention_map(feature: torch.Tensor) -> torch.Tensor:
    """``Q = mean_c f²`` flattened to [B, H·W] and L2-normalised per sample (row-wise), in fp32.

    Mean or sum over channels gives the same map after the normalisation. The feature is read
    as it comes (bf16 under autocast), without a full-size fp32 copy.
    """
    return _normalised(_ChannelSquares.apply(feature))


def _normalised(squares: torch.Tensor) -> torch.Tensor:
    return F.normalize(squares.flatten(1), p=2, dim=1)


@register_kd_method("at")
class AttentionTransfer(KDMethod):
    """``L = Σ_pairs mean_{b, hw} (Q_T(b, hw) − Q_S(b, hw))²``, ``Q`` from :func:`attention_map`.

    Reference definition: RepDistiller ``distiller_zoo/AT.py`` (``at_loss``: squared difference
    of the per-sample L2-normalised maps, *mean* over batch and positions) with the pair losses
    *summed* (``helper/loops.py``, ``sum(loss_group)``), weight β = 1000
    (``scripts/run_cifar_distill.sh``, ``-b 1000``). The authors' code
    (szagoruyko/attention-transfer, ``cifar.py``) computes the same ``at_loss`` and
    ``β · Σ_groups`` with β = 1000. Canonical weight: 1000.

    Teacher and student maps must have the same spatial size (always true in DC-CNN); otherwise
    ConfigError rather than the reference's silent pooling. Channel counts may differ.
    What the loss keeps of a tap is its per-pixel channel sum of squares (:meth:`summarize`),
    so the full feature maps need not outlive the forward pass.
    """

    per_sample_mean = True  # DDP: no feature gather needed
    canonical_weight = 1000.0  # RepDistiller scripts/run_cifar_distill.sh, -b 1000
    citation = (
        "Zagoruyko, S. & Komodakis, N. Paying More Attention to Attention: Improving the "
        "Performance of Convolutional Neural Networks via Attention Transfer. ICLR 2017. "
        "Code: github.com/szagoruyko/attention-transfer; github.com/HobbitLong/RepDistiller."
    )

    def summarize(self, feature: torch.Tensor) -> torch.Tensor:
        return _ChannelSquares.apply(feature)

    def capture(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.is_grad_enabled() and feature.requires_grad:
            return _TapSquares.apply(feature)
        return feature, channel_squares(feature)

    def loss(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        self._check_sizes(pairs, spatial_from=2)
        return self.summary_loss([(self.summarize(t), self.summarize(s)) for t, s in pairs])

    def summary_loss(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        self._check_sizes(pairs, spatial_from=1)
        terms = [(_normalised(t) - _normalised(s)).pow(2).mean() for t, s in pairs]
        return torch.stack(terms).sum()

    def _check_sizes(self, pairs: list[tuple[torch.Tensor, torch.Tensor]], spatial_from: int):
        for i, (t, s) in enumerate(pairs):
            if t.shape[0] != s.shape[0] or t.shape[spatial_from:] != s.shape[spatial_from:]:
                names = list(zip(self.teacher_taps, self.student_taps, strict=True))
                t_name, s_name = names[i] if i < len(names) else ("?", "?")
                raise ConfigError(
                    f"KD method 'at': teacher tap '{t_name}' {tuple(t.shape)} and student tap "
                    f"'{s_name}' {tuple(s.shape)} differ in batch or spatial size"
                )
