"""raykd uses Ray through its public interfaces only: no underscore-prefixed Ray module
(``ray._private``, ``ray.train._internal`` …), imported or reached as an attribute, anywhere in
the package or its job scripts, and none of the private hooks it once relied on."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The hooks issue 35 replaced, by name: private Ray hooks and undocumented switches.
PRIVATE_HOOKS = (
    "_node_ip_address",
    "find_bootstrap_address",
    "ray_constants",
    "RAY_JOB_CONFIG_JSON_ENV_VAR",
    "RAY_AIR_NEW_OUTPUT",
    "global_worker_stdstream_dispatcher",
)
DOTTED = re.compile(r"\bray(?:\.\w+)*\.(_\w+)")


def _where(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name


def _private_ray(path: Path) -> list[str]:
    """Every private Ray module an import names, and every ``ray.…._x`` dotted reference."""
    text = path.read_text()
    found = []
    for node in ast.walk(ast.parse(text)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
            names = [a.value for a in node.args if isinstance(a, ast.Constant)]
        for name in names:
            parts = str(name).split(".")
            if parts[0] == "ray" and any(p.startswith("_") for p in parts[1:]):
                found.append(f"{_where(path)}:{node.lineno}: {name}")
    for i, source_line in enumerate(text.splitlines(), 1):
        if DOTTED.search(source_line):
            found.append(f"{_where(path)}:{i}: {source_line.strip()}")
        found += [f"{_where(path)}:{i}: {h}" for h in PRIVATE_HOOKS if h in source_line]
    return found


def _sources() -> list[Path]:
    return sorted([*(REPO / "raykd").rglob("*.py"), *(REPO / "jobs").glob("*.py")])


def test_no_private_ray_module_in_raykd():
    found = [hit for path in _sources() for hit in _private_ray(path)]
    assert found == [], "\n".join(found)


def test_the_finder_sees_private_imports(tmp_path):
    samples = {
        "from ray._private import services": "ray._private",
        "import ray.train._internal.session as s": "ray.train._internal",
        "from ray.util import _private_thing": "ray.util._private_thing",
        "x = ray._private.worker.global_worker": "ray._private",
        "ray.init(_node_ip_address='127.0.0.1')": "_node_ip_address",
        "import importlib\nimportlib.import_module('ray._raylet')": "ray._raylet",
    }
    probe = tmp_path / "probe.py"
    for code, what in samples.items():
        probe.write_text(code + "\n")
        assert any(what in hit for hit in _private_ray(probe)), code
    probe.write_text("import ray\nfrom ray import tune\nray.init(log_to_driver=False)\n")
    assert _private_ray(probe) == []


def test_jobs_do_not_edit_sys_path():
    edits = [
        f"{path.name}:{i}"
        for path in (REPO / "jobs").glob("*.py")
        for i, text in enumerate(path.read_text().splitlines(), 1)
        if "sys.path" in text
    ]
    assert edits == []


def test_worker_env_ships_raykd_once(monkeypatch, tmp_path):
    """Joining a cluster: raykd goes to workers as ``py_modules`` unless the job already ships
    it (its own ``py_modules``, or the ``working_dir`` this raykd was imported from); the
    job's own env vars are left to it; the console relay's hook and name are added."""
    from raykd.orchestration.cluster import _worker_env

    monkeypatch.setenv("RAYKD_SHARED_DATA", "/data")
    relay = {"worker_process_setup_hook": "m.hook", "env_vars": {"RAYKD_CONSOLE_RELAY": "r1"}}
    plain = _worker_env("10.0.0.1:6379", {}, relay)
    assert plain["py_modules"] == [str(REPO / "raykd")]
    assert plain["worker_process_setup_hook"] == "m.hook"
    assert plain["env_vars"]["RAYKD_CONSOLE_RELAY"] == "r1"
    assert plain["env_vars"]["RAY_ADDRESS"] == "10.0.0.1:6379"
    # `ray job submit --working-dir .` from the checkout: the driver runs in the unpacked copy
    monkeypatch.chdir(REPO)
    job = {"working_dir": "gcs://_ray_pkg_abc.zip", "env_vars": {"RAYKD_SHARED_DATA": "/other"}}
    submitted = _worker_env("10.0.0.1:6379", job, relay)
    assert "py_modules" not in submitted
    assert "RAYKD_SHARED_DATA" not in submitted["env_vars"]  # the job's value stands
    # a working_dir that is not where this raykd comes from still needs raykd shipped
    monkeypatch.chdir(tmp_path)
    assert "py_modules" in _worker_env("10.0.0.1:6379", {"working_dir": "gcs://x.zip"})
    assert "py_modules" not in _worker_env("10.0.0.1:6379", {"py_modules": ["gcs://m.zip"]})
