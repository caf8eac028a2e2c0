"""House rules of the report and deploy packages, checked on their source with ``ast``.

The report reads finished runs: it must not import the packages that build, train or evaluate
models (train, models, data) nor deploy, which does; its modules import each other without a
circle; no module of report/ or deploy/ grows past ~400 lines; each says what it owns.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "raykd"
FORBIDDEN = ("raykd.train", "raykd.models", "raykd.data", "raykd.deploy")
MAX_LINES = 400


def _modules(package: str) -> dict[str, Path]:
    return {
        f"raykd.{package}.{p.stem}" if p.stem != "__init__" else f"raykd.{package}": p
        for p in sorted((ROOT / package).glob("*.py"))
    }


def imports_of(path: Path, module: str) -> set[str]:
    """Every module ``path`` imports, anywhere in the file (lazy imports inside functions and
    ``TYPE_CHECKING`` blocks included), as absolute dotted names."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: resolve against the package
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            # ``from raykd.report import stats`` imports the submodule raykd.report.stats.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_imports_of_sees_lazy_and_from_imports(tmp_path):
    """The checker itself: a lazy ``from raykd.train.config import x`` inside a function and a
    ``from raykd import models`` are both seen (so re-adding one would fail the test below)."""
    src = tmp_path / "mod.py"
    src.write_text(
        "def f():\n    from raykd.train.config import yaml_load\n"
        "from raykd import models\nimport raykd.data.dataset as d\n"
    )
    found = imports_of(src, "raykd.report.mod")
    assert any(_within(n, "raykd.train") for n in found)
    assert "raykd.models" in found and "raykd.data.dataset" in found


@pytest.mark.parametrize("module,path", sorted(_modules("report").items()))
def test_report_imports_no_model_code(module, path):
    forbidden = FORBIDDEN
    if module == "raykd.report.cli":  # the command line (moving to raykd/cli/, issue 13)
        forbidden = tuple(f for f in FORBIDDEN if f != "raykd.deploy")  # runs deploy commands
    bad = sorted(n for n in imports_of(path, module) for f in forbidden if _within(n, f))
    assert not bad, f"{path}: the report only reads runs, but imports {bad}"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (module → modules it imports), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep, [*path, dep])):
                return cycle
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module, [module])):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_report_has_no_import_circle():
    modules = _modules("report")
    graph = {
        m: {n for n in imports_of(p, m) if n in modules and n != m} for m, p in modules.items()
    }
    # The package's __init__ only defines warnings; submodules importing it is not a circle.
    for deps in graph.values():
        deps.discard("raykd.report")
    cycle = find_cycle(graph)
    assert cycle is None, f"import circle in raykd/report: {' -> '.join(cycle or [])}"


@pytest.mark.parametrize("package", ["report", "deploy"])
def test_modules_are_small_and_say_what_they_own(package):
    for path in _modules(package).values():
        lines = len(path.read_text().splitlines())
        assert lines <= MAX_LINES, f"{path}: {lines} lines (house limit ~{MAX_LINES})"
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and len(doc.splitlines()[0]) > 20, f"{path}: no opening line saying what it owns"


def test_deploy_does_not_import_report():
    """deploy writes benchmark runs; the report reads them via the tracking schema: no arrow
    runs back up from deploy to report."""
    deploy_imports = set().union(*(imports_of(p, m) for m, p in _modules("deploy").items()))
    assert not any(_within(n, "raykd.report") for n in deploy_imports)
