"""The planning layer (raykd.plan): Ray-free, typed from preset to stage config, identities as
before the move, and presets/search spaces found as package data."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from pydantic import ValidationError

from raykd.errors import ConfigError
from raykd.paths import shared_data_dir
from raykd.plan import (
    Row,
    StageOverrides,
    grid_rows,
    load_preset,
    load_search,
    preset_names,
    row_requests,
    stage_config,
    trial_row_and_spec,
)
from raykd.plan.identity import stage_identity
from raykd.plan.package_data import checkout_dir, search_spaces_dir
from raykd.plan.search_space import sampled_rows, search_space_names
from raykd.train.config import StageConfig

REPO = Path(__file__).resolve().parents[1]
SEARCHES = ["depth_acceleration", "kd_weights", "kd_weights_extended", "pareto"]
# Points sampled per search row in the digests below (every parameter kind a trial sets).
TRIAL_POINTS = (
    {},
    {"kd_balance": 0.3},
    {"kd_weight_scale": 2.0},
    {"output_weight": 0.5, "w_imit": 0.7, "w_s": 0.8, "imit_balance": 0.2},
)
# sha256 over "label stage-id" of every request of every row, computed with the code before
# the planning layer existed (dict rows, dotted overrides). Presets at a native size use the
# paper's fixed masks (the catalogue declares them; fixed_masks: false plans Cartesian masks,
# the identities these presets had where the shared data lacked the masks).
DIGESTS = {
    "smoke": "a7deccc65c6238f8",
    "sr_smoke": "06ba181f1699e7ba",
    "sr": "6fefc363dac80aa1",
    "dcunet_smoke": "9687ef116a4fd19b",
    # Added with the complex data path (pinned when added, not computed by the old code).
    "complex_smoke": "38f01f7eff307459",
    "calgary_sr": "4854db9f5440cfaa",
    "calgary_sr_cpu": "fc136574c47af00d",
    "fastmri_knee": "3e49b5045d1a32c0",
    # Added with measured-k-space mode (data.kspace: measured; pinned when added).
    "fastmri_knee_measured": "fe874be3183a9a0a",
    "search:depth_acceleration": "22076d3cdd070a02",
    "search:kd_weights": "be8b26e1232d547f",
    "search:kd_weights_extended": "1adfd9bf773b1777",
    "search:pareto": "397b5db2943db7e9",
}
MASKED = {  # preset: (mask folder, digest with the masks, digest with fixed_masks: false)
    "cpu": ("cardiac_150", "ecc7e3ff83b9a39b", "424c791dee7621dd"),
    "paper": ("brain_240", "6657557de78090d4", "9543846d549f2d0d"),
    "extended": ("brain_240", "439ca0d9659f38fa", "bb4d31e4ce8fbccc"),
    "dcunet": ("brain_240", "f4458f6fab838c0a", "da3f97ad2ebd7b8b"),
}


def _digest(entries: list[tuple[str, str]]) -> str:
    text = "\n".join(f"{label} {sid}" for label, sid in entries)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _preset_entries(name: str, **overrides) -> list[tuple[str, str]]:
    spec = load_preset(name, overrides)
    return [(r.label, q.stage_id) for r in grid_rows(spec) for q in row_requests(spec, r)]


def _search_entries(name: str) -> list[tuple[str, str]]:
    search = load_search(name)
    base = load_preset(search.base_preset)
    out = []
    for r in sampled_rows(search, base):
        sampled = {"method": r.method, "student_depth": r.student_depth}
        sampled["acceleration"] = r.acceleration
        point = {k: v for k, v in sampled.items() if k in search.params}
        for extra in TRIAL_POINTS:
            spec, row, overrides = trial_row_and_spec(search, base, {**point, **extra})
            out += [(row.label, q.stage_id) for q in row_requests(spec, row, overrides)]
    return out


def test_plan_imports_no_ray_or_mlflow():
    """Every shipped preset's rows, stage configs and requests, and every search space's trial
    configs, are built without importing Ray (or Tune/Train) or MLflow."""
    code = """
import sys
import raykd.plan
from raykd.plan import grid_rows, load_preset, load_search, preset_names, row_requests
from raykd.plan import trial_row_and_spec
from raykd.plan.search_space import sampled_rows, search_space_names
from raykd.plan.stages import row_stages, stage_config
n = 0
for name in preset_names():
    spec = load_preset(name)
    for row in grid_rows(spec):
        for kind, over in row_stages(spec, row):
            stage_config(spec, row, kind, over)
        n += len(row_requests(spec, row))
for name in search_space_names():
    search = load_search(name)
    base = load_preset(search.base_preset)
    for row in sampled_rows(search, base):
        spec, r, over = trial_row_and_spec(search, base, {"method": row.method})
        n += len(row_requests(spec, r, over))
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "mlflow"))
assert not bad, bad
print(n)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip()) > 1000  # every preset was really built


def test_row_is_typed_and_round_trips():
    row = Row(
        dataset="mni152", acceleration=4, seed=42, kind="sft_kd", student_depth=3, method="at"
    )
    data = row.to_dict()
    # Serialised as the job tables and the report read rows: the kind under "row".
    assert data == {
        "dataset": "mni152",
        "acceleration": 4.0,
        "seed": 42,
        "row": "sft_kd",
        "student_depth": 3,
        "method": "at",
        "fold": None,
        "budget": 1.0,
    }
    assert Row.model_validate(data) == row
    assert Row.model_validate_json(json.dumps(data)) == row
    assert hash(Row.model_validate(data)) == hash(row)  # frozen: usable as a key
    assert row.label == "mni152/4x/s42/sft_kd/D3/at"
    teacher = Row(dataset="d", acceleration=3.5, seed=1, kind="teacher", student_depth=2)
    assert teacher.label == "d/3.5x/s1/teacher"
    with pytest.raises(ValidationError):
        row.seed = 43  # type: ignore[misc]  # on purpose: a frozen row refuses assignment
    with pytest.raises(ValidationError, match="row"):
        Row.model_validate({**data, "row": "sft_kd_typo"})
    with pytest.raises(ValidationError, match="extra"):
        Row.model_validate({**data, "depth": 3})


@pytest.mark.parametrize("name", sorted(set(DIGESTS) | set(MASKED)))
def test_stage_identities_as_before_the_plan_layer(name):
    """Every preset and search space plans exactly the stages (identities, labels, order) the
    code before the planning layer planned, so every stored stage is still reused."""
    if name.startswith("search:"):
        entries = _search_entries(name.removeprefix("search:"))
        expected = DIGESTS[name]
    elif name in MASKED:
        _, expected, without = MASKED[name]
        entries = _preset_entries(name)
        assert _digest(_preset_entries(name, fixed_masks=False)) == without
    else:
        entries, expected = _preset_entries(name), DIGESTS[name]
    assert entries and _digest(entries) == expected
    assert set(preset_names()) == {n for n in set(DIGESTS) | set(MASKED) if ":" not in n}
    assert search_space_names() == SEARCHES


def test_identities_do_not_depend_on_the_shared_masks_being_here(tmp_path, monkeypatch):
    """Planning reads configuration only: every preset plans the same stage identities with the
    shared data empty, holding the paper's masks, and (where this machine has it) the real one."""
    real = shared_data_dir()
    masks = tmp_path / "with" / "masks"
    for folder in {folder for folder, _, _ in MASKED.values()}:
        (masks / folder).mkdir(parents=True)
        for a in (4, 5):
            (masks / folder / f"mask_{a}x.npy").write_bytes(b"not read by planning")
    (tmp_path / "empty").mkdir()
    roots = [tmp_path / "empty", tmp_path / "with"] + ([real] if (real / "masks").is_dir() else [])
    seen = []
    for root in roots:
        monkeypatch.setenv("RAYKD_SHARED_DATA", str(root))
        seen.append({name: _digest(_preset_entries(name)) for name in sorted(preset_names())})
    assert all(d == seen[0] for d in seen)
    assert {n: seen[0][n] for n in MASKED} == {n: v[1] for n, v in MASKED.items()}


def test_one_typed_form_from_plan_to_trainer():
    """Overrides are typed; the config a trainer receives is the model's own dump, validated
    once on arrival into an equal config with the same identity."""
    spec = load_preset("smoke")
    rows = {r.kind: r for r in grid_rows(spec)}
    control = row_requests(spec, rows["equal_compute"])
    assert [q.cfg.optim.epochs for q in control] == [spec.epochs.sft + spec.epochs.kd]
    assert control[0].tags["raykd.row"] == "equal_compute"
    # An explicit override wins over the control's rule, and reaches only the row's own stage.
    kd_row = rows["std_kd"]
    over = StageOverrides(epochs=7, batch_size=2, kd_output_weight=0.25)
    teacher, kd = row_requests(spec, kd_row, over)
    assert (kd.cfg.optim.epochs, kd.cfg.data.batch_size, kd.cfg.kd.output_weight) == (7, 2, 0.25)
    assert teacher.cfg.optim.epochs == spec.epochs.teacher and kd.teacher_id == teacher.stage_id
    assert row_requests(spec, rows["equal_compute"], over)[0].cfg.optim.epochs == 7
    with pytest.raises(ValidationError):
        StageOverrides(epochs=0)
    with pytest.raises(ValidationError):
        StageOverrides(**{"optim.epochs": 3})  # no dotted keys
    arrived = StageConfig.model_validate(json.loads(json.dumps(kd.cfg.to_dict())))
    assert arrived == kd.cfg
    assert stage_identity(arrived, teacher.stage_id) == kd.stage_id
    # A search point: its output weight is a typed override, its weights a validated spec.
    search = load_search("kd_weights")
    point = {"method": "sp", "kd_balance": 0.05, "output_weight": 0.5}
    spec2, row2, over2 = trial_row_and_spec(search, load_preset("smoke"), point)
    cfg = stage_config(spec2, row2, "kd", over2)
    assert (cfg.kd.method, cfg.kd.balance.ratio, cfg.kd.output_weight) == ("sp", 0.05, 0.5)
    # A value the grid refuses fails by its key, as a one-line-per-key ConfigError.
    with pytest.raises(ConfigError, match=r"grid row .*\n  - student.depth"):
        stage_config(spec, kd_row.model_copy(update={"student_depth": 99}), "kd")


def test_search_spaces_found_in_the_checkout():
    assert checkout_dir() == REPO / "search_spaces"
    assert Path(str(search_spaces_dir())) == REPO / "search_spaces"
    shipped = sorted(p.stem for p in (REPO / "search_spaces").glob("*.yaml"))
    assert sorted([*search_space_names(), "paper_grid"]) == shipped
    with pytest.raises(ConfigError, match="no such file; built in"):
        load_search("no_such_space")


def test_installed_layout_reads_package_data(tmp_path):
    """Outside a checkout (the wheel's layout: raykd/search_spaces/*.yaml beside the code),
    presets and search spaces are read through importlib.resources, and the shared data
    defaults to ../shared/data from the current directory."""
    site = tmp_path / "site"
    shutil.copytree(REPO / "raykd", site / "raykd", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "search_spaces", site / "raykd" / "search_spaces")
    cwd = tmp_path / "elsewhere" / "work"
    cwd.mkdir(parents=True)
    code = """
import importlib.resources, json, sys
import raykd
from raykd.paths import shared_data_dir
from raykd.plan import load_preset, load_search, preset_names
from raykd.plan.package_data import checkout_dir, search_spaces_dir
from raykd.plan.search_space import search_space_names
print(json.dumps({
    "raykd": raykd.__file__,
    "checkout": str(checkout_dir()),
    "dir": str(importlib.resources.files("raykd.search_spaces")),
    "used": str(search_spaces_dir()),
    "presets": preset_names(),
    "searches": search_space_names(),
    "smoke_rows": load_preset("smoke").rows,
    "space": load_search("pareto").name,
    "shared": str(shared_data_dir()),
}))
"""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(site)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["raykd"].startswith(str(site)) and got["checkout"] == "None"
    assert str(site / "raykd" / "search_spaces") in got["dir"]
    assert str(site / "raykd" / "search_spaces") in got["used"]
    assert got["presets"] == preset_names() and got["searches"] == SEARCHES
    assert got["smoke_rows"] == load_preset("smoke").rows and got["space"] == "pareto"
    assert got["shared"] == str(tmp_path / "elsewhere" / "shared" / "data")


def test_wheel_ships_the_search_spaces(tmp_path):
    """A wheel built from the packaging configuration holds every YAML of search_spaces/ as
    raykd/search_spaces/, and the planning package."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    for folder in ("raykd", "search_spaces"):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(tmp_path / "wheel"), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("raykd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"raykd/search_spaces/{p.name}" for p in (REPO / "search_spaces").glob("*.yaml")}
    assert shipped and shipped <= names
    assert {"raykd/plan/__init__.py", "raykd/plan/presets.py"} <= names
    assert not any(n.startswith(("search_spaces/", "tests/")) for n in names)  # no stray top level
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"]["raykd.search_spaces"] == "search_spaces"
