"""The compute-path policy (precision / memory format) for every capability class.

The hardware probes are faked (they answer what the CPU or GPU is); everything after them —
the class, the policy, the trainer's path, what is logged — is the real code, and the bf16
steps really run (bf16 autocast works, slowly, on any CPU).
"""

from __future__ import annotations

import pytest
import torch

from raykd.errors import ConfigError
from raykd.orchestration.identity import stage_identity
from raykd.train import precision as P
from raykd.train.loop import Trainer

# class: (ATen capability, AMX probe, AVX512-BF16 probe)
CLASSES = {
    "amx": ("AVX512", True, True),
    "avx512_bf16": ("AVX512", False, True),
    "avx512": ("AVX512", False, False),
    "avx2": ("AVX2", False, False),
}


@pytest.fixture
def fake_cpu(monkeypatch):
    def make(aten: str, amx: bool, bf16: bool, onednn_cap: str | None = None) -> None:
        monkeypatch.setattr(P, "aten_cpu_capability", lambda: aten)
        monkeypatch.setattr(P, "cpu_has_amx", lambda: amx)
        monkeypatch.setattr(P, "cpu_has_avx512_bf16", lambda: bf16)
        monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
        if onednn_cap is None:
            monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        else:
            monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn_cap)

    return make


@pytest.mark.parametrize(
    ("cls", "precision", "memory_format"),
    [
        ("amx", "bf16", "channels_last"),
        ("avx512_bf16", "bf16", "channels_last"),
        ("avx512", "fp32", "contiguous"),
        ("avx2", "fp32", "contiguous"),
    ],
)
def test_auto_picks_the_path_of_each_cpu_class(fake_cpu, cls, precision, memory_format):
    fake_cpu(*CLASSES[cls])
    assert P.cpu_capability() == cls
    path = P.resolve_path("auto", "auto", torch.device("cpu"))
    assert (path.cpu_capability, path.precision, path.memory_format) == (
        cls,
        precision,
        memory_format,
    )
    params = path.as_params()
    assert params["compute.precision"] == precision
    assert params["compute.cpu_capability"] == cls
    assert params["compute.device"] == "cpu"
    assert params["compute.memory_format"] == memory_format
    assert precision in path.describe() and cls in path.describe()


def test_isa_caps_are_honoured(fake_cpu):
    """ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA caps decide the class the kernels run at."""
    fake_cpu("AVX2", True, True)  # an AMX CPU told to run AVX2 kernels
    assert P.cpu_capability() == "avx2"
    assert P.resolve_precision("auto", torch.device("cpu")) == "fp32"
    fake_cpu("AVX512", True, True, onednn_cap="AVX512_CORE_BF16")  # oneDNN without AMX
    assert P.cpu_capability() == "avx512_bf16"
    fake_cpu("AVX512", True, True, onednn_cap="AVX2")
    assert P.cpu_capability() == "avx512"
    assert P.resolve_precision("auto", torch.device("cpu")) == "fp32"
    fake_cpu("DEFAULT", False, False)
    assert P.cpu_capability() == "other"


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16"), (False, "fp16")])
def test_auto_on_cuda(fake_cpu, monkeypatch, bf16, expected):
    fake_cpu(*CLASSES["avx2"])  # the host CPU does not matter on a GPU
    monkeypatch.setattr(P, "cuda_bf16", lambda: bf16)
    path = P.resolve_path("auto", "auto", torch.device("cuda"))
    assert path.precision == expected and path.memory_format == "channels_last"


def test_explicit_choices_win(fake_cpu):
    fake_cpu(*CLASSES["amx"])
    cpu = torch.device("cpu")
    assert P.resolve_path("fp32", "auto", cpu).memory_format == "contiguous"
    assert P.resolve_path("auto", False, cpu).memory_format == "contiguous"
    fake_cpu(*CLASSES["avx2"])
    assert P.resolve_path("bf16", "auto", cpu).precision == "bf16"
    assert P.resolve_path("fp32", True, cpu).memory_format == "channels_last"
    with pytest.raises(ConfigError, match="fp16"):
        P.resolve_precision("fp16", cpu)


def test_default_config_trains_on_the_chosen_path(fake_cpu, tiny_config, capfd):
    """No flags: bf16 + channels-last on an AMX/AVX512-BF16 class, fp32 NCHW on AVX2."""
    for cls, precision, channels_last in (("avx512_bf16", "bf16", True), ("avx2", "fp32", False)):
        fake_cpu(*CLASSES[cls])
        cfg = tiny_config("teacher", name=cls, precision="auto", channels_last="auto")
        trainer = Trainer(cfg)
        assert (trainer.precision, trainer.channels_last) == (precision, channels_last)
        conv = trainer.stage.saved_model.cascades[0].conv[1][0].weight
        assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last
        result = trainer.fit()
        assert all(h["train/loss"] == h["train/loss"] for h in result.history)  # finite
        err = capfd.readouterr().err
        # Printed once per stage.
        assert err.count("compute path:") == 1 and f"precision {precision}" in err


def test_defaults_are_auto():
    from raykd.plan import GridSpec, load_preset
    from raykd.train.config import load_config

    cfg = load_config(None, ["kind=teacher"])
    assert (cfg.precision, cfg.channels_last) == ("auto", "auto")
    assert GridSpec().precision == "auto"
    for name in ("smoke", "cpu", "paper", "extended", "sr_smoke", "sr", "dcunet_smoke", "dcunet"):
        assert load_preset(name).precision == "auto"


def test_identity_holds_the_request_not_the_machine(fake_cpu, tiny_config):
    """Identities do not depend on where they are computed (the trial driver need not run on
    the machine that trains), nor on the memory format; fp32 is a stage of its own."""
    auto = tiny_config("teacher", precision="auto", channels_last="auto")
    ids = set()
    for cls in CLASSES:
        fake_cpu(*CLASSES[cls])
        ids.add(stage_identity(auto))
    assert len(ids) == 1
    for cl in (True, False):
        assert stage_identity(auto.model_copy(update={"channels_last": cl})) in ids
    assert stage_identity(auto.model_copy(update={"precision": "fp32"})) not in ids


def test_inference_benchmark_follows_the_policy(fake_cpu):
    from raykd.deploy.latency import benchmark_inference, speedup

    fake_cpu(*CLASSES["amx"])
    fast = benchmark_inference(depths=(3, 5), cascades=2, size=32, repeats=2, warmup=1)
    assert {(r["precision"], r["memory_format"], r["cpu_capability"]) for r in fast} == {
        ("bf16", "channels_last", "amx")
    }
    fake_cpu(*CLASSES["avx2"])
    plain = benchmark_inference(depths=(3,), cascades=2, size=32, repeats=2, warmup=1)
    assert (plain[0]["precision"], plain[0]["memory_format"]) == ("fp32", "contiguous")
    assert speedup(fast) == pytest.approx(fast[1]["median_ms"] / fast[0]["median_ms"])
    assert speedup(plain) is None  # D5 was not measured


def test_stage_run_logs_its_compute_path(fake_cpu, tiny_data, tmp_path):
    """A grid stage with the default precision logs what it resolved to on the worker."""
    from raykd.orchestration.cluster import TrialResources
    from raykd.orchestration.grid import run_row
    from raykd.orchestration.identity import StageStore
    from raykd.orchestration.runner import StageContext
    from raykd.plan.rows import Row
    from raykd.tracking import Tracking
    from tests.conftest import tiny_grid

    fake_cpu(*CLASSES["avx512_bf16"])
    tracking = Tracking(f"sqlite:///{tmp_path / 'mlflow.db'}", "p", tmp_path / "artifacts")
    ctx = StageContext(
        StageStore(tmp_path / "s"), tracking, TrialResources(1, False, 1, 1, 1), local=True
    )
    spec = tiny_grid(tiny_data, precision="auto")
    row = Row(dataset=str(tiny_data), acceleration=3.0, seed=42, kind="teacher", student_depth=2)
    record = run_row(spec, row, ctx)
    params = tracking.client.get_run(record.mlflow_run_id).data.params
    assert params["precision"] == "auto"  # the request, as configured
    assert params["compute.precision"] == "bf16"
    assert params["compute.cpu_capability"] == "avx512_bf16"
    assert params["compute.memory_format"] == "channels_last"
    assert params["compute.device"] == "cpu"
    assert record.compute == {k: v for k, v in params.items() if k.startswith("compute.")}
