"""The dataset catalogue is data, and a preset file of the user's own can define a dataset (a
folder of h5 volumes with its own train/val/test split) and a grid over it."""

from __future__ import annotations

from pathlib import Path

import pytest

from raykd.errors import ConfigError
from raykd.plan import grid_rows, load_preset, stage_config
from raykd.plan.datasets import DatasetEntry, builtin_datasets
from raykd.plan.presets import preset_label

PRESET_FILE = """
datasets:
  mine:
    source: {source}
    size: [32, 32]
    train: [vol0, vol1]
    val: [vol2]
    test: [vol3]
presets:
  tiny:
    datasets: [mine]
    accelerations: [3]
    methods: [at]
    student_depths: [2]
    teacher_depth: 3
    cascades: 2
    channels: 4
    rows: [student]
    epochs: {{teacher: 1, sft: 1, student: 1, kd: 1}}
    batch_size: 2
    precision: fp32
"""


def _preset_file(tmp_path: Path, source: str) -> Path:
    path = tmp_path / "conf" / "mine.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PRESET_FILE.format(source=source))
    return path


def test_builtin_catalogue_is_read_from_the_shipped_yaml() -> None:
    cat = builtin_datasets()
    assert set(cat) == {
        "mni152",
        "sunnybrook",
        "mni152_complex",
        "sunnybrook_complex",
        "calgary",
        "fastmri_knee",
        "fastmri_knee_measured",
    }
    assert all(cat[n].complex for n in set(cat) - {"mni152", "sunnybrook"})
    assert cat["mni152"] == DatasetEntry(source="mni152", size=(240, 240), masks="brain_240")
    sb = cat["sunnybrook"]
    assert sb.split("train") == ["0101", "0201", "0301"] and sb.split("val") == ["0401"]
    assert sb.split("test") is None and sb.native_size == (150, 150)
    assert sb.fixed_mask((150, 150), 4) == "shared:masks/cardiac_150/mask_4x.npy"
    assert sb.fixed_mask((64, 64), 4) is None and sb.fixed_mask((150, 150), 3) is None


def test_preset_file_names_a_folder_with_its_own_split(tiny_data, tmp_path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "volumes").symlink_to(tiny_data)
    path = _preset_file(tmp_path, "volumes")  # relative: to the preset file's folder
    for name in (f"{path}:tiny", str(path)):  # the file holds one preset: its name is optional
        spec = load_preset(name)
        (row,) = grid_rows(spec)
        data = stage_config(spec, row, "student").data
        assert data.source == str(tmp_path / "conf" / "volumes")
        assert (data.train, data.val, data.test) == (["vol0", "vol1"], ["vol2"], ["vol3"])
        assert data.size == (32, 32) and data.mask.kind == "cartesian"
    assert preset_label(f"{path}:tiny") == "tiny" and preset_label(str(path)) == "mine"
    # The entry travels with the spec (Tune trials rebuild the spec from its JSON dump).
    again = type(spec).model_validate(spec.model_dump(mode="json"))
    assert stage_config(again, row, "student") == stage_config(spec, row, "student")


def test_preset_file_errors_are_one_line(tmp_path) -> None:
    path = _preset_file(tmp_path, "/nowhere")
    cases = {
        f"{path}:other": r"no preset 'other'; it holds \['tiny'\]",
        str(tmp_path / "none.yaml"): "not found",
        "nosuch": "unknown preset 'nosuch'",
    }
    for name, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_preset(name)
    with pytest.raises(ConfigError, match="dataset 'mine': not in the catalogue"):
        path.write_text(PRESET_FILE.format(source="/nowhere").replace("mine:\n", "theirs:\n"))
        load_preset(str(path))
    path.write_text(PRESET_FILE.format(source="/x").replace("size: [32, 32]", "sise: [32, 32]"))
    with pytest.raises(ConfigError, match=r"(?s)dataset 'mine'.*- sise: Extra inputs"):
        load_preset(str(path))


@pytest.mark.ray
@pytest.mark.slow
def test_grid_runs_from_a_preset_file_outside_the_package(ray_session, tiny_data, tmp_path):
    from raykd.cli.grid import grid_main
    from raykd.tracking import Tracking, default_tracking_uri
    from raykd.tracking import schema as S

    path = _preset_file(tmp_path, str(tiny_data))
    root = tmp_path / "runs"
    argv = ["--preset", f"{path}:tiny", "--root", str(root), "--local-train"]
    assert grid_main(argv) == 0
    tracking = Tracking(default_tracking_uri(root), "raykd-tiny")
    (run,) = tracking.runs(f"tags.`{S.TAG_ROLE}` = 'stage'")
    assert run.data.params["data.train"] == "['vol0', 'vol1']"
    assert run.data.params["data.test"] == "['vol3']"
    assert run.data.tags[S.TAG_DATASET] == "mine"
    assert run.data.metrics[S.final_metric("test", "psnr")] > 0


def test_fixed_masks_from_configuration(tmp_path, monkeypatch) -> None:
    """The paper presets plan the paper's masks on any machine; without the files, training
    (and the grid's preflight, which builds the masks) stops with one line saying what to do."""
    from raykd.data.sources import build_mask
    from raykd.errors import DataError

    monkeypatch.setenv("RAYKD_SHARED_DATA", str(tmp_path))  # empty: no masks here
    spec = load_preset("paper")
    row = grid_rows(spec)[0]
    mask = stage_config(spec, row, "teacher").data.mask
    assert (mask.kind, mask.path) == ("file", "shared:masks/brain_240/mask_4x.npy")
    with pytest.raises(DataError, match=r"paper's fixed mask .* fixed_masks: false"):
        build_mask(mask)
    off = load_preset("paper", {"fixed_masks": False})
    assert stage_config(off, row, "teacher").data.mask.kind == "cartesian"


def test_search_keeps_an_explicit_preset() -> None:
    import argparse

    from raykd.cli.grid import add_grid_args, search_preset
    from raykd.plan.search_space import load_search

    p = argparse.ArgumentParser()
    add_grid_args(p)
    search = load_search("kd_weights", {}).model_copy(update={"base_preset": "cpu"})
    assert search_preset(p.parse_args([]), search) == "cpu"
    assert search_preset(p.parse_args(["--preset", "smoke"]), search) == "smoke"
