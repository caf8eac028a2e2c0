"""Multi-worker DDP: every stage kind and every KD method trains with 2 ranks as with 1.

Two levels. ``test_ddp_gradients_*`` runs real ``torch.distributed`` (gloo, 2 spawned
processes) and compares one step's gradients with the single-process gradient of the global
batch: it catches scale errors that Adam would hide in a loss comparison (a KD term counted
1/world, a batch-coupled loss on the local batch). The ``test_ddp_stage_*`` tests train one
real 2-worker Ray Train chain (every stage kind, every KD method, both inits) and compare each
stage with the same stage trained by 1 worker at the same global batch. KD stages of both use
the 1-worker teachers, so a stage is compared on equal inputs rather than after upstream drift.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from raykd.distill import available_kd_methods
from raykd.models.registry import build_model
from raykd.models.sft import SFTModel, student_block_state
from raykd.orchestration.cluster import TrialResources
from raykd.orchestration.identity import StageStore
from raykd.orchestration.runner import StageContext, StageRequest, ensure_stages
from raykd.train.checkpoint import load_checkpoint
from raykd.train.config import load_config
from raykd.train.seeding import seed_everything
from raykd.train.stages import SFTStage, build_stage
from tests import ddp_grads
from tests.conftest import tiny_overrides

GLOBAL_BATCH = ddp_grads.GLOBAL_BATCH


# ---- SFT: which parameters stay untrained ----------------------------------------------------
@pytest.mark.parametrize(
    "teacher, student",
    [(("dccnn", 3, 3, 4), ("dccnn", 2, 3, 4)), (("vdsr", 7, 3, 4), ("vdsr", 4, 3, 4))],
)
def test_sft_trains_exactly_the_student_blocks_sft_kd_loads(teacher, student):
    """S1 is frozen (no branch uses it); every other student tensor trains and is loaded."""
    stage = SFTStage(SFTModel(build_model(*teacher, True), build_model(*student, True)), 1, 1)
    frozen = {n for n, p in stage.model.student.named_parameters() if not p.requires_grad}
    trained = {n for n, p in stage.model.student.named_parameters() if p.requires_grad}
    block0 = f"{stage.model.student.block_attr}.0."
    assert frozen and all(n.startswith(block0) for n in frozen)
    loaded = set(student_block_state(dict(stage.model.state_dict()), stage.model.student))
    assert trained == loaded
    assert all(p.requires_grad for p in stage.model.teacher.parameters())
    # One step: exactly the trainable tensors get a gradient, so DDP has nothing to wait for.
    x = torch.rand(2, 1, 16, 16)
    y = torch.fft.fft2(x, norm="ortho")
    mask = torch.ones(1, 1, 16, 16)
    terms = stage(x, y, mask, x)
    sum(stage.weights[k] * v for k, v in terms.items()).backward()
    for name, p in stage.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name


def test_global_batch_is_split_over_the_ranks_or_refused():
    from raykd.errors import ConfigError
    from raykd.train.distributed import rank_batch

    assert rank_batch(8, 1) == 8 and rank_batch(8, 2) == 4 and rank_batch(8, 8) == 1
    with pytest.raises(ConfigError, match=r"data.batch_size 6 .* over 4 workers"):
        rank_batch(6, 4)


# ---- one step's gradients under torch.distributed --------------------------------------------
@pytest.mark.slow
def test_ddp_gradients_equal_global_batch(tmp_path):
    """2 gloo ranks, half the batch each == 1 process with the whole batch, for every stage."""
    out = tmp_path / "grads.pt"
    mp.spawn(ddp_grads.worker, args=(2, str(tmp_path / "pg"), str(out)), nprocs=2)
    ddp = torch.load(out)
    batch = ddp_grads.batch()
    ref = {k: ddp_grads.grads(s, batch) for k, s in ddp_grads.stages().items()}
    assert set(ddp) == set(ref)
    assert set(ref) == {"teacher", "sft", *(f"kd-{m}" for m in available_kd_methods())}
    for stage, grads in ref.items():
        assert set(ddp[stage]) == set(grads), stage
        if stage == "kd-fitnets":
            assert any(n.startswith("method.regressors") for n in grads)
        if stage == "kd-ft":
            assert any(n.startswith("method.translators") for n in grads)
        for name, g in grads.items():
            err = (ddp[stage][name] - g).norm().item()
            assert err <= 1e-4 * g.norm().item() + 1e-9, f"{stage} {name}: |Δ| {err:.2e}"


# ---- real 2-worker Ray Train chain vs 1 worker -----------------------------------------------
FITNETS_TAPS = {
    "kd.teacher_taps": "['cascades.{c}.conv.{hidden}']",  # 4 channels
    "kd.student_taps": "['cascades.{c}.conv.{last}']",  # 1 channel: a 1x1-conv regressor
}
# The row (KD init) each built-in method is compared on, so both inits are covered; any other
# registered method runs from a random init. Every registered method is compared.
ROW = {"at": "sft", "fsp": "random", "sp": "sft", "cc": "random", "pkt": "sft_random",
       "nst": "random", "fitnets": "random", "ft": "sft"}  # fmt: skip
_PART = {"fitnets": "method.regressors.", "ft": "method.translators."}


def _has_trainable_parts(method: str) -> bool:
    """Whether the method trains parts of its own (a regressor, a translator) in this test."""
    from raykd.distill import build_kd_method

    taps = {"teacher_taps": ["cascades.{c}.conv.{hidden}"]} if method == "fitnets" else {}
    taps |= {"student_taps": ["cascades.{c}.conv.{last}"]} if method == "fitnets" else {}
    options = {"pretrain_steps": 0} if method == "ft" else {}
    teacher, student = build_model("dccnn", 3, 2, 4, True), build_model("dccnn", 2, 2, 4, True)
    kd = build_kd_method(method, teacher, student, **taps, **options)
    return any(p.requires_grad for p in kd.parameters())


_KD = [(m, ROW.get(m, "random")) for m in available_kd_methods()]
KD_TRAINABLE = [(m, row) for m, row in _KD if _has_trainable_parts(m)]
KD_FEATURE = [(m, row) for m, row in _KD if (m, row) not in KD_TRAINABLE]


def _cfg(data: Path, kind: str, batch: int, **extra: str):
    over = {"data.batch_size": str(batch), "optim.epochs": "1", "optim.max_steps_per_epoch": "3"}
    return load_config(None, tiny_overrides(data, Path("unused"), kind, **(over | extra)))


def _requests(data: Path, batch: int, teachers: dict[str, str] | None = None):
    """teacher, sft, student and the KD stages; KD teachers from ``teachers`` if given."""
    reqs = {k: StageRequest(_cfg(data, k, batch)) for k in ("sft", "student")}
    # Two teacher epochs: the per-epoch reshuffle must deal the same global batches too.
    reqs = {"teacher": StageRequest(_cfg(data, "teacher", batch, **{"optim.epochs": "2"}))} | reqs
    teachers = teachers or {"teacher": reqs["teacher"].stage_id, "sft": reqs["sft"].stage_id}
    for method, row in KD_FEATURE + KD_TRAINABLE:
        extra = {"kd.method": method, "kd.init": "sft" if row == "sft" else "random"}
        extra |= FITNETS_TAPS if method == "fitnets" else {}
        extra |= {"kd.options": "{pretrain_steps: 3}"} if method == "ft" else {}
        extra["teacher_checkpoint"] = "set-by-the-runner"
        teacher = teachers["teacher" if row == "random" else "sft"]
        reqs[f"kd-{method}-{row}"] = StageRequest(_cfg(data, "kd", batch, **extra), teacher)
    return reqs


@pytest.fixture(scope="module")
def ddp_chain(ray_session, tiny_data, tmp_path_factory):
    """{1: records, 2: records} by label: 1 worker in-process, then one 2-worker Ray Train chain
    (tracked in MLflow) in a store of its own, both at the same global batch. ``data.batch_size``
    is the global batch, so both ask for the same stage identities; the 2-worker chain trains
    its own teachers (fp32 drift between the two ~1e-7, far inside the tolerance)."""
    from raykd.tracking import Tracking

    threads = torch.get_num_threads()
    one = _requests(tiny_data, GLOBAL_BATCH)
    res1 = TrialResources(1, False, 1, 1, 1)
    store1 = StageStore(tmp_path_factory.mktemp("ddp_chain_1"))
    recs1 = ensure_stages(list(one.values()), StageContext(store1, None, res1, local=True))
    torch.set_num_threads(threads)
    root2 = tmp_path_factory.mktemp("ddp_chain_2")
    tracking = Tracking(f"sqlite:///{root2}/mlflow.db", "ddp", artifact_root=root2 / "art")
    two = _requests(tiny_data, GLOBAL_BATCH)
    res2 = TrialResources(2, False, 1, 1, 1)
    recs2 = ensure_stages(list(two.values()), StageContext(StageStore(root2), tracking, res2))
    return {
        1: {k: recs1[r.stage_id] for k, r in one.items()},
        2: {k: recs2[r.stage_id] for k, r in two.items()},
        "ids": ({k: r.stage_id for k, r in one.items()}, {k: r.stage_id for k, r in two.items()}),
        "configs": {k: r.cfg for k, r in two.items()},
        "tracking": tracking,
        "store2": StageStore(root2),
    }


def _history(record) -> list[dict]:
    text = (Path(record.output_dir) / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def _lineage(record) -> dict:
    return json.loads((Path(record.output_dir) / "result.json").read_text())["lineage"]


def _assert_same_result(chain, label: str) -> None:
    h1, h2 = _history(chain[1][label]), _history(chain[2][label])
    assert len(h1) == len(h2) == (2 if label == "teacher" else 1), label
    for e1, e2 in zip(h1, h2, strict=True):
        compared = [k for k in e1 if k.startswith(("train/", "val/"))]
        assert "train/loss" in compared and "val/loss" in compared
        for key in compared:
            a, b = e1[key], e2[key]
            # Noise from batch-size-dependent kernels and reduction order: ~1e-7 relative.
            assert b == pytest.approx(a, rel=1e-4, abs=1e-7), f"{label} {key}: {a} vs {b}"
    assert chain[2][label].metrics["val"]["psnr"] == pytest.approx(
        chain[1][label].metrics["val"]["psnr"], rel=1e-4
    )


@pytest.mark.ray
def test_ddp_stage_teacher(ddp_chain):
    _assert_same_result(ddp_chain, "teacher")


@pytest.mark.ray
def test_worker_count_is_not_part_of_the_identity_but_is_recorded(ddp_chain, tiny_data):
    """Same global batch -> same stage identity, whatever the world size; the world size and
    both batch sizes are on every stage's result and MLflow run; another global batch is
    another stage (never reused in its place)."""
    ids1, ids2 = ddp_chain["ids"]
    assert ids1 == ids2
    client = ddp_chain["tracking"].client
    for label, record in ddp_chain[2].items():
        want = {
            "compute.world_size": "2",
            "compute.global_batch": str(GLOBAL_BATCH),
            "compute.rank_batch": str(GLOBAL_BATCH // 2),
        }
        compute = json.loads((Path(record.output_dir) / "result.json").read_text())["compute"]
        assert want.items() <= compute.items(), label
        params = client.get_run(record.mlflow_run_id).data.params
        assert want.items() <= params.items(), label
        assert ddp_chain[1][label].compute["compute.world_size"] == "1"
    other = StageRequest(_cfg(tiny_data, "teacher", GLOBAL_BATCH * 2, **{"optim.epochs": "2"}))
    assert other.stage_id != ids2["teacher"]
    assert ddp_chain["store2"].get(other.stage_id) is None


@pytest.mark.ray
def test_ddp_stage_student(ddp_chain):
    _assert_same_result(ddp_chain, "student")


@pytest.mark.ray
def test_ddp_stage_sft(ddp_chain):
    """SFT trains teacher and student branches under DDP; S1 stays at its initialisation."""
    _assert_same_result(ddp_chain, "sft")
    cfg = ddp_chain["configs"]["sft"]
    seed_everything(cfg.seed)
    init = build_stage(cfg)[0].model.state_dict()
    trained = load_checkpoint(ddp_chain[2]["sft"].best_checkpoint)["model"]
    s1 = [k for k in init if k.startswith("student.cascades.0.")]
    later = [k for k in init if k.startswith("student.cascades.1.")]
    assert s1 and later
    assert all(torch.equal(trained[k], init[k]) for k in s1)
    assert all(not torch.equal(trained[k], init[k]) for k in later)
    assert not torch.equal(trained["teacher.cascades.0.conv.0.0.weight"],
                           init["teacher.cascades.0.conv.0.0.weight"])  # fmt: skip
    # SFT-KD students load exactly the trained S2..SN tensors.
    for label in ("kd-at-sft", "kd-sp-sft", "kd-ft-sft"):
        assert _lineage(ddp_chain[2][label])["sft_tensors_loaded"] == len(later), label


@pytest.mark.ray
@pytest.mark.parametrize("method, row", KD_FEATURE)
def test_ddp_stage_kd_feature_methods(ddp_chain, method, row):
    """AT, FSP, NST (per-sample) and SP, PKT (batch-coupled, gathered over ranks)."""
    _assert_same_result(ddp_chain, f"kd-{method}-{row}")


@pytest.mark.ray
@pytest.mark.parametrize("method, row", KD_TRAINABLE)
def test_ddp_stage_kd_trainable_methods(ddp_chain, method, row):
    """FitNets' regressor, CC's embeddings (batch-coupled) and FT's translator train under DDP;
    FT's paraphraser is pre-trained on global batches, so its pre-training matches 1 worker."""
    label = f"kd-{method}-{row}"
    _assert_same_result(ddp_chain, label)
    stage = load_checkpoint(Path(ddp_chain[2][label].output_dir) / "last.pt")["stage"]
    part = _PART.get(method, "method.")
    assert any(k.startswith(part) for k in stage), label
    if method == "ft":
        l1, l2 = _lineage(ddp_chain[1][label]), _lineage(ddp_chain[2][label])
        assert l2["kd_pretrain"] == pytest.approx(l1["kd_pretrain"], rel=1e-4)
