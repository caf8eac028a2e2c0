import pytest
import torch

from raykd.data.masks import CartesianMask
from raykd.data.transforms import undersample
from raykd.errors import CheckpointError, ConfigError
from raykd.models import base as base_module
from raykd.models import fused
from raykd.models.base import count_parameters
from raykd.models.dccnn import DCCNN, tap_names
from raykd.models.sft import SFTModel, load_student_blocks
from raykd.models.taps import FeatureTaps


@pytest.mark.parametrize("depth,expected", [(5, 141_765), (4, 95_525), (3, 49_285), (2, 3_045)])
def test_paper_parameter_counts(depth, expected):
    assert count_parameters(DCCNN(depth=depth, cascades=5)) == expected


def test_depth_below_two_rejected():
    with pytest.raises(ConfigError, match="depth must be >= 2"):
        DCCNN(depth=1)


def _inputs(b=2, size=16):
    x = torch.rand(b, 1, size, size)
    mask = torch.from_numpy(CartesianMask(3, seed=0, num_low=4)((size, size)))
    zf, y = undersample(x, mask)
    return zf, y, mask


def test_taps_capture_every_conv_activation_without_changing_forward():
    model = DCCNN(depth=3, cascades=2, channels=4)
    zf, y, mask = _inputs()
    plain = model(zf, y, mask)
    names = tap_names(model)
    assert names[0] == "cascades.0.conv.0" and len(names) == 6
    with FeatureTaps(model, names) as taps:
        out = model(zf, y, mask)
    assert torch.equal(out, plain)
    assert taps["cascades.1.conv.0"].shape == (2, 4, 16, 16)
    assert taps["cascades.1.conv.2"].shape == (2, 1, 16, 16)
    assert (taps["cascades.0.conv.1"] >= 0).all()  # post-ReLU activation
    # Hooks are removed after the block.
    model(zf, y, mask)
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ConfigError, match="unknown feature tap"):
        FeatureTaps(model, ["cascades.9.conv.0"])


def test_taps_see_through_ddp_style_wrapper():
    model = DCCNN(depth=2, cascades=1, channels=2)
    wrapper = torch.nn.Module()
    wrapper.module = model
    taps = FeatureTaps(wrapper, ["cascades.0.conv.0"])
    assert taps.model is model


def test_residual_option():
    zf, y, mask = _inputs()
    res = DCCNN(depth=2, cascades=1, channels=2, residual=True)
    ref = DCCNN(depth=2, cascades=1, channels=2, residual=False)
    ref.load_state_dict(res.state_dict())
    for m in (res, ref):
        torch.nn.init.zeros_(m.cascades[0].conv[1][0].weight)
        torch.nn.init.zeros_(m.cascades[0].conv[1][0].bias)
    # Zero CNN output: residual model returns DC(zf); the reference one returns DC(0).
    assert torch.allclose(res(zf, y, mask), res.cascades[0].dc(zf, y, mask))
    assert torch.allclose(ref(zf, y, mask), ref.cascades[0].dc(torch.zeros_like(zf), y, mask))
    assert not torch.allclose(res(zf, y, mask), ref(zf, y, mask))
    assert res.arch["residual"] and not ref.arch["residual"]


def test_sft_branches_and_gradients():
    torch.manual_seed(1)  # tiny ReLU nets can start with a dead layer (~1 seed in 3): pin one
    teacher = DCCNN(depth=3, cascades=3, channels=8)
    student = DCCNN(depth=2, cascades=3, channels=8)
    sft = SFTModel(teacher, student)
    zf, y, mask = _inputs()
    out = sft(zf, y, mask)
    assert len(out.branches) == 2
    assert torch.allclose(out.teacher, teacher(zf, y, mask))
    # Branch 1 = S2,S3 applied to the DC output after T1.
    after_t1 = teacher.cascades[0](zf, y, mask)
    assert torch.allclose(out.branches[0], student.run_cascades(after_t1, y, mask, start=1))
    sum(b.abs().mean() for b in out.branches).backward()
    # Branch losses reach teacher blocks T1..T(N-1) and the shared student blocks S2..SN;
    # S1 gets no gradient in SFT training.
    assert teacher.cascades[0].conv[0][0].weight.grad.abs().sum() > 0
    assert student.cascades[2].conv[0][0].weight.grad.abs().sum() > 0
    assert student.cascades[0].conv[0][0].weight.grad is None


def test_sft_rejects_mismatched_cascades():
    with pytest.raises(ConfigError, match="same number of blocks"):
        SFTModel(DCCNN(3, 3), DCCNN(2, 2))


def test_student_blocks_load_strictly():
    sft = SFTModel(DCCNN(3, 3, channels=4), DCCNN(2, 3, channels=4))
    student = DCCNN(2, 3, channels=4)
    s1_before = student.cascades[0].conv[0][0].weight.clone()
    n = load_student_blocks(student, sft.state_dict())
    assert n == 8  # 2 cascades × 2 convs × (weight, bias)
    assert torch.equal(student.cascades[2].conv[1][0].bias, sft.student.cascades[2].conv[1][0].bias)
    assert torch.equal(student.cascades[0].conv[0][0].weight, s1_before)  # S1 untouched
    # A state dict without 'student.' keys (e.g. a plain teacher) loads nothing → error.
    with pytest.raises(CheckpointError, match="8 missing"):
        load_student_blocks(student, DCCNN(3, 3, channels=4).state_dict())
    # Another student depth: shape/key mismatch is an error, never a silent partial load.
    with pytest.raises(CheckpointError, match="missing|shape"):
        load_student_blocks(DCCNN(3, 3, channels=4), sft.state_dict())


def _bf16_forward(model, zf, y, mask, taps=()):
    with (
        torch.no_grad(),
        torch.autocast("cpu", dtype=torch.bfloat16),
        FeatureTaps(model, taps) as t,
    ):
        return model(zf.contiguous(memory_format=torch.channels_last), y, mask), t.features


def test_fused_conv_relu_matches_eager(monkeypatch):
    """bf16 channels-last forward without autograd runs conv+ReLU as one oneDNN kernel where
    oneDNN has bf16 convolutions (not on AVX2-only CPUs: eager there): same outputs and taps as
    the eager conv then ReLU (bf16 rounding at most)."""
    expected = 4 if fused.AVAILABLE else 0  # two ReLU blocks per cascade
    torch.manual_seed(0)
    model = DCCNN(depth=3, cascades=2, channels=8).to(memory_format=torch.channels_last)
    zf, y, mask = _inputs(size=24)
    block = model.cascades[0].conv[1]
    calls = []
    real = fused.conv_relu
    monkeypatch.setattr(base_module, "conv_relu", lambda *a: calls.append(1) or real(*a))
    out, taps = _bf16_forward(model, zf, y, mask, ["cascades.0.conv.1"])
    assert len(calls) == expected
    available = fused.AVAILABLE
    monkeypatch.setattr(fused, "AVAILABLE", False)
    ref, ref_taps = _bf16_forward(model, zf, y, mask, ["cascades.0.conv.1"])
    assert len(calls) == expected
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2 * ref.abs().max())
    a, b = taps["cascades.0.conv.1"].float(), ref_taps["cascades.0.conv.1"].float()
    assert (a >= 0).all()
    torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2 * b.abs().max())
    # Never with autograd, fp32, NCHW input, or a hook on the inner conv.
    x = torch.rand(2, 8, 24, 24).contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(fused, "AVAILABLE", available)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fused.fusable(x, block)  # grad mode on
        with torch.no_grad():
            assert fused.fusable(x, block) == available
            assert not fused.fusable(x.contiguous(), block)
            with FeatureTaps(model, ["cascades.0.conv.1.0"]):
                assert not fused.fusable(x, block)
    with torch.no_grad():
        assert not fused.fusable(x, block)  # fp32


def test_tap_on_inner_conv_sees_pre_relu_values_on_fast_path():
    torch.manual_seed(0)
    model = DCCNN(depth=3, cascades=1, channels=8).to(memory_format=torch.channels_last)
    zf, y, mask = _inputs(size=24)
    _, taps = _bf16_forward(model, zf, y, mask, ["cascades.0.conv.1.0"])
    assert (taps["cascades.0.conv.1.0"] < 0).any()  # the conv's own output, before its ReLU
