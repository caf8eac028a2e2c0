"""Factor transfer (FT): match "factors" of a pre-trained teacher paraphraser with a translator."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from raykd.distill.base import KDMethod, tap_channels
from raykd.distill.registry import register_kd_method
from raykd.errors import ConfigError
from raykd.models.base import BlockNet


def conv_stack(widths: list[int], final_activation: bool) -> nn.Sequential:
    """conv3x3 (stride 1, padding 1) ``widths[i] → widths[i+1]``, each + LeakyReLU(0.1).

    ``final_activation=False`` leaves the last conv linear.
    """
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1))
        if final_activation or i < len(widths) - 2:
            layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


def translator(channels: int, factors: int) -> nn.Sequential:
    """Student side: ``C_s → C_s → m → m`` convs with LeakyReLU (same shape as an encoder)."""
    return conv_stack([channels, channels, factors, factors], final_activation=True)


class Paraphraser(nn.Module):
    """Teacher-side convolutional autoencoder: ``encoder: C_t → C_t → m → m`` (LeakyReLU after
    every conv; its output is the factor), ``decoder: m → m → C_t → C_t`` (last conv linear, so
    any tap, including a non-ReLU one, can be reconstructed). Trained with
    ``MSE(decoder(encoder(f)), f)``.
    """

    def __init__(self, channels: int, factors: int) -> None:
        super().__init__()
        self.encoder = conv_stack([channels, channels, factors, factors], final_activation=True)
        self.decoder = conv_stack([factors, factors, channels, channels], final_activation=False)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(feature))


def normalized_factor(factor: torch.Tensor) -> torch.Tensor:
    """``normalize(mean_c F²)`` flattened to [B, H·W], L2-normalised per sample.

    RepDistiller's ``FactorTransfer.factor`` (p1 = 2): the factor's channel-mean square, i.e. an
    attention map of the factor, not the factor vector itself.
    """
    return F.normalize(factor.pow(2).mean(dim=1).flatten(1), p=2, dim=1)


def _cycle(
    teacher_features: Callable[[], Iterator[dict[str, torch.Tensor]]],
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless stream over ``teacher_features()``, restarting it when exhausted."""
    while True:
        empty = True
        for item in teacher_features():
            empty = False
            yield item
        if empty:
            raise ConfigError("factor transfer: the teacher feature iterator yielded no batches")


@register_kd_method("ft")
class FactorTransfer(KDMethod):
    """``L = Σ_pairs mean_{b, hw} |φ(F_T) − φ(F_S)|``, ``φ(F) = normalize_b(mean_c F²)``.

    Reference definition: RepDistiller ``distiller_zoo/FT.py`` (``FactorTransfer(p1=2, p2=1)``:
    ``φ`` from :func:`normalized_factor`, then the *mean* absolute difference over batch and
    positions), weight β = 200 (``-b 200``). Canonical weight: 200. The paper writes the
    p = 1 distance of the L2-normalised factor vectors; the weight 200 belongs to RepDistiller's
    form, so that one is used. RepDistiller transfers one pair; several tap pairs are summed.

    ``F_T = P_i.encoder(f_T)`` comes from a paraphraser per teacher tap (``self.paraphrasers``),
    ``F_S = T_i(f_S)`` from a translator per student tap (``self.translators``); both have
    ``m = max(1, round(C_t · rate))`` channels (``rate`` 0.5 by default, the paper's k). The
    factor is a compressed, teacher-specific re-encoding that is easier for a smaller student to
    mimic than the raw feature; the per-sample normalisation removes the factor's scale.

    Two phases, as in the paper: :meth:`pretrain` fits the paraphrasers as autoencoders of the
    teacher features and freezes them; afterwards the translators (ordinary trainable
    parameters, which the trainer adds to the optimiser) are trained with the student. ``loss``
    raises :class:`ConfigError` before :meth:`pretrain` has run, unless ``pretrain_steps=0``:
    then pre-training is skipped and the randomly initialised paraphrasers are frozen at
    construction (an ablation, not the method). The paraphrasers have no batch norm (the
    paper's has), so train and eval mode compute the same thing. Teacher and student taps must
    share spatial size; channel counts may differ.
    """

    per_sample_mean: ClassVar[bool] = True  # DDP: no feature gather needed
    canonical_weight: ClassVar[float] = 200.0
    citation: ClassVar[str] = (
        "Kim, J., Park, S. & Kwak, N. Paraphrasing Complex Network: Network Compression via "
        "Factor Transfer. NeurIPS 2018. Code: github.com/HobbitLong/RepDistiller "
        "(distiller_zoo/FT.py)."
    )
    needs_pretraining: ClassVar[bool] = True

    def __init__(
        self,
        teacher: BlockNet,
        student: BlockNet,
        teacher_taps: list[str] | None = None,
        student_taps: list[str] | None = None,
        rate: float = 0.5,
        pretrain_steps: int = 200,
    ) -> None:
        super().__init__(teacher, student, teacher_taps, student_taps)
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0:
            raise ConfigError(f"KD method 'ft': rate must be > 0, got {rate!r}")
        if (
            isinstance(pretrain_steps, bool)
            or not isinstance(pretrain_steps, int)
            or pretrain_steps < 0
        ):
            raise ConfigError(
                f"KD method 'ft': pretrain_steps must be an integer >= 0, got {pretrain_steps!r}"
            )
        self.rate, self.pretrain_steps = float(rate), pretrain_steps
        paraphrasers: list[nn.Module] = []
        translators: list[nn.Module] = []
        for t_name, s_name in zip(self.teacher_taps, self.student_taps, strict=True):
            c_t, c_s = tap_channels(teacher, t_name), tap_channels(student, s_name)
            factors = max(1, round(c_t * self.rate))
            paraphrasers.append(Paraphraser(c_t, factors))
            translators.append(translator(c_s, factors))
        self.paraphrasers = nn.ModuleList(paraphrasers)
        self.translators = nn.ModuleList(translators)
        # A buffer, so a checkpoint of the method records whether its paraphrasers are trained.
        self.paraphraser_pretrained: torch.Tensor
        self.register_buffer("paraphraser_pretrained", torch.tensor(False))
        self.register_load_state_dict_post_hook(_freeze_if_pretrained)
        if pretrain_steps == 0:
            self._freeze_paraphrasers()

    @property
    def pretrained(self) -> bool:
        """Whether :meth:`pretrain` has run (restored from a checkpoint's state dict too)."""
        return bool(self.paraphraser_pretrained)

    def _freeze_paraphrasers(self) -> None:
        self.paraphrasers.zero_grad(set_to_none=True)  # drop the pre-training gradients
        self.paraphrasers.requires_grad_(False)
        self.paraphrasers.eval()

    def train(self, mode: bool = True) -> FactorTransfer:
        """Like ``nn.Module.train`` but a frozen paraphraser stays in eval mode."""
        super().train(mode)
        if self.pretrained or self.pretrain_steps == 0:
            self.paraphrasers.eval()
        return self

    def reconstruction_loss(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """``mean_taps MSE(P_i(f_i), f_i)`` over the teacher taps in ``features``."""
        missing = [name for name in self.teacher_taps if name not in features]
        if missing:
            raise ConfigError(
                f"factor transfer: teacher features lack tap(s) {missing}; got {sorted(features)}"
            )
        device = next(self.paraphrasers.parameters()).device
        terms = []
        for paraphraser, name in zip(self.paraphrasers, self.teacher_taps, strict=True):
            f = features[name].detach().float().to(device)
            terms.append(F.mse_loss(paraphraser(f), f))
        return torch.stack(terms).mean()

    def pretrain(
        self,
        teacher_features: Callable[[], Iterator[dict[str, torch.Tensor]]],
        steps: int | None = None,
        lr: float = 1e-3,
    ) -> dict[str, float]:
        """Fit the paraphrasers (only them) as autoencoders of the teacher features, then freeze.

        ``teacher_features()`` returns an iterator of {teacher tap name: feature [B, C, H, W]}
        dicts; it is called again whenever exhausted. Each of ``steps`` Adam steps (``lr``) uses
        one dict; ``steps=None`` means ``self.pretrain_steps``. Returns the reconstruction loss of
        the first and of the last step (each measured before that step's update); with
        ``steps=0`` both are the loss of one batch and nothing is trained.
        """
        steps = self.pretrain_steps if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ConfigError(f"factor transfer: pretrain steps must be an int >= 0, got {steps!r}")
        if not lr > 0:
            raise ConfigError(f"factor transfer: pretrain lr must be > 0, got {lr!r}")
        batches = _cycle(teacher_features)
        losses: list[float] = []
        if steps == 0:
            with torch.no_grad():
                losses.append(self.reconstruction_loss(next(batches)).item())
        else:
            self.paraphrasers.requires_grad_(True)
            self.paraphrasers.train()
            optimiser = torch.optim.Adam(self.paraphrasers.parameters(), lr=lr)
            with torch.enable_grad():
                for _ in range(steps):
                    loss = self.reconstruction_loss(next(batches))
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
                    losses.append(loss.item())
        self._freeze_paraphrasers()
        self.paraphraser_pretrained.fill_(True)
        return {"ft_paraphraser_loss_first": losses[0], "ft_paraphraser_loss_last": losses[-1]}

    def loss(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        if not self.pretrained and self.pretrain_steps > 0:
            raise ConfigError(
                "factor transfer: the paraphraser has not been pre-trained; call "
                "FactorTransfer.pretrain(...) first (or set the option pretrain_steps=0 to use "
                "a frozen random paraphraser)"
            )
        terms = []
        for i, (t, s) in enumerate(pairs):
            with torch.no_grad():
                f_t = cast(Paraphraser, self.paraphrasers[i]).encoder(t).float()
            f_s = self.translators[i](s).float()
            if f_t.shape != f_s.shape:
                raise ConfigError(
                    f"KD method 'ft': factor of teacher tap '{self.teacher_taps[i]}' "
                    f"{tuple(f_t.shape)} does not match translated student tap "
                    f"'{self.student_taps[i]}' {tuple(f_s.shape)} (spatial sizes must agree)"
                )
            terms.append((normalized_factor(f_t) - normalized_factor(f_s)).abs().mean())
        return torch.stack(terms).sum()


def _freeze_if_pretrained(module: nn.Module, _incompatible_keys: object) -> None:
    """After ``load_state_dict``: a checkpoint with pre-trained paraphrasers freezes them."""
    if isinstance(module, FactorTransfer) and module.pretrained:
        module._freeze_paraphrasers()
