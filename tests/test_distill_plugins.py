"""A KD method added as one file outside the package: discovered, validated, trained.

The toy method lives in a temporary module loaded by path (``RAYKD_KD_PLUGINS`` or
:func:`load_kd_plugins`); no file of raykd or of the other tests is edited for it, yet the KD
contract tests (``tests/test_distill.py``) and the training test (``tests/test_train.py``)
run on it and its canonical weight is the default ``kd.weight``.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from raykd.distill import available_kd_methods, get_kd_method, load_kd_plugins
from raykd.distill.registry import unregister_kd_method
from raykd.errors import ConfigError
from raykd.train.config import CANONICAL_KD_WEIGHTS, load_config
from tests import test_distill, test_train

TOY = '''
"""Toy KD method: squared difference of the channel-mean maps (a test plugin)."""

import torch

from raykd.distill import KDMethod, register_kd_method


@register_kd_method("toy_mean")
class ToyMean(KDMethod):
    """``L = Σ_pairs mean_{b, hw} (mean_c f_T − mean_c f_S)²``; canonical weight 7."""

    canonical_weight = 7.0
    per_sample_mean = True
    citation = "Nobody, A. A toy method for tests. 2019."

    def loss(self, pairs):
        return torch.stack([(t.mean(1) - s.mean(1)).pow(2).mean() for t, s in pairs]).sum()
'''


@pytest.fixture
def toy(tmp_path: Path):
    path = tmp_path / "toy_kd.py"
    path.write_text(TOY)
    assert "toy_mean" not in available_kd_methods()
    assert load_kd_plugins(str(path)) == ["toy_mean"]
    yield path
    unregister_kd_method("toy_mean")
    sys.modules.pop("raykd_kd_plugin_toy_kd", None)


def test_toy_method_passes_the_kd_contract(toy) -> None:
    models, batch = test_distill.make_models(), test_distill.make_batch()
    args = {"name": "toy_mean", "models": models, "batch": batch}
    for check in test_distill.CONTRACT:
        check(**{k: args[k] for k in inspect.signature(check).parameters})
    assert get_kd_method("toy_mean").canonical_weight == CANONICAL_KD_WEIGHTS["toy_mean"] == 7.0


def test_toy_method_is_configured_and_trained(toy, tiny_config, tmp_path) -> None:
    cfg = load_config(None, ["kind=kd", "kd.method=toy_mean", "teacher_checkpoint=x.pt"])
    assert cfg.kd.resolved_weight == 7.0
    test_train.test_kd_methods_train(tiny_config, tmp_path, "toy_mean")


@pytest.mark.slow
def test_plugins_from_the_environment_reach_a_fresh_process(toy) -> None:
    """How Ray workers see it: the variable travels with the other RAYKD_* ones."""
    code = "from raykd.distill import available_kd_methods as a; print(a())"
    env = os.environ | {"RAYKD_KD_PLUGINS": str(toy), "PYTHONPATH": os.getcwd()}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "'toy_mean'" in out.stdout and "'at'" in out.stdout


def test_bad_plugin_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no file"):
        load_kd_plugins(str(tmp_path / "missing.py"))
    broken = tmp_path / "broken_kd.py"
    broken.write_text("import no_such_module_anywhere\n")
    with pytest.raises(ConfigError, match="KD plugin .*broken_kd.py.* failed to import"):
        load_kd_plugins(str(broken))
    with pytest.raises(ConfigError, match="failed to import"):
        load_kd_plugins("no_such_package.kd")
