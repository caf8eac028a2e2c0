"""Shared fixtures: tiny h5 volumes written per test session, small configs.

Real h5 files, real torch; shapes are tiny so the whole suite stays fast on 2 CPU cores.
"""

from __future__ import annotations

import os

# The suite runs on CPU, also on a machine with GPUs: hide them before torch (or a Ray worker
# this process starts, which inherits the environment) initialises CUDA. Tests that need a GPU
# are marked ``gpu`` and run only with RAYKD_TEST_GPU=1 (which keeps the GPUs visible).
if os.environ.get("RAYKD_TEST_GPU") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from raykd.data.volumes import write_volume
from raykd.orchestration.cluster import SINGLE_NODE_ENV, loopback_only
from raykd.train.config import load_config

# Before any test module imports Ray: this process's Rays stay on loopback (Ray reads the
# switch once, on import); the variable itself is not left to the processes tests start.
_had_switch = SINGLE_NODE_ENV in os.environ
loopback_only()
if not _had_switch:
    os.environ.pop(SINGLE_NODE_ENV, None)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def phantom_volume(n: int, size: int, seed: int) -> np.ndarray:
    """Smooth random blobs with edges: structured enough for reconstruction to be learnable."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    vol = np.zeros((n, size, size), dtype=np.float32)
    for i in range(n):
        img = np.zeros((size, size))
        for _ in range(4):
            cy, cx, r = rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75), rng.uniform(0.08, 0.25)
            img += rng.uniform(0.3, 1.0) * (((yy - cy) ** 2 + (xx - cx) ** 2) < r**2)
        vol[i] = img * rng.uniform(50, 500)  # raw scale: normalisation is the dataset's job
    return vol


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "gpu: needs a CUDA GPU (run with RAYKD_TEST_GPU=1); skipped without one"
    )


def gpu_skip_reason() -> str | None:
    """Why a ``gpu`` test cannot run here (None: it can)."""
    if os.environ.get("RAYKD_TEST_GPU") != "1":
        return "GPU tests run with RAYKD_TEST_GPU=1 (the CPU suite hides GPUs)"
    if not torch.cuda.is_available():
        return "no CUDA device on this machine"
    return None


def pytest_collection_modifyitems(config, items):
    """Tests that start Ray (marked ``ray`` or using ``ray_session``) are slow too: the fast
    tier (``-m "not slow"``) leaves them out. ``gpu`` tests skip, with the reason, where no
    GPU can be used."""
    reason = gpu_skip_reason()
    for item in items:
        if item.get_closest_marker("ray") or "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("gpu") and reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Four 6-slice 32x32 volumes in raykd's layout."""
    root = tmp_path_factory.mktemp("tiny_data")
    for v in range(4):
        write_volume(root / f"vol{v}.h5", phantom_volume(6, 32, seed=v), attrs={"patient_id": v})
    return root


def tiny_overrides(root: Path, out: Path, kind: str, **extra: str) -> list[str]:
    base = {
        "kind": kind,
        "data.source": str(root),
        "data.train": "[vol0, vol1, vol2]",
        "data.val": "[vol3]",
        "data.size": "[32, 32]",
        "data.batch_size": "2",
        "data.mask.acceleration": "3",
        "data.mask.num_low": "4",
        "teacher.depth": "3",
        "teacher.cascades": "2",
        "teacher.channels": "4",
        "student.depth": "2",
        "student.cascades": "2",
        "student.channels": "4",
        "optim.epochs": "2",
        # Pinned: tests compare numbers that must agree on every CPU class, and the default
        # (precision/channels_last auto) is bf16 on AMX/AVX512-BF16 but fp32 on AVX2.
        "precision": "fp32",
        "channels_last": "false",
        "output_dir": str(out),
        "progress": "false",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture
def tiny_config(tiny_data, tmp_path):
    def make(kind: str, name: str | None = None, **extra: str):
        out = tmp_path / (name or kind)
        return load_config(None, tiny_overrides(tiny_data, out, kind, **extra))

    return make


@pytest.fixture(scope="session")
def shared_data() -> Path:
    from raykd.paths import shared_data_dir

    root = shared_data_dir()
    if not (root / "sunnybrook").is_dir():
        pytest.skip(f"shared data not found at {root} (set RAYKD_SHARED_DATA)")
    return root


@pytest.fixture(scope="session")
def ray_session():
    """One real local Ray instance for the whole test session (started on first use)."""
    import ray

    repo = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [repo, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    )
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    os.environ.pop("RAY_ADDRESS", None)
    from raykd.orchestration.cluster import start_local_ray
    from tests.servers import RAY_S3, s3_env

    # Ray's processes (not this one) get the endpoint and test keys of the S3 server that
    # object-storage tests using this Ray start on that port (tests.servers.RAY_S3): its
    # workers inherit them, as a cluster's nodes have them in their environment.
    # Only those keys are put back afterwards: what Ray itself sets while starting (e.g.
    # RAY_AUTH_MODE=token) must stay, or the processes tests start could not join this Ray.
    s3 = s3_env(RAY_S3) | {"RAYKD_S3_ENDPOINT": RAY_S3}
    saved = {k: os.environ.get(k) for k in s3}
    os.environ.update(s3)
    try:
        start_local_ray(2, log_to_driver=False)  # loopback only, like a job's local Ray
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield ray
    ray.shutdown()


def tiny_grid(root: Path, **over):
    """A grid spec over the tiny fixture volumes (32x32, 2 cascades, 4 channels)."""
    from raykd.plan.presets import GridSpec

    base = {
        "datasets": [str(root)],
        "accelerations": [3],
        "methods": ["at"],
        "student_depths": [2],
        "teacher_depth": 3,
        "cascades": 2,
        "seeds": 1,
        "size": [32, 32],
        "channels": 4,
        "epochs": {"teacher": 1, "sft": 1, "student": 1, "kd": 1},
        "batch_size": 2,
        "precision": "fp32",
    }
    base.update(over)
    return GridSpec.model_validate(base)
