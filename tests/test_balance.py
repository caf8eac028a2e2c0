"""Calibrated loss balance, term-ratio metrics (trainer and MLflow), and stage identity."""

from __future__ import annotations

import pytest
import torch

from raykd.data.sampling import ShardedSampler
from raykd.errors import ConfigError
from raykd.orchestration.identity import stage_identity
from raykd.train.balance import ratio_warnings
from raykd.train.loop import Trainer, train_stage


@pytest.fixture
def teacher_ckpt(tiny_config):
    return str(train_stage(tiny_config("teacher", **{"optim.epochs": "1"})).best_checkpoint)


def first_batch_means(trainer: Trainer, batches: int) -> dict[str, float]:
    """Term means over the first training batches of epoch 0, recomputed outside the trainer."""
    train = trainer.datasets["train"]
    sampler = ShardedSampler(len(train), 0, 1, shuffle=True, seed=trainer.cfg.seed)
    sampler.set_epoch(0)
    sums: dict[str, float] = {}
    with torch.no_grad():
        for i, sample in enumerate(trainer._loader(train, sampler)):
            if i == batches:
                break
            for k, v in trainer.stage(*trainer._batch(sample)).items():
                sums[k] = sums.get(k, 0.0) + v.item() / batches
    return sums


@pytest.mark.slow
def test_calibrated_kd_weight_ratio_metrics_and_resume(tiny_config, teacher_ckpt):
    overrides = {
        "teacher_checkpoint": teacher_ckpt,
        "kd.method": "at",
        "kd.balance": "{ratio: 0.5, batches: 2}",
    }
    cfg = tiny_config("kd", **overrides, **{"optim.epochs": "1"})
    trainer = Trainer(cfg)
    means = first_batch_means(trainer, 2)
    torch_state = torch.get_rng_state()
    balance = trainer.calibrate()
    assert torch.equal(torch.get_rng_state(), torch_state)  # training is not perturbed
    expected = 0.5 * means["rec"] / means["kd"]
    assert expected != pytest.approx(1000.0)
    assert balance["rule"] == "calibrated" and balance["batches"] == 2
    assert trainer.stage.weights["kd"] == pytest.approx(expected, rel=1e-4)
    assert balance["ratios"]["kd"] == pytest.approx(0.5, rel=1e-4)
    result = trainer.fit()
    h = result.history[-1]
    assert h["train/ratio/kd"] == pytest.approx(
        trainer.stage.weights["kd"] * h["train/kd"] / h["train/rec"], rel=1e-5
    )
    assert h["train/loss"] == pytest.approx(
        h["train/rec"] + trainer.stage.weights["kd"] * h["train/kd"], rel=1e-4
    )
    # Resuming keeps the run's own calibrated weight (no new measurement of a trained model).
    resumed = Trainer(tiny_config("kd", **overrides, **{"optim.epochs": "2"}))
    assert resumed.start_epoch == 1
    assert resumed.stage.weights["kd"] == trainer.stage.weights["kd"]
    assert resumed.calibrate() == trainer.balance


def test_fixed_weight_still_measures_step0_ratio(tiny_config, teacher_ckpt):
    cfg = tiny_config("kd", **{"teacher_checkpoint": teacher_ckpt, "kd.method": "sp"})
    trainer = Trainer(cfg)
    means = first_batch_means(trainer, 4)
    balance = trainer.calibrate()
    assert balance["rule"] == "fixed" and trainer.stage.weights["kd"] == 3000.0
    assert balance["ratios"]["kd"] == pytest.approx(3000.0 * means["kd"] / means["rec"], rel=1e-4)


def test_sft_imitation_calibrated(tiny_config):
    cfg = tiny_config("sft", **{"sft.balance": "{ratio: 2.0}", "sft.w_s": "0.5"})
    trainer = Trainer(cfg)
    balance = trainer.calibrate()
    assert balance["ratios"]["imit"] == pytest.approx(2.0, rel=1e-4)
    assert trainer.stage.weights["rec_s"] == 0.5  # only the imitation weight is calibrated
    assert "rec_s" in balance["ratios"]


def test_plain_stage_measures_nothing(tiny_config):
    trainer = Trainer(tiny_config("student"))
    assert trainer.calibrate()["ratios"] == {}


def test_identity_depends_on_rule_not_number(tiny_config):
    base = {"teacher_checkpoint": "x.pt", "kd.method": "at"}
    plain = tiny_config("kd", **base)
    r1 = tiny_config("kd", **base, **{"kd.balance": "{ratio: 1.0}"})
    r01 = tiny_config("kd", **base, **{"kd.balance": "{ratio: 0.1}"})
    ids = {stage_identity(c, "teacher-a") for c in (plain, r1, r01)}
    assert len(ids) == 3
    # A config without the option hashes as before the option existed.
    assert "balance" not in plain.to_dict()["kd"] or plain.kd.balance is None
    sft_plain, sft_cal = tiny_config("sft"), tiny_config("sft", **{"sft.balance": "{ratio: 1}"})
    assert stage_identity(sft_plain) != stage_identity(sft_cal)
    with pytest.raises(ConfigError, match="kd.weight.*kd.balance"):
        tiny_config("kd", **base, **{"kd.weight": "3", "kd.balance": "{ratio: 1}"})
    with pytest.raises(ConfigError, match="ratio"):
        tiny_config("kd", **base, **{"kd.balance": "{ratio: 0}"})


def test_ratio_warnings() -> None:
    weights = {"rec": 1.0, "kd": 2.0, "out": 0.0, "imit": 1.0}
    lines = ratio_warnings(
        {"train/ratio/kd": 11.0, "train/ratio/out": 0.0, "train/ratio/imit": 5e-4}, weights
    )
    assert len(lines) == 2
    assert "'kd' is 11x" in lines[0] and "'imit' is only 0.0005x" in lines[1]
    assert ratio_warnings({"kd": 9.9, "imit": 2e-3}, weights) == []


def test_ratios_and_weights_in_mlflow(tiny_config, teacher_ckpt, tmp_path):
    from raykd.orchestration.messages import ChainRequest, PlannedStage
    from raykd.orchestration.train_fn import run_training
    from raykd.tracking import Tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = Tracking(uri, "balance", tmp_path / "artifacts")
    run_id = tracking.start_run("kd")
    cfg = tiny_config(
        "kd",
        **{"teacher_checkpoint": teacher_ckpt, "kd.method": "nst", "kd.balance": "{ratio: 0.3}"},
    )
    stage = PlannedStage(stage=cfg, output_dir=cfg.output_dir, mlflow_run_id=run_id)
    chain = ChainRequest(stages=[stage], tracking_uri=uri, experiment="balance", root=str(tmp_path))
    run_training(chain, stage, rank=0, report=None, resume_from=None)
    history = tracking.client.get_metric_history(run_id, "train_ratio_kd")
    by_step = {m.step: m.value for m in history}
    assert sorted(by_step) == [0, 1, 2]  # before training, then per epoch
    assert by_step[0] == pytest.approx(0.3, rel=1e-4)
    params = tracking.client.get_run(run_id).data.params
    assert params["balance.rule"] == "calibrated"
    assert float(params["weights.kd"]) > 0 and params["weights.rec"] == "1.0"


@pytest.mark.ray
def test_ddp_ranks_share_one_calibrated_weight(ray_session, tiny_data, tmp_path):
    """2 ranks × 1 slice measure the same 8 samples as 1 rank × 2 (global batch 2 in both, one
    stage identity, trained in two stores): one weight results.

    AT's loss is a per-sample mean, so the rank-averaged measurement equals the single-rank one.
    """
    import json
    from pathlib import Path

    from raykd.orchestration.cluster import TrialResources
    from raykd.orchestration.identity import StageStore
    from raykd.orchestration.runner import StageContext, StageRequest, ensure_stages
    from raykd.plan.stages import StageOverrides, stage_config
    from tests.conftest import tiny_grid
    from tests.test_orchestration import _row

    spec = tiny_grid(tiny_data, kd_balance=0.5)
    row = _row(dataset=str(tiny_data))
    teacher = StageRequest(stage_config(spec, row, "teacher"))
    weights = {}
    for workers in (1, 2):
        kd = StageRequest(
            stage_config(spec, row, "kd", StageOverrides(batch_size=2)), teacher.stage_id
        )
        assert kd.cfg.kd.balance.ratio == 0.5
        store = StageStore(tmp_path / f"store{workers}")
        ctx = StageContext(store, None, TrialResources(workers, False, 1, 1, 1))
        record = ensure_stages([teacher, kd], ctx)[kd.stage_id]
        result = json.loads((Path(record.output_dir) / "result.json").read_text())
        weights[workers] = result["lineage"]["balance"]["weights"]["kd"]
    assert weights[2] == pytest.approx(weights[1], rel=1e-4)
