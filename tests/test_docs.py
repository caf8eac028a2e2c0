"""The documentation holds together: the MkDocs site builds in strict mode (broken links and
anchors, pages missing from the nav fail), the README stays a short entry point whose links
resolve, and its test command is the one CI runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MAX_README_LINES = 200
FAST_TIER = 'python -m pytest -q -m "not slow"'

# [text](target) outside code spans; images and reference-style links do not occur in README.
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _readme_lines() -> list[str]:
    return README.read_text(encoding="utf-8").splitlines()


def _section_code_lines(lines: list[str], heading: str) -> list[str]:
    """Lines inside fenced code blocks of the ``## <heading>`` section."""
    out: list[str] = []
    in_section = in_code = False
    for line in lines:
        if line.startswith("## "):
            in_section = line[3:].strip() == heading
            continue
        if not in_section:
            continue
        if line.startswith("```"):
            in_code = not in_code
            continue
        if in_code:
            out.append(line.strip())
    return out


def _ci_last_command() -> str:
    lines = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    commands = [x.strip() for x in lines if x.strip() and not x.strip().startswith("#")]
    return commands[-1]


def test_mkdocs_build_strict(tmp_path):
    """The site builds with --strict from the repo root: a warning (broken link or anchor, a
    page not in the nav) fails the build."""
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (site / "index.html").is_file()
    assert (site / "reference" / "mlflow" / "index.html").is_file()
    assert (site / "reference" / "console" / "index.html").is_file()


def test_readme_is_short():
    n = len(_readme_lines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; move detail into docs/"


def test_readme_relative_links_exist():
    links = [m.group(1) for line in _readme_lines() for m in _LINK.finditer(line)]
    relative = [t for t in links if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and t[0] != "#"]
    assert relative, "README.md links no docs"
    missing = [t for t in relative if not (REPO / t.split("#", 1)[0]).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_readme_test_command_is_what_ci_runs():
    """The whole-suite command in the README's test section is .ci/run's last command, and the
    fast tier is documented next to it."""
    code = _section_code_lines(_readme_lines(), "Run the tests")
    pytest_lines = [x for x in code if x.startswith("python -m pytest")]
    assert pytest_lines, "README's 'Run the tests' section shows no pytest command"
    assert pytest_lines[0] == _ci_last_command() == "python -m pytest -q"
    assert FAST_TIER in pytest_lines


def test_slow_marker_is_registered():
    """The fast tier deselects ``slow``: the marker must be registered (no unknown-mark warning)."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^\s*"slow:', text, re.MULTILINE)
