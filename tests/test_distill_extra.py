"""PKT, NST and FT: formula checks on hand-made tensors and tiny DC-CNN features."""

from __future__ import annotations

import math

import pytest
import torch

from raykd.data.transforms import undersample
from raykd.distill import KDMethod, available_kd_methods, build_kd_method, get_kd_method
from raykd.distill.ft import FactorTransfer
from raykd.distill.nst import channel_maps, poly_mmd2
from raykd.distill.pkt import similarity_distribution
from raykd.errors import ConfigError
from raykd.models.dccnn import DCCNN
from tests.test_distill import features

NEW_METHODS = ["pkt", "nst", "ft"]
B, H, W = 3, 8, 8


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """These shapes are tiny: one thread is faster than two fighting over a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def models() -> tuple[DCCNN, DCCNN]:
    torch.manual_seed(0)
    return DCCNN(depth=4, cascades=2, channels=8), DCCNN(depth=3, cascades=2, channels=8)


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    target = torch.rand(B, 1, H, W, generator=gen)
    mask = (torch.rand(1, 1, H, W, generator=gen) > 0.5).float()
    zero_filled, y = undersample(target, mask)
    return zero_filled, y, mask


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def pretrained_ft(teacher: DCCNN, student: DCCNN, batch, steps: int = 2, **kw) -> FactorTransfer:
    method = build_kd_method("ft", teacher, student, **kw)
    assert isinstance(method, FactorTransfer)
    t_feats = features(teacher, method.teacher_taps, batch, detach=True)
    method.pretrain(lambda: iter([t_feats]), steps=steps)
    return method


# ---------------------------------------------------------------- common to the three methods


@pytest.mark.parametrize("name", NEW_METHODS)
def test_registered_with_citation(name: str) -> None:
    assert name in available_kd_methods()
    cls = get_kd_method(name)
    assert issubclass(cls, KDMethod) and cls.name == name
    assert cls.citation and any(str(y) in cls.citation for y in range(2017, 2019))
    assert cls.__doc__
    assert "default_taps" not in vars(cls)  # the base class's reference taps


@pytest.mark.parametrize("name", NEW_METHODS)
def test_dccnn_features_positive_loss_gradient_to_student_only(name: str, models, batch) -> None:
    teacher, student = models
    method = (
        pretrained_ft(teacher, student, batch)
        if name == "ft"
        else build_kd_method(name, teacher, student)
    )
    assert method.teacher_taps == ["cascades.0.conv.2", "cascades.1.conv.2"]
    assert method.student_taps == ["cascades.0.conv.1", "cascades.1.conv.1"]
    teacher.zero_grad(set_to_none=True)
    student.zero_grad(set_to_none=True)
    t_feats = features(teacher, method.teacher_taps, batch, detach=True)
    s_feats = features(student, method.student_taps, batch)
    loss = method(t_feats, s_feats)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("name", ["pkt", "nst"])
def test_zero_for_identical_positive_for_different(name: str, models) -> None:
    method = build_kd_method(name, *models)
    t = rand(B, 6, H, W, seed=2)
    assert method.loss([(t, t.clone())]).item() == pytest.approx(0.0, abs=1e-6)
    assert method.loss([(t, rand(B, 6, H, W, seed=3))]).item() > 1e-5


@pytest.mark.parametrize("name", ["pkt", "nst"])
def test_scale_invariant_and_gradient(name: str, models) -> None:
    method = build_kd_method(name, *models)
    # float64: near-orthogonal random features make the loss small, so float32 rounding would
    # dominate the comparison.
    t, s = rand(B, 4, H, W, seed=4).double(), rand(B, 6, H, W, seed=5).double()  # C differs
    base = method.loss([(t, s)])
    assert base.item() > 0
    # PKT divides by ‖f‖ + 1e-7 (the reference's form): invariance is approximate for small
    # features, and a small KL amplifies the relative change.
    rel = 1e-3 if name == "pkt" else 1e-9
    assert method.loss([(t, 7.0 * s)]).item() == pytest.approx(base.item(), rel=rel)
    assert method.loss([(t, 0.01 * s)]).item() == pytest.approx(base.item(), rel=rel)
    s = s.requires_grad_()
    method.loss([(t, s)]).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


# ---------------------------------------------------------------- PKT


def test_pkt_hand_computed(models) -> None:
    method = build_kd_method("pkt", *models)
    t_rows = [[1.0, 0.0], [1.0, 1.0]]  # D_T = 2
    s_rows = [[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]]  # D_S = 3
    eps = 1e-7

    def distribution(rows: list[list[float]]) -> list[list[float]]:
        unit = [[x / math.sqrt(sum(v * v for v in r)) for x in r] for r in rows]
        k = [[(sum(a * b for a, b in zip(u, v, strict=True)) + 1) / 2 for v in unit] for u in unit]
        return [[x / sum(row) for x in row] for row in k]

    p_t, p_s = distribution(t_rows), distribution(s_rows)
    # The reference's torch.mean over the B x B matrix: the row KL summed, divided by B².
    kl_rows = sum(
        p_t[i][j] * math.log((p_t[i][j] + eps) / (p_s[i][j] + eps))
        for i in range(2)
        for j in range(2)
    )
    expected = kl_rows / 4
    # Cross-check the loop on the closed form: cos_T = 1/sqrt(2), cos_S = 0.
    k = (1 + 1 / math.sqrt(2)) / 2
    closed = (1 / (1 + k)) * math.log((1 / (1 + k)) / (2 / 3))
    closed += (k / (1 + k)) * math.log((k / (1 + k)) / (1 / 3))
    assert kl_rows / 2 == pytest.approx(closed, rel=1e-6)

    t = torch.tensor(t_rows).view(2, 2, 1, 1)
    s = torch.tensor(s_rows).view(2, 3, 1, 1)
    assert torch.allclose(similarity_distribution(s), torch.tensor(p_s))
    assert method.loss([(t, s)]).item() == pytest.approx(expected, rel=1e-5)
    # Two pairs: summed (the second contributes 0).
    assert method.loss([(t, s), (t, t)]).item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_pkt_feature_dims_and_batch(models) -> None:
    method = build_kd_method("pkt", *models)
    t, s = rand(B, 4, H, W, seed=6), rand(B, 6, 4, 4, seed=7)  # D differs (256 vs 96)
    p = similarity_distribution(s)
    assert p.shape == (B, B) and torch.allclose(p.sum(dim=1), torch.ones(B))
    assert torch.isfinite(method.loss([(t, s)]))
    with pytest.raises(ConfigError, match="batch"):
        method.loss([(t, s[:2])])


# ---------------------------------------------------------------- NST


def test_nst_hand_computed(models) -> None:
    method = build_kd_method("nst", *models)
    # One sample, HW = 2. Teacher maps [3, 4] and [1, 0]; student map [0, 2].
    t = torch.tensor([[[[3.0, 4.0]], [[1.0, 0.0]]]])
    s = torch.tensor([[[[0.0, 2.0]]]])
    t_maps = [[0.6, 0.8], [1.0, 0.0]]
    s_maps = [[0.0, 1.0]]

    def mean_k(a: list[list[float]], b: list[list[float]]) -> float:
        return sum(sum(x * y for x, y in zip(u, v, strict=True)) ** 2 for u in a for v in b) / (
            len(a) * len(b)
        )

    expected = mean_k(t_maps, t_maps) + mean_k(s_maps, s_maps) - 2 * mean_k(t_maps, s_maps)
    assert expected == pytest.approx((1 + 0.36 + 0.36 + 1) / 4 + 1 - 2 * (0.64 + 0) / 2)
    assert torch.allclose(channel_maps(t), torch.tensor([t_maps]))
    assert method.loss([(t, s)]).item() == pytest.approx(expected, rel=1e-6)


def test_nst_equals_gram_form_and_is_per_sample(models) -> None:
    # With k = (a.b)^2, MMD^2 = ||mean_i t_i t_i^T - mean_j s_j s_j^T||_F^2 (feature-map form).
    method = build_kd_method("nst", *models)
    t, s = rand(B, 5, H, W, seed=8), rand(B, 7, H, W, seed=9)
    nt, ns = channel_maps(t), channel_maps(s)
    gram_t = nt.transpose(1, 2) @ nt / 5
    gram_s = ns.transpose(1, 2) @ ns / 7
    expected = (gram_t - gram_s).pow(2).sum(dim=(1, 2)).mean()
    assert poly_mmd2(t, s).item() == pytest.approx(expected.item(), rel=1e-4)
    per_sample = [method.loss([(t[i : i + 1], s[i : i + 1])]) for i in range(B)]
    assert torch.stack(per_sample).mean().item() == pytest.approx(
        method.loss([(t, s)]).item(), rel=1e-5
    )


def test_nst_spatial_mismatch_names_taps(models) -> None:
    method = build_kd_method("nst", *models)
    with pytest.raises(ConfigError, match=r"cascades\.0\.conv\.2.*cascades\.0\.conv\.1"):
        method.loss([(rand(B, 8, H, W, seed=10), rand(B, 8, 4, 4, seed=11))])


# ---------------------------------------------------------------- FT


def test_ft_structure_and_options(models) -> None:
    teacher, student = models
    assert FactorTransfer.needs_pretraining is True
    ft = build_kd_method("ft", teacher, student)
    assert (ft.rate, ft.pretrain_steps, ft.pretrained) == (0.5, 200, False)
    assert len(ft.paraphrasers) == len(ft.translators) == 2
    assert ft.paraphrasers[0].encoder[-2].out_channels == 4  # m = round(8 * 0.5)
    assert ft.translators[0][0].in_channels == 8 and ft.translators[0][-2].out_channels == 4
    narrow = build_kd_method("ft", teacher, student, rate=0.1, pretrain_steps=5)
    assert narrow.pretrain_steps == 5
    assert narrow.paraphrasers[0].encoder[-2].out_channels == 1  # max(1, round(0.8))
    for bad in ({"rate": 0.0}, {"pretrain_steps": -1}, {"pretrain_steps": 1.5}):
        with pytest.raises(ConfigError):
            build_kd_method("ft", teacher, student, **bad)


def test_ft_loss_before_pretrain_raises(models) -> None:
    ft = build_kd_method("ft", *models)
    t = rand(B, 8, H, W, seed=12)
    with pytest.raises(ConfigError, match="not been pre-trained"):
        ft.loss([(t, t), (t, t)])
    skip = build_kd_method("ft", *models, pretrain_steps=0)  # skip: frozen random paraphraser
    assert not any(p.requires_grad for p in skip.paraphrasers.parameters())
    assert torch.isfinite(skip.loss([(t, t), (t, t)]))


def test_ft_pretrain_reduces_reconstruction_and_freezes(models) -> None:
    torch.manual_seed(3)
    ft = build_kd_method("ft", *models)
    taps = ft.teacher_taps
    fixed = [
        {n: rand(B, 8, H, W, seed=20 + 2 * i + k).relu() for k, n in enumerate(taps)}
        for i in (0, 1)
    ]
    before = ft.reconstruction_loss(fixed[0]).item()
    stats = ft.pretrain(lambda: iter(fixed), steps=30, lr=1e-2)  # cycles the 2 batches
    assert set(stats) == {"ft_paraphraser_loss_first", "ft_paraphraser_loss_last"}
    assert stats["ft_paraphraser_loss_first"] == pytest.approx(before, rel=1e-5)
    assert stats["ft_paraphraser_loss_last"] < 0.8 * stats["ft_paraphraser_loss_first"]
    assert ft.reconstruction_loss(fixed[0]).item() < before
    assert ft.pretrained
    assert not any(p.requires_grad for p in ft.paraphrasers.parameters())
    assert all(p.requires_grad for p in ft.translators.parameters())
    ft.train()
    assert ft.translators.training and not ft.paraphrasers.training

    # A checkpoint of the method restores the flag and freezes the loaded paraphrasers.
    fresh = build_kd_method("ft", *models)
    fresh.load_state_dict(ft.state_dict())
    assert fresh.pretrained and not any(p.requires_grad for p in fresh.paraphrasers.parameters())


def test_ft_pretrain_bad_inputs(models) -> None:
    ft = build_kd_method("ft", *models)
    with pytest.raises(ConfigError, match="no batches"):
        ft.pretrain(lambda: iter([]), steps=1)
    with pytest.raises(ConfigError, match="lack tap"):
        ft.pretrain(lambda: iter([{"cascades.0.conv.2": torch.zeros(1, 8, 4, 4)}]), steps=1)
    assert not ft.pretrained


def test_ft_zero_with_translator_copying_encoder(models, batch) -> None:
    teacher, _ = models
    taps = ["cascades.{c}.conv.1"]
    ft = pretrained_ft(teacher, teacher, batch, teacher_taps=taps, student_taps=taps)
    for paraphraser, trans in zip(ft.paraphrasers, ft.translators, strict=True):
        trans.load_state_dict(paraphraser.encoder.state_dict())
    feats = features(teacher, ft.teacher_taps, batch, detach=True)
    pairs = [(feats[n], feats[n]) for n in ft.teacher_taps]
    assert ft.loss(pairs).item() == pytest.approx(0.0, abs=1e-6)
    other = [(feats[n], rand(*feats[n].shape, seed=30).relu()) for n in ft.teacher_taps]
    assert ft.loss(other).item() > 1e-4


def test_ft_gradient_to_translator_not_paraphraser(models, batch) -> None:
    teacher, student = models
    ft = pretrained_ft(teacher, student, batch)
    t = rand(B, 8, H, W, seed=31).relu()
    s = rand(B, 8, H, W, seed=32).relu().requires_grad_()
    loss = ft.loss([(t, s), (t, s)])
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ft.translators.parameters())
    assert all(p.grad is None for p in ft.paraphrasers.parameters())


def test_ft_spatial_mismatch_names_taps(models, batch) -> None:
    ft = pretrained_ft(*models, batch)
    t, s = rand(B, 8, H, W, seed=33), rand(B, 8, 4, 4, seed=34)
    with pytest.raises(ConfigError, match=r"cascades\.0\.conv\.2.*cascades\.0\.conv\.1"):
        ft.loss([(t, s)])
