"""Issue 6: VDSR super-resolution, the DC-UNet heterogeneous teacher, SFT over any block net."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from raykd.data.masks import EmptyMask, LowPassMask
from raykd.data.transforms import degrade, fft2, undersample
from raykd.distill import build_kd_method
from raykd.errors import ConfigError
from raykd.models.base import count_parameters
from raykd.models.dccnn import DCCNN
from raykd.models.dcunet import DCUNet
from raykd.models.sft import SFTModel, load_student_blocks
from raykd.models.taps import FeatureTaps
from raykd.models.vdsr import VDSR, block_sizes
from raykd.train.config import SRConfig
from raykd.train.loop import Trainer, train_stage


def vdsr_params(layers: int, c: int) -> int:
    """conv(1→C) + (layers−2)·conv(C→C) + conv(C→1), 3x3 with bias."""
    return (9 * c + c) + (layers - 2) * (9 * c * c + c) + (9 * c + 1)


def dcunet_params(cascades: int, c: int) -> int:
    """Two-level U-Net per cascade: enc0 1→C→C, enc1 C→2C→2C, dec0 3C→C→C, out C→1."""
    conv = lambda i, o: 9 * i * o + o  # noqa: E731
    per = conv(1, c) + conv(c, c) + conv(c, 2 * c) + conv(2 * c, 2 * c)
    per += conv(3 * c, c) + conv(c, c) + conv(c, 1)
    return cascades * per


def test_vdsr_shapes_parameters_and_blocks():
    # Documented counts (README): teacher 12 layers 370 497, students 4 → 75 073, 7 → 185 857.
    assert vdsr_params(12, 64) == 370_497 and vdsr_params(4, 64) == 75_073
    for layers in (12, 7, 4):
        model = VDSR(layers, blocks=3, channels=64)
        assert count_parameters(model) == vdsr_params(layers, 64)
    assert block_sizes(11, 3) == [4, 4, 3] and block_sizes(3, 3) == [1, 1, 1]
    model = VDSR(12, blocks=3, channels=8)
    groups = model.tap_groups()
    assert [len(g) for g in groups] == [4, 4, 4]  # 4, 4, 3 convs + the output conv
    assert groups[-1][-1] == "blocks.2.head"
    x = torch.rand(2, 1, 20, 18)
    assert model(x, fft2(x), torch.zeros_like(x)).shape == x.shape
    with pytest.raises(ConfigError, match="blocks"):
        VDSR(4, blocks=4)


def test_vdsr_global_residual():
    """With a zero output conv, VDSR returns its (upsampled) input exactly."""
    model = VDSR(5, blocks=2, channels=4)
    head = model.blocks[-1].head[0]
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    x = torch.rand(2, 1, 12, 12)
    assert torch.equal(model(x, fft2(x), torch.zeros_like(x)), x)
    plain = VDSR(5, blocks=2, channels=4, residual=False)
    plain.load_state_dict(model.state_dict())
    assert torch.count_nonzero(plain(x, fft2(x), torch.zeros_like(x))) == 0


def test_dcunet_shapes_parameters_and_data_consistency():
    assert count_parameters(DCUNet(2, 5, 32)) == dcunet_params(5, 32) == 511_045
    model = DCUNet(levels=2, cascades=2, channels=4)
    target = torch.rand(2, 1, 15, 13)  # odd sizes: pooling and upsampling must line up
    mask = torch.from_numpy(LowPassMask(2)((15, 13))).expand(2, 1, 15, 13)
    zf, y = undersample(target, mask)
    out = model(zf, y, mask)
    assert out.shape == target.shape
    # Fully sampled: data consistency returns the measured image, whatever the weights.
    full = torch.ones_like(target)
    zf, y = undersample(target, full)
    assert torch.allclose(model(zf, y, full), target, atol=1e-5)


def test_sft_over_heterogeneous_and_vdsr_blocks():
    x = torch.rand(2, 1, 16, 16)
    mask = torch.ones_like(x) * 0  # nothing measured: DC passes through
    y = fft2(x) * mask
    sft = SFTModel(DCUNet(2, 3, 4), DCCNN(3, 3, 4))
    out = sft(x, y, mask)
    assert len(out.branches) == 2 and all(b.shape == x.shape for b in out.branches)
    (out.teacher.sum() + sum(b.sum() for b in out.branches)).backward()
    assert sft.teacher.cascades[0].enc[0][0][0].weight.grad is not None
    assert sft.student.cascades[1].conv[0][0].weight.grad is not None
    assert sft.student.cascades[0].conv[0][0].weight.grad is None  # S1 is never on a branch
    v = SFTModel(VDSR(12, 3, 8), VDSR(4, 3, 8))
    out = v(x, y, mask)
    assert len(out.branches) == 2 and out.teacher.shape == x.shape
    student = VDSR(4, 3, 8)
    assert load_student_blocks(student, v.state_dict()) == 4 + 2  # S2, S3 convs + output conv
    assert torch.equal(student.blocks[2].head[0].weight, v.student.blocks[2].head[0].weight)
    with pytest.raises(ConfigError, match="channels must match"):
        SFTModel(VDSR(12, 3, 16), VDSR(4, 3, 8))


def test_heterogeneous_taps_default_and_configured():
    teacher, student = DCUNet(2, 3, 4), DCCNN(3, 3, 4)
    at = build_kd_method("at", teacher, student)
    assert at.teacher_taps == [f"cascades.{c}.dec.0.0" for c in range(3)]
    assert at.student_taps == [f"cascades.{c}.conv.1" for c in range(3)]
    mapped = build_kd_method(
        "at", teacher, student, ["cascades.{c}.dec.0.1"], ["cascades.{c}.conv.{hidden}"]
    )
    assert mapped.student_taps == [f"cascades.{c}.conv.1" for c in range(3)]
    x = torch.rand(2, 1, 16, 16)
    y, mask = fft2(x) * 0, torch.zeros_like(x)
    with (
        FeatureTaps(teacher, mapped.teacher_taps) as t,
        FeatureTaps(student, mapped.student_taps) as s,
    ):
        teacher(x, y, mask)
        student(x, y, mask)
    assert torch.isfinite(mapped(t.features, s.features))
    with pytest.raises(ConfigError, match="unknown feature tap"):
        build_kd_method("at", teacher, student, ["cascades.{c}.conv.1"], None)


def test_sr_degradations():
    mask = LowPassMask(4)((16, 12))
    assert mask.sum() == (16 // 4) * (12 // 4) and mask[0, 0] == 1  # keeps DC, N/s per axis
    assert mask[8, 6] == 0  # the highest frequency is dropped
    target = torch.rand(3, 1, 16, 12)
    m = torch.from_numpy(mask)
    inp, y = degrade(target, m, SRConfig(scale=4, degradation="kspace"))
    # k-space truncation: the input's spectrum is the target's, cut to the central block.
    assert torch.allclose(fft2(inp.to(torch.complex64)) * m, y, atol=1e-4) or inp.min() >= 0
    assert torch.allclose(y, fft2(target) * m)
    empty = torch.from_numpy(EmptyMask()((16, 12)))
    flat = torch.full((1, 1, 16, 12), 0.7)
    up, y = degrade(flat, empty, SRConfig(scale=2, degradation="image"))
    assert up.shape == flat.shape and torch.allclose(up, flat, atol=1e-5)  # constants survive
    assert torch.count_nonzero(y) == 0
    detail = torch.rand(1, 1, 16, 12)
    up, _ = degrade(detail, empty, SRConfig(scale=2, degradation="image"))
    assert not torch.allclose(up, detail, atol=1e-2)  # detail is lost: something to learn


@pytest.mark.parametrize("degradation", ["kspace", "image"])
def test_sr_stages_train_and_distill(tiny_config, degradation):
    vdsr = {
        "data.sr": f"{{scale: 2, degradation: {degradation}}}",
        "teacher.arch": "vdsr",
        "teacher.depth": "6",
        "teacher.cascades": "2",
        "student.arch": "vdsr",
        "student.depth": "3",
        "student.cascades": "2",
        "optim.epochs": "1",
    }
    teacher = train_stage(tiny_config("teacher", name=f"t_{degradation}", **vdsr))
    assert teacher.history[-1]["val/psnr"] > 0
    assert teacher.lineage == {} or isinstance(teacher.lineage, dict)
    sft = train_stage(tiny_config("sft", name=f"s_{degradation}", **vdsr))
    kd = tiny_config(
        "kd",
        name=f"kd_{degradation}",
        **vdsr,
        **{
            "teacher_checkpoint": str(sft.best_checkpoint),
            "kd.init": "sft",
            "kd.method": "fitnets",
        },
    )
    trainer = Trainer(kd)
    assert trainer.lineage["sft_tensors_loaded"] == 4  # S2 conv + output conv (weight, bias)
    assert kd.task == "sr"
    assert np.isfinite(trainer.fit().history[-1]["train/kd"])


def test_task_presets_build_valid_stage_configs():
    from raykd.plan import grid_rows, load_preset, stage_config
    from raykd.plan.identity import stage_identity

    sr = load_preset("sr_smoke")
    rows = grid_rows(sr)
    methods = {r.method for r in rows if r.kind == "sft_kd"}
    assert methods == {"at", "fitnets", "fsp", "sp", "cc", "pkt", "nst", "ft"}
    kd = stage_config(sr, next(r for r in rows if r.method == "ft"), "kd")
    assert kd.task == "sr" and kd.data.sr.scale == 2 and kd.data.sr.degradation == "kspace"
    assert (kd.teacher.arch, kd.teacher.depth, kd.student.depth) == ("vdsr", 12, 4)
    image = load_preset("sr_smoke", {"sr_degradation": "image"})
    teacher = stage_config(sr, rows[0], "teacher")
    assert stage_identity(stage_config(image, rows[0], "teacher")) != stage_identity(teacher)
    with pytest.raises(ConfigError, match="scales"):
        load_preset("sr_smoke", {"accelerations": [2.5]})
    het = load_preset("dcunet_smoke")
    kd = stage_config(het, grid_rows(het)[-1], "kd")
    assert kd.teacher.arch == "dcunet" and kd.student.arch == "dccnn"
    assert kd.kd.teacher_taps == ["cascades.{c}.dec.0.1"]
    # Recon configs keep the identities they had before architectures/SR existed.
    cpu = load_preset("cpu")
    t = stage_config(cpu, grid_rows(cpu)[0], "teacher")
    explicit = t.model_copy(update={"teacher": t.teacher.model_copy(update={"arch": "dccnn"})})
    assert stage_identity(explicit) == stage_identity(t) == "teacher-4c3dc0394260"


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")), ids=str
)
def test_shipped_configs_validate(path):
    from raykd.train.config import load_config

    cfg = load_config(path)
    assert cfg.kind in ("teacher", "sft", "student", "kd")


def test_extra_methods_selectable_in_searches():
    from raykd.plan import load_preset, load_search, stage_config, trial_row_and_spec

    search = load_search("kd_weights_extended")
    assert {"pkt", "nst", "ft"} <= set(search.params["method"].choices)
    spec, row, overrides = trial_row_and_spec(
        search, load_preset("sr_smoke"), {"method": "nst", "kd_weight_scale": 2.0}
    )
    cfg = stage_config(spec, row, "kd", overrides)
    assert cfg.kd.method == "nst" and cfg.kd.resolved_weight == pytest.approx(100.0)
    assert cfg.task == "sr"
    with pytest.raises(ConfigError, match="unknown KD method"):
        load_search("kd_weights", {"params": {"method": {"choices": ["at", "dark"]}}})
