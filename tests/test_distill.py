"""KD methods: registry, tap handling, and per-method formula checks on tiny DC-CNNs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from raykd.data.transforms import undersample
from raykd.distill import KDMethod, available_kd_methods, build_kd_method, get_kd_method
from raykd.distill import at as at_module
from raykd.distill.at import attention_map
from raykd.distill.cc import cc_loss
from raykd.distill.fsp import fsp_gram
from raykd.distill.sp import similarity_matrix
from raykd.errors import ConfigError
from raykd.models.dccnn import DCCNN
from raykd.models.taps import FeatureTaps

METHODS = available_kd_methods()  # every registered method: a new one is never skipped
B, H, W = 4, 16, 16


def make_models() -> tuple[DCCNN, DCCNN]:
    torch.manual_seed(0)
    return DCCNN(depth=5, cascades=5, channels=8), DCCNN(depth=3, cascades=5, channels=8)


def make_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    target = torch.rand(B, 1, H, W, generator=gen)
    mask = (torch.rand(1, 1, H, W, generator=gen) > 0.5).float()
    zero_filled, y = undersample(target, mask)
    return zero_filled, y, mask


@pytest.fixture(scope="module")
def models() -> tuple[DCCNN, DCCNN]:
    return make_models()


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return make_batch()


def features(model: DCCNN, taps: list[str], batch, detach: bool = False) -> dict[str, torch.Tensor]:
    with FeatureTaps(model, taps, detach=detach) as t:
        model(*batch)
    return dict(t.features)


def ready_method(name: str, teacher, student, batch, t_taps=None, s_taps=None) -> KDMethod:
    """The method built, and pre-trained for two steps if it needs a step before distillation
    (factor transfer's paraphraser), as the trainer does: any registered method is usable."""
    method = build_kd_method(name, teacher, student, t_taps, s_taps)
    if method.needs_pretraining:
        t_feats = features(teacher, method.teacher_taps, batch, detach=True)
        method.pretrain(lambda: iter([t_feats]), steps=2)
    return method


# Methods whose loss is not zero on identical features, with the reason (others must be 0).
NOT_ZERO_ON_IDENTICAL = {"ft": "its translator (student side) and paraphraser differ"}


def teacher_student_feats(method: KDMethod, teacher, student, batch):
    return (
        features(teacher, method.teacher_taps, batch, detach=True),
        features(student, method.student_taps, batch),
    )


# ---------------------------------------------------------------- common to every method


@pytest.mark.parametrize("name", METHODS)
def test_registered_with_citation(name: str) -> None:
    assert name in available_kd_methods()
    cls = get_kd_method(name)
    assert issubclass(cls, KDMethod) and cls.name == name
    assert cls.citation and any(str(y) in cls.citation for y in range(2015, 2020))
    assert cls.__doc__


@pytest.mark.parametrize("name", [m for m in METHODS if m not in NOT_ZERO_ON_IDENTICAL])
def test_zero_loss_for_identical_features(name: str, models, batch) -> None:
    """Every method but those whose loss is not zero by design (NOT_ZERO_ON_IDENTICAL says
    why; FT's translator and paraphraser differ) is zero when student = teacher."""
    teacher, _ = models
    taps = get_kd_method(name).default_taps(teacher, teacher)[0]
    method = ready_method(name, teacher, teacher, batch, taps, taps)
    if name == "cc":  # CC embeds each side with its own trainable layer: make them equal
        method.embed_s.load_state_dict(method.embed_t.state_dict())
    feats = features(teacher, method.teacher_taps, batch, detach=True)
    with torch.no_grad():
        loss = method(feats, feats)
    assert loss.ndim == 0
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_positive_loss_and_gradient_reaches_student_only(name: str, models, batch) -> None:
    teacher, student = models
    method = ready_method(name, teacher, student, batch)
    teacher.zero_grad(set_to_none=True)
    student.zero_grad(set_to_none=True)
    t_feats, s_feats = teacher_student_feats(method, teacher, student, batch)
    assert not any(f.requires_grad for f in t_feats.values())
    for f in s_feats.values():
        f.retain_grad()
    loss = method(t_feats, s_feats)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert any(f.grad is not None and f.grad.abs().sum() > 0 for f in s_feats.values())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


# ---------------------------------------------------------------- registry and taps


def test_unknown_method_lists_available() -> None:
    with pytest.raises(ConfigError) as exc:
        get_kd_method("nope")
    for name in METHODS:
        assert name in str(exc.value)


def test_mismatched_tap_count(models) -> None:
    teacher, student = models
    with pytest.raises(ConfigError, match="paired"):
        build_kd_method("at", teacher, student, ["cascades.0.conv.2"], ["cascades.{c}.conv.1"])


def test_unknown_tap(models) -> None:
    teacher, student = models
    with pytest.raises(ConfigError, match="cascades.9.conv.1"):
        build_kd_method("sp", teacher, student, ["cascades.0.conv.2"], ["cascades.9.conv.1"])


def test_bad_options(models) -> None:
    teacher, student = models
    with pytest.raises(ConfigError, match="bad options"):
        build_kd_method("at", teacher, student, gamma=1.0)
    with pytest.raises(ConfigError, match="dim"):
        build_kd_method("cc", teacher, student, dim=0)
    with pytest.raises(ConfigError, match="dim"):
        build_kd_method("cc", teacher, student, dim=1.5)


def test_default_taps(models) -> None:
    teacher, student = models
    at = build_kd_method("at", teacher, student)
    assert at.teacher_taps == [f"cascades.{c}.conv.2" for c in range(5)]
    assert at.student_taps == [f"cascades.{c}.conv.1" for c in range(5)]
    fit = build_kd_method("fitnets", teacher, student)
    assert (fit.teacher_taps, fit.student_taps) == (["cascades.2.conv.4"], ["cascades.2.conv.2"])
    short = DCCNN(depth=3, cascades=2, channels=4)
    assert build_kd_method("fitnets", teacher, short).student_taps == ["cascades.1.conv.2"]
    fsp = build_kd_method("fsp", teacher, student)
    assert fsp.teacher_taps == [f"cascades.{c}.conv.3" for c in range(5)]
    assert fsp.student_taps == [f"cascades.{c}.conv.1" for c in range(5)]


@pytest.mark.parametrize("name", METHODS)
def test_custom_tap_patterns(name: str, models, batch) -> None:
    teacher, student = models
    pattern = ["cascades.{c}.conv.{hidden}"]
    method = ready_method(name, teacher, student, batch, pattern, pattern)
    assert method.teacher_taps == [f"cascades.{c}.conv.3" for c in range(5)]
    assert method.student_taps == [f"cascades.{c}.conv.1" for c in range(5)]
    loss = method(*teacher_student_feats(method, teacher, student, batch))
    assert torch.isfinite(loss) and loss.item() > 0


# ---------------------------------------------------------------- AT


def test_at_scale_invariant_and_per_sample(models, batch) -> None:
    teacher, student = models
    method = build_kd_method("at", teacher, student)
    t_feats, s_feats = teacher_student_feats(method, teacher, student, batch)
    with torch.no_grad():
        base = method(t_feats, s_feats)
        scaled = method(t_feats, {k: 7.0 * v for k, v in s_feats.items()})
        # Scaling one sample must not change any sample's loss (no batch-wide normalisation).
        factor = torch.ones(B, 1, 1, 1)
        factor[1] = 100.0
        one_scaled = method(t_feats, {k: factor * v for k, v in s_feats.items()})
        per_sample = [
            method(
                {k: v[i : i + 1] for k, v in t_feats.items()},
                {k: v[i : i + 1] for k, v in s_feats.items()},
            )
            for i in range(B)
        ]
    approx = pytest.approx(base.item(), rel=1e-4, abs=1e-9)
    assert base.item() > 1e-6
    assert scaled.item() == approx
    assert one_scaled.item() == approx
    assert torch.stack(per_sample).mean().item() == approx


def test_at_hand_computed(models) -> None:
    teacher, student = models
    method = build_kd_method("at", teacher, student)
    # Teacher: channels [1, 2] and [sqrt(2), 0] -> Q = [3, 4] -> [0.6, 0.8]; student Q = [1, 0].
    t = torch.tensor([[[[1.0, 2.0]], [[math.sqrt(2.0), 0.0]]]])
    s = torch.tensor([[[[5.0, 0.0]]]])
    assert torch.allclose(attention_map(t), torch.tensor([[0.6, 0.8]]))
    # Mean of squared differences over batch and positions: (0.4² + 0.8²) / 2.
    assert method.loss([(t, s)]).item() == pytest.approx((0.4**2 + 0.8**2) / 2, rel=1e-6)


def test_at_on_bf16_features_matches_fp32_copies() -> None:
    """AT reads bf16 features without an fp32 copy (fast path); it must give the value and the
    gradient of the fp32 computation, and stay finite where a pixel is zero in every channel."""
    torch.manual_seed(0)
    f = torch.relu(torch.randn(3, 8, 12, 10)).to(torch.bfloat16)
    f[:, :, :3, :3] = 0
    f = f.contiguous(memory_format=torch.channels_last)
    weights = torch.rand(3, 120) + 0.5  # a loss whose gradient is not zero everywhere
    fast = f.clone().requires_grad_(True)
    ref = f.float().clone().requires_grad_(True)
    q_fast, q_ref = attention_map(fast), attention_map(ref)
    assert q_fast.dtype == torch.float32
    (q_fast * weights).sum().backward()
    (q_ref * weights).sum().backward()
    assert torch.allclose(q_fast, q_ref, rtol=1e-5, atol=1e-7)
    assert torch.isfinite(fast.grad.float()).all()
    # bf16 gradient vs fp32: bf16 rounding (8 bits) of the same values
    assert torch.allclose(fast.grad.float(), ref.grad, rtol=1e-2, atol=1e-2 * ref.grad.abs().max())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_at_channel_squares_match_fp64_on_every_cpu_path(monkeypatch, layout, dtype) -> None:
    """The CPU reduction follows the layout: one pass per channel for NCHW, chunks of rows for
    a bf16 channels-last map (no full-size fp32 copy; chunks that do not divide the rows),
    one call for fp32 channels-last. Every path gives the sums of squares in fp32."""
    monkeypatch.setattr(at_module, "_CHUNK_ELEMENTS", 8 * 10 * 3)  # 3 rows of 8 ch x 10 px
    torch.manual_seed(0)
    f = (torch.randn(2, 8, 7, 10) + 2).to(dtype).contiguous(memory_format=layout)
    squares = at_module.channel_squares(f)
    assert squares.dtype == torch.float32 and squares.shape == (2, 7, 10)
    expected = f.double().pow(2).sum(1).float()
    torch.testing.assert_close(squares, expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize("name", METHODS)
def test_capture_path_matches_raw_features(name: str, models, batch) -> None:
    """The KD stage keeps each tap's summary as the tap fires (``method.capture``; AT fuses its
    gradient with the next layer's): loss and student gradients must be those of the loss
    computed from the raw tapped features."""
    teacher, student = models
    method = ready_method(name, teacher, student, batch)

    def run(capture):
        student.zero_grad(set_to_none=True)
        with torch.no_grad(), FeatureTaps(teacher, method.teacher_taps, capture=capture) as t:
            teacher(*batch)
        with FeatureTaps(student, method.student_taps, capture=capture) as s:
            out = student(*batch)
        loss = method(t.features, s.features, summarized=capture is not None)
        (loss + out.abs().mean()).backward()  # the taps get gradient from later layers too
        return loss.detach(), [p.grad.clone() for p in student.parameters()]

    raw_loss, raw_grads = run(None)
    cap_loss, cap_grads = run(method.capture)
    assert raw_loss.item() > 0
    assert cap_loss.item() == pytest.approx(raw_loss.item(), rel=1e-5)
    floor = 1e-5 * max(g.abs().max().item() for g in raw_grads)  # reduction-order noise
    for cap, raw in zip(cap_grads, raw_grads, strict=True):
        torch.testing.assert_close(cap, raw, rtol=1e-4, atol=floor)


def test_at_capture_bf16_matches_fp32(models, batch) -> None:
    """Under bf16 autocast (the fast default) AT's fused capture gives the loss and student
    gradients of the plain fp32 computation from raw features, up to bf16 rounding."""
    teacher, student = models
    method = build_kd_method("at", teacher, student)

    def run(fast: bool):
        student.zero_grad(set_to_none=True)
        capture = method.capture if fast else None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast):
            with torch.no_grad(), FeatureTaps(teacher, method.teacher_taps, capture=capture) as t:
                teacher(*batch)
            with FeatureTaps(student, method.student_taps, capture=capture) as s:
                out = student(*batch)
            loss = method(t.features, s.features, summarized=fast)
        (1000 * loss + out.float().abs().mean()).backward()  # AT's canonical weight
        return loss.detach().float(), [p.grad.float().clone() for p in student.parameters()]

    fast_loss, fast_grads = run(fast=True)
    ref_loss, ref_grads = run(fast=False)
    assert fast_loss.item() == pytest.approx(ref_loss.item(), rel=5e-2)
    scale = max(g.abs().max().item() for g in ref_grads)
    assert scale > 0
    # measured ≈ 1 % of the largest gradient; a lost factor in the fused backward gives ≥ 30 %
    for fast, ref in zip(fast_grads, ref_grads, strict=True):
        assert (fast - ref).abs().max().item() <= 5e-2 * scale


def test_at_spatial_mismatch(models) -> None:
    teacher, student = models
    method = build_kd_method("at", teacher, student)
    with pytest.raises(ConfigError, match="spatial"):
        method.loss([(torch.rand(2, 3, 4, 4), torch.rand(2, 3, 8, 8))])


# ---------------------------------------------------------------- FitNets


def test_fitnets_regressor_only_when_channels_differ(batch) -> None:
    teacher = DCCNN(depth=5, cascades=5, channels=8)
    narrow = DCCNN(depth=3, cascades=5, channels=4)
    same = DCCNN(depth=3, cascades=5, channels=8)
    hidden = ["cascades.{c}.conv.{hidden}"]

    fit = build_kd_method("fitnets", teacher, narrow, hidden, hidden)
    assert len(fit.regressors) == 5
    assert all(isinstance(r, nn.Conv2d) and r.kernel_size == (1, 1) for r in fit.regressors)
    assert (fit.regressors[0].in_channels, fit.regressors[0].out_channels) == (4, 8)
    params = list(fit.parameters())
    assert params and all(p.requires_grad for p in params)
    loss = fit(*teacher_student_feats(fit, teacher, narrow, batch))
    loss.backward()
    assert all(p.grad is not None for p in params)

    for student, taps in ((same, hidden), (narrow, None)):  # equal widths; default taps (1 ch)
        fit = build_kd_method("fitnets", teacher, student, taps, taps)
        assert all(isinstance(r, nn.Identity) for r in fit.regressors)
        assert not list(fit.parameters())


def test_fitnets_is_mse(models) -> None:
    teacher, student = models
    fit = build_kd_method("fitnets", teacher, student)
    t, s = torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, 2.0], [3.0, 0.0]]]])
    assert fit.loss([(t, s)]).item() == pytest.approx((1 + 4 + 9) / 4)


# ---------------------------------------------------------------- FSP


def test_fsp_gram_hand_computed(models) -> None:
    f1 = torch.tensor([[[[1.0, 2.0]]]])  # [1, 1, 1, 2]
    f2 = torch.tensor([[[[3.0, 4.0]], [[5.0, 6.0]]]])  # [1, 2, 1, 2]
    gram = fsp_gram(f1, f2)
    assert gram.shape == (1, 1, 2)
    assert torch.allclose(gram, torch.tensor([[[11.0 / 2, 17.0 / 2]]]))

    teacher, student = models
    method = build_kd_method("fsp", teacher, student)
    zeros1, zeros2 = torch.zeros_like(f1), torch.zeros_like(f2)
    loss = method.loss([(f1, zeros1), (f2, zeros2)])
    assert loss.item() == pytest.approx((5.5**2 + 8.5**2) / 2)


def test_fsp_shape_mismatch_names_taps() -> None:
    teacher = DCCNN(depth=5, cascades=3, channels=8)
    student = DCCNN(depth=3, cascades=3, channels=4)
    with pytest.raises(ConfigError, match=r"cascades\.0\.conv\.3.*cascades\.0\.conv\.1"):
        build_kd_method("fsp", teacher, student)
    with pytest.raises(ConfigError, match="two taps"):
        build_kd_method("fsp", teacher, student, ["cascades.0.conv.0"], ["cascades.0.conv.0"])


# ---------------------------------------------------------------- SP


def test_sp_scale_invariant(models, batch) -> None:
    teacher, student = models
    method = build_kd_method("sp", teacher, student)
    t_feats, s_feats = teacher_student_feats(method, teacher, student, batch)
    with torch.no_grad():
        base = method(t_feats, s_feats)
        scaled = method(t_feats, {k: 5.0 * v for k, v in s_feats.items()})
    assert scaled.item() == pytest.approx(base.item(), rel=1e-4, abs=1e-9)


def test_sp_hand_computed(models) -> None:
    teacher, student = models
    method = build_kd_method("sp", teacher, student)
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(2, 2, 1, 1)  # G_T = I
    s = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).view(2, 2, 1, 1)  # G_S rows = [1, 1] / sqrt(2)
    a = 1 / math.sqrt(2)
    assert torch.allclose(similarity_matrix(s), torch.full((2, 2), a))
    expected = (2 * (1 - a) ** 2 + 2 * a**2) / 4  # = 1 - sqrt(2) / 2
    assert method.loss([(t, s)]).item() == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------- CC


def test_cc_embeddings_trainable_and_hand_loss(models, batch) -> None:
    teacher, student = models
    method = build_kd_method("cc", teacher, student, dim=3)
    assert len(method.embed_t) == len(method.embed_s) == len(method.teacher_taps)
    assert method.embed_s[0].out_features == 3
    loss = method(*teacher_student_feats(method, teacher, student, batch))
    loss.backward()
    assert all(p.grad is not None for p in method.parameters())
    # Consecutive-sample products of |e_S - e_T|, summed over dims, mean over B - 1 products.
    e_s = torch.tensor([[1.0, 0.0], [3.0, 1.0], [0.0, 2.0]])
    e_t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    assert cc_loss(e_s, e_t).item() == pytest.approx(((1 * 2 + 0 * 1) + (2 * 1 + 1 * 2)) / 2)
    with pytest.raises(ConfigError, match="at least 2"):
        method.loss([(torch.rand(1, 8, 4, 4), torch.rand(1, 8, 4, 4))] * 5)


# Every per-method contract test above, in the order they run; tests/test_distill_plugins.py
# runs them on a KD method loaded from a file outside the package.
CONTRACT = (
    test_registered_with_citation,
    test_zero_loss_for_identical_features,
    test_positive_loss_and_gradient_reaches_student_only,
    test_custom_tap_patterns,
    test_capture_path_matches_raw_features,
)
