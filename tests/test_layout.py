"""The house's shape: no import circle, no oversized module, arrows from the core never point up.

Import edges are read from the source: every ``import``/``from`` naming a raykd module, at any
depth -- lazy imports in functions and ``if TYPE_CHECKING:`` imports included, and an import of a
module's own package (``import raykd.distill`` inside raykd/distill) is an edge to its
``__init__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "raykd"
# Every module of the package must be acyclic and small (issue 13's done-when).
CHECKED = ("raykd",)
# Arrows point down: the core (data, models, KD methods, training, metrics) never imports the
# layers above it, nor Ray/MLflow/Optuna, so it runs and is tested without them.
CORE = (
    "data",
    "models",
    "distill",
    "train",
    "metrics",
    "errors",
    "paths",
    "outputs",
    "strict_json",
    "lines",
)
UPPER = ("plan", "orchestration", "tracking", "report", "deploy", "cli")
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ("raykd", *path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1]
                    + ([base] if base else [])
                )
            # `from pkg import sub` depends on the submodule when it is one, else on pkg.
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _checked(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in CHECKED)


def test_cycle_finder_sees_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert graph["raykd.distill.registry"] >= {"raykd.distill.base"}  # the reader works
    bad = [c for c in _cycles(graph) if any(_checked(m) for m in c)]
    assert bad == [], bad


@pytest.mark.parametrize("prefix", CHECKED)
def test_modules_stay_small(prefix):
    modules = _modules()
    long = {
        str(path.relative_to(ROOT.parent)): n
        for name, path in modules.items()
        if (name == prefix or name.startswith(prefix + "."))
        and (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, long


def _external_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def test_core_imports_no_upper_layer_nor_ray():
    modules = _modules()
    bad = {}
    for name, path in modules.items():
        if name.split(".")[1:2] and name.split(".")[1] in CORE:
            wrong = sorted(
                m
                for m in _imports(name, path, modules) | _external_imports(path)
                if m.split(".")[0] in ("ray", "mlflow", "optuna")
                or (m.startswith("raykd.") and m.split(".")[1] in UPPER)
            )
            if wrong:
                bad[name] = wrong
    assert bad == {}, bad


# tracking (MLflow runs, the model registry) serves the layers that deploy, report and
# orchestrate: it never imports them (deploy/registry.py builds what tracking/registry.py
# registers).
ABOVE_TRACKING = ("deploy", "report", "orchestration", "cli")


def test_tracking_imports_no_layer_above_it():
    modules = _modules()
    bad = {}
    for name, path in modules.items():
        if name == "raykd.tracking" or name.startswith("raykd.tracking."):
            up = sorted(
                m
                for m in _imports(name, path, modules)
                if (m + ".").split(".")[1] in ABOVE_TRACKING
            )
            if up:
                bad[name] = up
    assert bad == {}, bad
