"""GPUs as a resource and the CUDA path, checked without a GPU: trial sizing on node shapes,
the GPU share rule, GPU stage identities, the device each process trains on, RNG state of one
device, precision policy. Tests marked ``gpu`` need CUDA (``RAYKD_TEST_GPU=1``)."""

from __future__ import annotations

import pytest
import torch

from raykd.errors import ConfigError, RaykdError
from raykd.orchestration import devices
from raykd.orchestration.sizing import size_trials
from raykd.plan import gpus
from raykd.plan.identity import stage_identity
from raykd.plan.presets import load_preset
from raykd.plan.rows import grid_rows
from raykd.plan.stages import row_requests
from raykd.train import checkpoint as C
from raykd.train import precision as P


# ---- trial sizing ---------------------------------------------------------------------------
def test_quarter_gpus_pack_four_stages_per_gpu():
    res = size_trials([(16, 1)], 1, gpus_per_worker=0.25)
    assert res.use_gpu and res.gpus_per_worker == 0.25
    assert res.concurrency == 4 and res.cpus_per_worker == 4  # 16 CPUs over 4 stages
    assert "0.25 GPU + 4 CPU" in res.describe()
    two = size_trials([(16, 2), (16, 2)], 1, gpus_per_worker=0.5)
    assert two.concurrency == 8 and two.cpus_per_worker == 4


def test_cpus_per_worker_come_from_the_gpu_nodes_not_the_cluster():
    """A CPU-only head with 64 CPUs and one 8-CPU node with 2 GPUs: the old cluster-wide
    72 ÷ 2 = 36 CPUs per worker fitted no node; per node it is 4."""
    res = size_trials([(64, 0), (8, 2)], 1)
    assert res.cpus_per_worker == 4 and res.concurrency == 2 and res.gpus_per_worker == 1.0


def test_cpus_per_worker_is_honoured_on_gpu_and_capped_by_the_largest_gpu_node():
    res = size_trials([(64, 0), (8, 2)], 1, cpus_per_worker=2)
    assert res.cpus_per_worker == 2 and res.threads == 2
    with pytest.raises(RaykdError, match=r"--cpus-per-worker 16: .*largest has 8") as err:
        size_trials([(64, 0), (8, 2)], 1, cpus_per_worker=16)
    assert "\n" not in str(err.value)


def test_more_workers_than_gpus_is_refused_with_the_numbers():
    with pytest.raises(RaykdError, match=r"--workers 4: .*fits 2 \(GPUs 2") as err:
        size_trials([(32, 0), (16, 2)], 4)
    assert "\n" not in str(err.value) and "CPU-only" in str(err.value)
    # A kind with several workers takes whole GPUs even when the share asked is a fraction.
    res = size_trials([(16, 2)], {"teacher": 2, "sft": 2, "student": 1, "kd": 1}, None, None, 0.25)
    assert res.for_kind("teacher").gpu_share(2) == 1.0
    assert res.for_kind("kd").gpus_per_worker == 0.25 and res.for_kind("kd").workers == 1


def test_cpu_sizing_is_unchanged():
    res = size_trials([(2, 0)], None)
    assert (res.use_gpu, res.workers, res.cpus_per_worker, res.concurrency) == (False, 1, 2, 1)
    many = size_trials([(8, 0), (8, 0)], None, cpus_per_worker=1)
    assert many.concurrency == 16 and many.gpus_per_worker == 0


# ---- the GPU share rule and the plan -----------------------------------------------------
def test_default_share_rule_and_bounds():
    assert gpus.spec_gpus_per_worker(load_preset("paper", {})) == 0.25  # 32 ch, 240 px
    assert gpus.spec_gpus_per_worker(load_preset("paper", {"channels": 128})) == 1.0
    assert gpus.spec_gpus_per_worker(load_preset("paper", {"gpus_per_worker": 0.5})) == 0.5
    assert gpus.spec_gpus_per_worker(load_preset("paper", {}), 1) == 1.0
    assert gpus.default_gpus_per_worker(32, None) == 1.0  # size unknown: a whole GPU
    for bad in (0, 1.5, -0.25):
        with pytest.raises(ConfigError, match="share of one GPU"):
            gpus.check_gpus_per_worker(bad)
    assert [gpus.stages_per_gpu(s) for s in (1, 0.5, 0.3, 0.25)] == [1, 2, 3, 4]


def test_gpu_stages_have_identities_of_their_own_cpu_ones_do_not_move():
    spec = load_preset("smoke", {})
    row = grid_rows(spec)[-1]
    cpu = [r.stage_id for r in row_requests(spec, row)]
    gpu = [r.stage_id for r in row_requests(gpus.on_device(spec, True), row)]
    assert gpus.on_device(spec, False) is spec
    assert len(set(cpu) & set(gpu)) == 0 and len(cpu) == len(gpu)
    cfg = row_requests(spec, row)[0].cfg
    assert stage_identity(cfg) == stage_identity(cfg.model_copy(update={"device": "cpu"}))
    one = stage_identity(cfg.model_copy(update={"device": "cuda:1"}))
    assert one == stage_identity(cfg.model_copy(update={"device": "cuda"})) != cpu[0]


def test_reuse_refuses_a_stage_trained_on_the_other_device_class(tmp_path):
    from raykd.orchestration.identity import StageRecord, StageStore

    store = StageStore(tmp_path)
    folder = store.stage_dir("teacher-abc")
    folder.mkdir(parents=True)
    torch.save({"x": torch.zeros(1)}, folder / "best.pt")
    compute = {"compute.device": "cuda:0 (NVIDIA H100 80GB HBM3)", "compute.precision": "bf16"}
    record = StageRecord(
        stage_id="teacher-abc",
        kind="teacher",
        output_dir=str(folder),
        best_checkpoint=str(folder / "best.pt"),
        best_val_loss=0.1,
        best_epoch=0,
        compute=compute,
    )
    store.put(record)
    assert store.get_intact("teacher-abc", "cuda")[0] is not None
    got, problem = store.get_intact("teacher-abc", "cpu")
    assert got is None and "trained on cuda:0 (NVIDIA H100" in problem and "moved aside" in problem
    assert not folder.exists()  # kept aside as evidence, trained again


# ---- the device of each process ----------------------------------------------------------
def test_the_device_ray_assigned_is_used():
    assert devices.visible_index("2", "0,1,2,3") == 2
    assert devices.visible_index("2", "2") == 0  # Ray narrowed the list: its first GPU
    assert devices.visible_index("1", None) == 1
    with pytest.raises(RaykdError, match="hides it"):
        devices.visible_index("3", "0,1")
    assert devices.trial_device(False) == "cpu"  # a CPU trial stays on CPU, GPUs or not
    assert devices.stage_device("auto", "cuda:2") == "cuda:2"
    assert devices.stage_device("cuda", "cuda:2") == "cuda:2"
    assert devices.stage_device("cpu", "cuda:2") == "cpu"
    assert devices.stage_device("cuda", "auto") == "cuda"


def test_a_rank_without_its_gpu_fails_clearly():
    with pytest.raises(RaykdError, match="started for a GPU but got device 'cpu'") as err:
        devices.check_rank_device("cpu", use_gpu=True)
    assert "\n" not in str(err.value)
    with pytest.raises(RaykdError, match="planned for a GPU"):
        devices.stage_device("cuda", "cpu")
    assert devices.check_rank_device("cpu", use_gpu=False) == "cpu"
    assert devices.check_rank_device("cuda:0", use_gpu=False) == "cpu"
    with pytest.raises(RaykdError, match="assigned it none"):
        devices.trial_device(True)  # outside a trial that asked Ray for a GPU


# ---- RNG state of one device ----------------------------------------------------------------
def _cuda_state(seed: int) -> torch.Tensor:
    """The shape of ``torch.cuda.get_rng_state()``: 16 bytes (Philox seed and offset)."""
    return torch.tensor(list(seed.to_bytes(8, "little")) + [0] * 8, dtype=torch.uint8)


def test_rng_state_from_n_devices_restores_on_fewer():
    """Checkpoints written before this fix hold one CUDA state per visible GPU: a rank seeing
    fewer GPUs restores its own index when it exists, else the first."""
    four = [_cuda_state(s) for s in (1, 2, 3, 4)]
    assert torch.equal(C.cuda_state_for(four, 1), four[1])
    assert torch.equal(C.cuda_state_for(four, 6), four[0])
    one = _cuda_state(9)
    assert torch.equal(C.cuda_state_for(one, 3), one)  # new format: the rank's own device
    assert C.cuda_state_for([], 0) is None


def test_gpu_checkpoint_resumes_on_cpu(tiny_config):
    """A checkpoint whose RNG holds CUDA states (4 visible GPUs) resumes on CPU; a CPU one
    saves no CUDA state at all."""
    from raykd.train.loop import Trainer

    cfg = tiny_config("student", **{"optim.epochs": "1"})
    first = Trainer(cfg)
    first.fit()
    ckpt = torch.load(first.last_path, weights_only=True)
    assert "cuda" not in ckpt["rng"]
    ckpt["rng"]["cuda"] = [_cuda_state(s) for s in range(4)]
    C.save_checkpoint(first.last_path, {k: v for k, v in ckpt.items() if k != "format_version"})
    more = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"epochs": 2})})
    resumed = Trainer(more, resume_from=first.last_path)
    assert resumed.start_epoch == 1


# ---- precision --------------------------------------------------------------------------------
def test_emulated_bf16_is_not_native(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def probe(including_emulation=True):
        calls.append(including_emulation)
        return including_emulation  # a V100/T4: bf16 only emulated

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", probe)
    assert P.cuda_bf16() is False and calls == [False]


def test_fp32_on_cuda_means_no_tf32_and_says_so():
    assert P.cuda_tf32("fp32") == "off" and P.cuda_tf32("bf16") == "conv"
    path = P.ComputePath("cuda:0 (GPU)", "avx2", "fp32", "contiguous", "off")
    assert "precision fp32 (TF32 off)" in path.describe()
    assert path.as_params()["compute.tf32"] == "off"
    cpu = P.ComputePath("cpu", "avx2", "fp32", "contiguous")
    assert "compute.tf32" not in cpu.as_params() and "TF32" not in cpu.describe()
    P.configure_cuda(cpu, torch.device("cpu"))  # a no-op on CPU


# ---- on a GPU (RAYKD_TEST_GPU=1) --------------------------------------------------------------
@pytest.mark.gpu
def test_on_gpu_rng_of_many_devices_restores_on_one():
    device = torch.device("cuda", 0)
    saved = C.rng_state(device)
    assert isinstance(saved["cuda"], torch.Tensor)
    many = {**saved, "cuda": [saved["cuda"]] * (torch.cuda.device_count() + 3)}
    C.set_rng_state(many, device)  # more states than devices: no IndexError
    torch.rand(3, device=device)
    C.set_rng_state(saved, device)
    a = torch.rand(3, device=device)
    C.set_rng_state(saved, device)
    assert torch.equal(a, torch.rand(3, device=device))


@pytest.mark.gpu
def test_on_gpu_the_compute_path_is_what_it_says(tiny_config):
    from raykd.train.loop import Trainer

    trainer = Trainer(tiny_config("student", device="cuda", precision="fp32"))
    assert trainer.device.index is not None
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert torch.backends.cudnn.benchmark
    params = trainer.compute_params()
    assert params["compute.tf32"] == "off" and params["compute.device"].startswith("cuda:")
    auto = Trainer(tiny_config("student", name="auto", device="cuda", precision="auto"))
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    assert auto.precision == ("bf16" if native else "fp16")
    assert auto.scaler.is_enabled() == (auto.precision == "fp16")


@pytest.mark.gpu
def test_on_gpu_a_cpu_checkpoint_resumes_on_the_gpu_and_back(tiny_config):
    from raykd.train.loop import Trainer

    cfg = tiny_config("student", device="cpu", **{"optim.epochs": "1"})
    Trainer(cfg).fit()
    last = cfg.output_dir + "/last.pt"
    two = {"optim": cfg.optim.model_copy(update={"epochs": 2}), "device": "cuda"}
    on_gpu = Trainer(cfg.model_copy(update=two), resume_from=last)
    on_gpu.fit()
    assert "cuda" in torch.load(last, weights_only=True)["rng"]
    three = {"optim": cfg.optim.model_copy(update={"epochs": 3}), "device": "cpu"}
    back = Trainer(cfg.model_copy(update=three), resume_from=last)
    assert back.start_epoch == 2


# ---- --plan on a GPU cluster ------------------------------------------------------------------
def _cache_calibration(root, spec) -> None:
    """A calibration cache for every shape the paper grid plans, on CPU and on GPU: the plan
    then measures nothing (the timing of calibration is not this test's business)."""
    import json

    from raykd.orchestration.estimate import CALIBRATION_FILE, _machine_key
    from raykd.plan.cost import stage_graph

    rows = grid_rows(spec)
    shapes = {
        n.shape for s in (spec, gpus.on_device(spec, True)) for n in stage_graph(s, rows).values()
    }
    cost = {"epoch_s": 60.0, "fixed_s": 12.0, "source": "test cache"}
    root.mkdir(parents=True, exist_ok=True)
    cache = {f"{_machine_key()}|{shape}": cost for shape in shapes}
    (root / CALIBRATION_FILE).write_text(json.dumps(cache))


@pytest.mark.slow
def test_paper_plan_shows_gpus_per_stage_concurrency_and_gpu_hours(tmp_path, shared_data):
    """``raykd grid --preset paper --plan --gpus-per-worker 0.25`` in at most 30 s, no Ray, no
    training: on a GPU cluster the GPU share, stages per GPU and GPU-hours; on this CPU machine
    a line saying the share would not be used."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    root = tmp_path / "root"
    _cache_calibration(root, load_preset("paper", {}))
    code = "import sys\nfrom raykd.cli import main\nrc = main(sys.argv[1:])\n"
    code += "print('RAY_IMPORTED', 'ray' in sys.modules, 'RC', rc)\n"
    base = ["grid", "--preset", "paper", "--plan", "--gpus-per-worker", "0.25", "--root", str(root)]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    outs = {}
    for name, extra in (("gpu", ["--cluster", "1x16cpu1gpu"]), ("here", [])):
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", code, *base, *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        seconds = time.perf_counter() - t0
        assert done.returncode == 0, done.stderr[-2000:]
        assert seconds <= 30, f"{name}: {seconds:.1f} s"
        outs[name] = done.stdout
    gpu = outs["gpu"]
    assert "RAY_IMPORTED False RC 0" in gpu and "calibrated here" not in gpu
    assert "plan grid paper: 168 stages, 168 to train" in gpu
    assert "4 CPU(s) per worker" in gpu  # 16 CPUs over 4 stages on the GPU
    assert "GPUs per stage: every stage 1 worker(s) × 0.25 GPU (4 stages at once per GPU)" in gpu
    assert "concurrency per GPU: 4 stage(s) at once" in gpu
    hours = float(gpu.split(" GPU-hours")[0].rsplit(", ", 1)[1])
    cpu_hours = float(gpu.split(" CPU-hours")[0].rsplit(", ", 1)[1])
    assert hours > 0 and cpu_hours == pytest.approx(hours * 4 / 0.25, rel=1e-3)
    assert "|cuda: test cache, cached" in gpu  # GPU stages: shapes (and identities) of their own
    here = outs["here"]
    assert "0.25 GPU (4 stages at once per GPU) asked for, but this cluster has no GPU" in here
    assert "0.00 GPU-hours" in here
