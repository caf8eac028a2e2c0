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
