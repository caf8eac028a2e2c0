"""Loss balance: measure the loss terms before training, calibrate a weight, report ratios.

A stage's loss is ``Σ weight[term] · term``. The *ratio* of an auxiliary term is
``weight[term] · mean(term) / (weight[ref] · mean(ref))`` with ``ref`` the reconstruction term
(``rec``; ``rec_t`` for SFT). Before training the trainer measures the mean of every term over
the first few training batches (no gradient, the same batches the first epoch starts with,
averaged over DDP ranks so every rank resolves the same weight); with ``kd.balance`` (KD) or
``sft.balance`` (SFT imitation) the weight is then set so the term's ratio is ``balance.ratio``.
The measured ratios are logged at step 0, the epoch ratios after every epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Protocol

import torch
import torch.distributed as dist

from raykd.data.sampling import ShardedSampler
from raykd.train.checkpoint import rng_state, set_rng_state
from raykd.train.config import MEASURE_BATCHES, BalanceConfig, StageConfig
from raykd.train.precision import autocast
from raykd.train.stages import StageModule


class Trainer(Protocol):
    """What calibration reads of :class:`raykd.train.loop.Trainer` (typed here so this module
    does not import the loop that calls it)."""

    cfg: StageConfig
    stage: StageModule
    datasets: dict[str, Any]
    rank: int
    world: int
    device: torch.device
    precision: str

    def _loader(self, dataset: Any, sampler: Any = None) -> Iterable: ...
    def _batch(self, sample: Any) -> tuple[torch.Tensor, ...]: ...
    def _log(self, text: str) -> None: ...


WARN_HIGH, WARN_LOW = 10.0, 1e-3


def reference_term(kind: str) -> str:
    return "rec_t" if kind == "sft" else "rec"


def balance_rule(cfg: StageConfig) -> tuple[str, BalanceConfig] | None:
    """(calibrated term, its rule) of a stage, or None when every weight is fixed."""
    if cfg.kind == "kd" and cfg.kd.balance is not None:
        return "kd", cfg.kd.balance
    if cfg.kind == "sft" and cfg.sft.balance is not None:
        return "imit", cfg.sft.balance
    return None


def term_ratios(weights: dict[str, float], means: dict[str, float], ref: str) -> dict[str, float]:
    """``weight·mean`` of every auxiliary term over that of the reference term."""
    denom = weights[ref] * means[ref]
    out = {}
    for term, value in means.items():
        if term == ref or term not in weights:
            continue
        num = weights[term] * value
        out[term] = num / denom if denom > 0 else (math.inf if num > 0 else 0.0)
    return out


def epoch_ratios(
    metrics: dict[str, float], weights: dict[str, float], ref: str
) -> dict[str, float]:
    """``train/ratio/<term>`` from an epoch's ``train/<term>`` means."""
    means = {k[len("train/") :]: v for k, v in metrics.items() if k.startswith("train/")}
    if ref not in means:
        return {}
    return {f"train/ratio/{k}": v for k, v in term_ratios(weights, means, ref).items()}


def ratio_warnings(ratios: dict[str, float], weights: dict[str, float]) -> list[str]:
    """One line per weighted term that dominates (> 10×) or vanishes (< 1e-3×) reconstruction."""
    lines = []
    for key, value in ratios.items():
        term = key.rsplit("/", 1)[-1]
        if weights.get(term, 0.0) <= 0:
            continue  # switched off on purpose
        if value > WARN_HIGH:
            lines.append(f"WARNING: weighted '{term}' is {value:.3g}x the reconstruction term")
        elif value < WARN_LOW:
            lines.append(f"WARNING: weighted '{term}' is only {value:.3g}x the reconstruction term")
    return lines


@torch.no_grad()
def measure_terms(trainer: Trainer, batches: int) -> dict[str, float]:
    """Mean of every loss term over the first ``batches`` training batches of epoch 0.

    Runs the stage module itself (not its DDP wrapper) without gradients and restores the RNG
    state afterwards, so training proceeds exactly as it would without the measurement.
    """
    cfg, stage = trainer.cfg, trainer.stage
    state = rng_state(trainer.device)
    train_set = trainer.datasets["train"]
    sampler = ShardedSampler(
        len(train_set), trainer.rank, trainer.world, shuffle=True, seed=cfg.seed
    )
    sampler.set_epoch(0)
    was_training = stage.training
    stage.train()
    sums: torch.Tensor | None = None
    keys: list[str] = []
    count = 0
    for sample in trainer._loader(train_set, sampler):
        if count >= batches:
            break
        with autocast(trainer.device, trainer.precision):
            terms = stage(*trainer._batch(sample))
        keys = keys or list(terms)
        vec = torch.stack([terms[k].detach().float() for k in keys])
        sums = vec if sums is None else sums + vec
        count += 1
    stage.train(was_training)
    set_rng_state(state, trainer.device)
    if sums is None:
        return {}
    means = sums / count
    if trainer.world > 1:
        dist.all_reduce(means)
        means /= trainer.world
    return dict(zip(keys, means.tolist(), strict=True))


def calibrate(trainer: Trainer) -> dict[str, Any]:
    """Measure the terms, resolve a calibrated weight (``stage.weights`` is updated in place).

    Returns ``{rule, ratio, batches, means, weights, ratios}``; ``ratios`` are the step-0 ratios
    after calibration. Stages without auxiliary terms (teacher, student) measure nothing.
    """
    cfg, weights = trainer.cfg, trainer.stage.weights
    ref = reference_term(cfg.kind)
    rule = balance_rule(cfg)
    info: dict[str, Any] = {"rule": "calibrated" if rule else "fixed", "ratio": None}
    if set(weights) == {ref}:
        return {**info, "batches": 0, "means": {}, "weights": dict(weights), "ratios": {}}
    batches = rule[1].batches if rule else MEASURE_BATCHES
    means = measure_terms(trainer, batches)
    if rule and means:
        term, balance = rule
        raw, rec = means.get(term, 0.0), means.get(ref, 0.0)
        info["ratio"] = balance.ratio
        if raw > 1e-12 and math.isfinite(raw) and rec > 0:
            weights[term] = balance.ratio * weights[ref] * rec / raw
            trainer._log(
                f"balance: '{term}' weight {weights[term]:.6g} (ratio {balance.ratio:g} to "
                f"'{ref}'; means over {batches} batches: {ref} {rec:.4g}, raw {term} {raw:.4g})"
            )
        else:
            trainer._log(
                f"WARNING: balance: raw '{term}' is {raw:.3g} at the start; cannot calibrate, "
                f"keeping weight {weights[term]:g}"
            )
    ratios = term_ratios(weights, means, ref) if ref in means else {}
    trainer._log(
        "ratios to reconstruction before training: "
        + ", ".join(f"{k} {v:.3g}" for k, v in ratios.items())
    )
    for line in ratio_warnings(ratios, weights):
        trainer._log(line)
    return {**info, "batches": batches, "means": means, "weights": dict(weights), "ratios": ratios}
