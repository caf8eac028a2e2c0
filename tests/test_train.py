import json

import pytest
import torch

from raykd.distill import available_kd_methods
from raykd.errors import CheckpointError, ConfigError
from raykd.train.checkpoint import load_checkpoint, save_checkpoint
from raykd.train.config import load_config
from raykd.train.loop import Trainer, train_stage
from raykd.train.stages import load_model


def _weights(path):
    return load_checkpoint(path)["model"]


def test_teacher_trains_checkpoints_and_improves(tiny_config):
    cfg = tiny_config("teacher", **{"optim.epochs": "5", "optim.lr": "3e-3"})
    result = train_stage(cfg)
    losses = [h["train/loss"] for h in result.history]
    assert len(losses) == 5 and all(map(lambda v: v == v, losses))
    assert losses[-1] < losses[0]
    assert result.best_checkpoint.is_file() and result.last_checkpoint.is_file()
    # Best-on-validation selection: best.pt is the epoch with the lowest validation loss.
    vals = [h["val/loss"] for h in result.history]
    assert result.best_epoch == vals.index(min(vals))
    best = load_checkpoint(result.best_checkpoint)
    assert best["epoch"] == result.best_epoch and "optimizer" not in best
    # Full checkpoints load with weights_only=True and hold everything needed to resume.
    last = torch.load(result.last_checkpoint, weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "config", "epoch"} <= set(last)
    assert json.loads(last["config"])["kind"] == "teacher"
    lines = (result.output_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 5


def test_resume_is_exact(tiny_config):
    straight = train_stage(tiny_config("student", name="a", **{"optim.epochs": "3"}))
    train_stage(tiny_config("student", name="b", **{"optim.epochs": "2"}))
    resumed = train_stage(tiny_config("student", name="b", **{"optim.epochs": "3"}))
    # Same kernels, same order: resuming replays the run (an abs floor, not round(): a 1-ulp
    # difference must not flip a rounding boundary on some CPU).
    assert [h["train/loss"] for h in resumed.history] == pytest.approx(
        [h["train/loss"] for h in straight.history], rel=1e-6, abs=1e-9
    )
    a, b = _weights(straight.last_checkpoint), _weights(resumed.last_checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sft_then_kd_with_sft_init(tiny_config):
    sft = train_stage(tiny_config("sft", **{"sft.w_imit": "0.5"}))
    terms = {k for k in sft.history[0] if k.startswith("train/") and "/ratio/" not in k}
    assert terms == {"train/loss", "train/rec_t", "train/rec_s", "train/imit"}
    ratios = {k for k in sft.history[0] if k.startswith("train/ratio/")}
    assert ratios == {"train/ratio/rec_s", "train/ratio/imit"}  # both relative to rec_t
    kd_cfg = tiny_config(
        "kd",
        **{"teacher_checkpoint": str(sft.best_checkpoint), "kd.init": "sft", "kd.method": "at"},
    )
    trainer = Trainer(kd_cfg)
    # D2C2 student: S2 = one cascade × 2 convs × (weight, bias).
    assert trainer.lineage["sft_tensors_loaded"] == 4
    sft_student = load_model(sft.best_checkpoint, part="student")
    assert torch.equal(
        trainer.stage.model.cascades[1].conv[0][0].weight, sft_student.cascades[1].conv[0][0].weight
    )
    # The frozen teacher is no submodule: not in the optimiser, not in the saved model.
    assert all(not k.startswith("teacher") for k in trainer.stage.state_dict())
    result = trainer.fit()
    assert {"train/rec", "train/kd"} <= set(result.history[-1])
    teacher = trainer.stage.teacher
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("method", available_kd_methods())  # every registered method
def test_kd_methods_train(tiny_config, tmp_path, method):
    teacher = train_stage(tiny_config("teacher", **{"optim.epochs": "1"}))
    cfg = tiny_config(
        "kd",
        name=f"kd_{method}",
        **{
            "teacher_checkpoint": str(teacher.best_checkpoint),
            "kd.method": method,
            "kd.output_weight": "0.5",
            "optim.epochs": "1",
            **({"kd.options": "{pretrain_steps: 12}"} if method == "ft" else {}),
        },
    )
    result = train_stage(cfg)
    if method == "ft":  # the paraphraser was pre-trained on teacher features first
        stats = result.lineage["kd_pretrain"]
        assert stats["ft_paraphraser_loss_last"] < stats["ft_paraphraser_loss_first"]
    h = result.history[-1]
    assert h["train/kd"] >= 0 and h["train/out"] > 0
    assert h["train/loss"] == pytest.approx(
        h["train/rec"] + cfg.kd.resolved_weight * h["train/kd"] + 0.5 * h["train/out"], rel=1e-4
    )


def test_sft_init_needs_sft_checkpoint(tiny_config):
    teacher = train_stage(tiny_config("teacher", **{"optim.epochs": "1"}))
    cfg = tiny_config(
        "kd", **{"teacher_checkpoint": str(teacher.best_checkpoint), "kd.init": "sft"}
    )
    with pytest.raises(CheckpointError, match="needs an SFT checkpoint"):
        Trainer(cfg)


def test_checkpoint_from_other_architecture(tiny_config):
    teacher = train_stage(tiny_config("teacher", **{"optim.epochs": "1"}))
    cfg = tiny_config(
        "kd", **{"teacher_checkpoint": str(teacher.best_checkpoint), "teacher.depth": "4"}
    )
    with pytest.raises(CheckpointError, match="teacher is .*'depth': 3.*config says.*'depth': 4"):
        Trainer(cfg)
    # Resuming a run whose checkpoint has another architecture fails before any training.
    other = tiny_config("teacher", name="other", **{"teacher.channels": "6"})
    with pytest.raises(CheckpointError, match="does not match the model"):
        Trainer(other, resume_from=teacher.last_checkpoint)


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "arch": {"type": "x"}})
    real_save = torch.save

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(path, {"model": {"w": torch.zeros(2)}, "arch": {"type": "x"}})
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temp file left behind


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(100)}, "arch": {"type": "x"}})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_config_errors_name_file_line_and_key(tmp_path):
    cfg = tmp_path / "stage.yaml"
    cfg.write_text("kind: teacher\noptim:\n  epochs: 3\n  lr: -1\n  colour: red\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    text = str(err.value)
    assert str(cfg) in text
    assert "optim.lr (line 4)" in text and "greater than 0" in text
    assert "optim.colour (line 5)" in text
    with pytest.raises(ConfigError, match="teacher.depth.*greater than or equal to 2"):
        load_config(None, ["kind=teacher", "teacher.depth=1"])
    with pytest.raises(ConfigError, match="kd.method 'dark' is unknown.*'at'"):
        load_config(None, ["kind=kd", "kd.method=dark", "teacher_checkpoint=x.pt"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["kind"])
    # YAML 1.1 octal trap: volume ids keep their leading zeros.
    assert load_config(None, ["kind=teacher", "data.val=[0401]"]).data.val == ["0401"]
