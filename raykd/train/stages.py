"""The four kinds of run as modules whose forward returns named loss terms.

``forward(zero_filled, y, mask, target) -> {term: loss}``; the total is the weighted sum with
:attr:`StageModule.weights`, so every term is logged on its own (torchdistill's pattern). Only
trainable parts are registered submodules: DDP wraps the whole stage module while the frozen
teacher of a KD run stays outside it, in eval mode under ``no_grad``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from raykd.distill import KDMethod, build_kd_method
from raykd.errors import CheckpointError
from raykd.models.base import BlockNet
from raykd.models.registry import model_from_arch, model_from_config
from raykd.models.sft import SFTModel, load_student_blocks
from raykd.models.taps import FeatureTaps
from raykd.train.checkpoint import check_arch, load_checkpoint
from raykd.train.config import StageConfig
from raykd.train.distributed import gather_batch, world_size


def load_model(path: str | Path, part: str = "auto") -> BlockNet:
    """A DC-CNN from a checkpoint. For an SFT checkpoint, ``part`` picks teacher or student."""
    ckpt = load_checkpoint(path)
    try:
        model = model_from_arch(ckpt["arch"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path}: malformed architecture {ckpt['arch']}") from exc
    check_arch(ckpt, model.arch, path)
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {path}: weights do not match {model.arch}: {exc}"
        ) from exc
    if isinstance(model, SFTModel):
        return model.student if part == "student" else model.teacher
    return model


class StageModule(nn.Module):
    weights: dict[str, float]

    def predict(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The reconstruction used for validation and evaluation."""
        raise NotImplementedError

    @property
    def saved_model(self) -> BlockNet | SFTModel:
        """The network stored as ``model`` in checkpoints."""
        raise NotImplementedError


class PlainStage(StageModule):
    """``teacher`` and ``student`` runs: one DC-CNN, L1 to the target."""

    def __init__(self, model: BlockNet) -> None:
        super().__init__()
        self.model = model
        self.weights = {"rec": 1.0}

    def forward(self, x, y, mask, target):
        return {"rec": F.l1_loss(self.model(x, y, mask), target)}

    def predict(self, x, y, mask):
        return self.model(x, y, mask)

    @property
    def saved_model(self):
        return self.model


class SFTStage(StageModule):
    """L_SFT = L1(x̂_T, x) + w_s·mean_i L1(x̂_S,i, x) + w_imit·mean_i L1(x̂_T, x̂_S,i)."""

    def __init__(self, model: SFTModel, w_s: float, w_imit: float) -> None:
        super().__init__()
        self.model = model
        self.weights = {"rec_t": 1.0, "rec_s": w_s, "imit": w_imit}
        # S1 is outside every branch, so it never gets a gradient; the paper means it to stay
        # untrained (SFT-KD loads only S2..SN). Freezing it keeps it out of the optimiser and out
        # of DDP's reducer, which otherwise waits for its gradients and fails on the next step
        # ("parameters that were not used in producing loss"). find_unused_parameters=True would
        # also run, but walks the autograd graph every step and would hide a parameter that is
        # disconnected by mistake; here the unused set is known exactly and stays fixed.
        for p in model.untrained_student_parameters():
            p.requires_grad_(False)

    def forward(self, x, y, mask, target):
        out = self.model(x, y, mask)
        n = len(out.branches)
        return {
            "rec_t": F.l1_loss(out.teacher, target),
            "rec_s": sum(F.l1_loss(b, target) for b in out.branches) / n,
            # Gradients of the imitation term reach the teacher too: it is student-aware.
            "imit": sum(F.l1_loss(out.teacher, b) for b in out.branches) / n,
        }

    def predict(self, x, y, mask):
        return self.model.teacher(x, y, mask)

    @property
    def saved_model(self):
        return self.model


class KDStage(StageModule):
    """L1(x̂_S, x) + w_kd·L_method(feats_T, feats_S) + w_out·L1(x̂_S, x̂_T)."""

    def __init__(
        self, student: BlockNet, teacher: BlockNet, method: KDMethod, w_kd: float, w_out: float
    ) -> None:
        super().__init__()
        self.model = student
        self.method = method
        teacher.eval().requires_grad_(False)
        self.__dict__["teacher"] = teacher  # not a submodule: never in DDP or the optimiser
        self.weights = {"rec": 1.0, "kd": w_kd}
        if w_out > 0:
            self.weights["out"] = w_out

    def _apply(self, fn, recurse=True):  # keep the hidden teacher on the same device/dtype
        self.__dict__["teacher"]._apply(fn)
        return super()._apply(fn, recurse)

    def forward(self, x, y, mask, target):
        # Taps keep the method's summaries (AT: attention maps), computed as each tap fires.
        capture = self.method.capture
        with (
            torch.no_grad(),
            FeatureTaps(self.teacher, self.method.teacher_taps, capture=capture) as t_taps,
        ):
            t_out = self.teacher(x, y, mask)
        with FeatureTaps(self.model, self.method.student_taps, capture=capture) as s_taps:
            s_out = self.model(x, y, mask)
        t_feats, s_feats = t_taps.features, s_taps.features
        if not getattr(self.method, "per_sample_mean", False) and world_size() > 1:
            # A batch-coupled loss (SP, PKT, CC) over the global batch, as one rank would see it.
            t_feats = {k: gather_batch(v) for k, v in t_feats.items()}
            s_feats = {k: gather_batch(v) for k, v in s_feats.items()}
        kd = self.method(t_feats, s_feats, summarized=True)
        terms = {"rec": F.l1_loss(s_out, target), "kd": kd}
        if "out" in self.weights:
            terms["out"] = F.l1_loss(s_out, t_out)
        return terms

    def predict(self, x, y, mask):
        return self.model(x, y, mask)

    @property
    def saved_model(self):
        return self.model


def build_stage(cfg: StageConfig) -> tuple[StageModule, dict]:
    """The stage module for ``cfg.kind`` and a dict of lineage facts (teacher checkpoint...)."""
    lineage: dict = {}
    cplx = cfg.data.complex  # complex data: two-channel (real, imag) networks
    if cfg.kind == "teacher":
        return PlainStage(model_from_config(cfg.teacher, cplx)), lineage
    if cfg.kind == "student":
        return PlainStage(model_from_config(cfg.student, cplx)), lineage
    if cfg.kind == "sft":
        model = SFTModel(model_from_config(cfg.teacher, cplx), model_from_config(cfg.student, cplx))
        return SFTStage(model, cfg.sft.w_s, cfg.sft.w_imit), lineage
    # kd
    if cfg.teacher_checkpoint is None:
        raise CheckpointError("a kd stage needs teacher_checkpoint (the trained teacher's best.pt)")
    ckpt_path = Path(cfg.teacher_checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    teacher_kind = ckpt["arch"].get("type")
    teacher = load_model(ckpt_path, part="teacher")
    expected = model_from_config(cfg.teacher, cplx).arch
    if teacher.arch != expected:
        raise CheckpointError(
            f"teacher checkpoint {ckpt_path}: teacher is {teacher.arch}, config says {expected}"
        )
    student = model_from_config(cfg.student, cplx)
    if cfg.kd.init == "sft":
        if teacher_kind != "sft":
            raise CheckpointError(
                f"kd.init 'sft' needs an SFT checkpoint as teacher_checkpoint; {ckpt_path} is a "
                f"plain '{teacher_kind}' checkpoint"
            )
        lineage["sft_tensors_loaded"] = load_student_blocks(student, ckpt["model"])
    method = build_kd_method(
        cfg.kd.method, teacher, student, cfg.kd.teacher_taps, cfg.kd.student_taps, **cfg.kd.options
    )
    lineage.update(teacher_checkpoint=str(ckpt_path), teacher_kind=teacher_kind)
    stage = KDStage(student, teacher, method, cfg.kd.resolved_weight, cfg.kd.output_weight)
    return stage, lineage
