"""Confirmed searches (``raykd search --confirm K --confirm-seeds N``): the top-K configurations
and the default re-trained with new seeds and tested against the default over (seed, volume)
units with the report's unit-level test."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from raykd.errors import ConfigError
from raykd.orchestration.confirm import (
    DEFAULT_LABEL,
    NONE_BEATS,
    ConfigResult,
    adjust_candidates,
    choose_winner,
    compare,
    confirm_seeds,
    describe_default,
    top_configs,
)
from raykd.orchestration.messages import SearchOutcome, TrialOutcome, TrialReport
from raykd.plan.search_space import SearchSpec, default_params, load_search
from tests.conftest import phantom_volume, tiny_grid

SPACE = {
    "name": "tconf",
    "row": "std_kd",
    "num_samples": 3,
    "objectives": [{"metric": "val_psnr", "mode": "max"}],
    "scheduler": {"type": "none"},
    "params": {
        "method": {"choices": ["at", "sp"]},
        "kd_weight_scale": {"loguniform": [0.1, 10.0]},
    },
}


def _config(
    label: str, psnr: np.ndarray, seeds: int, volumes: int, ssim: np.ndarray | None = None
) -> ConfigResult:
    keys = [(str(s), f"v{v}") for s in range(seeds) for v in range(volumes)]
    values = {
        "psnr": dict(zip(keys, psnr.tolist(), strict=True)),
        "ssim": dict(zip(keys, (psnr / 40 if ssim is None else ssim).tolist(), strict=True)),
    }
    return ConfigResult(label, {"method": "at"}, None, [], [], values)


def _tested(configs: list[ConfigResult]) -> list[ConfigResult]:
    for c in configs[1:]:
        c.tests = {m: compare(configs[0], c, m) for m in ("psnr", "ssim")}
    adjust_candidates(configs)
    return configs


def test_verdict_names_the_candidate_the_unit_test_finds_better() -> None:
    rng = np.random.default_rng(0)
    base = 30 + rng.normal(0, 0.5, 8)  # 4 seeds x 2 volumes
    default = _config(DEFAULT_LABEL, base, 4, 2)
    clear = _config("#2", base + 0.4 + rng.uniform(0.0, 0.1, 8), 4, 2)  # every unit better
    noise = _config("#1", base + np.array([0.3, -0.3, 0.2, -0.2, 0.1, -0.1, 0.05, -0.05]), 4, 2)
    configs = _tested([default, noise, clear])
    t = clear.tests["psnr"]
    assert t.n_units == 8 and t.n_seeds == 4 and t.family_size == 2
    assert t.ci_low > 0 and t.p_value == pytest.approx(2 / 2**8)  # scipy's exact floor
    assert t.p_adjusted == pytest.approx(2 * t.p_value)  # Holm over the 2 candidates
    winner, line = choose_winner(configs)
    assert winner == "#2"
    assert line.startswith("confirmed winner: #2 (method=at), PSNR +0.4")
    assert "Holm-adjusted over 2 candidates" in line and "8 units (4 seeds × 2 volumes)" in line
    # Without the clear candidate: a difference inside the spread is no winner.
    winner, line = choose_winner([default, noise])
    assert winner is None and line.startswith(NONE_BEATS + " (closest: #1")
    assert noise.tests["psnr"].ci_low < 0 < noise.tests["psnr"].ci_high


def test_holm_across_candidates_and_the_ranked_objective_judges() -> None:
    # 6 units: the exact two-sided floor p = 1/32 passes alone, but not Holm-adjusted over 3
    # candidates (3/32 > 0.05): a lucky best-of-K is no confirmed winner.
    base = 30 + np.random.default_rng(1).normal(0, 0.5, 6)
    default = _config(DEFAULT_LABEL, base, 3, 2)
    alone = _tested([default, _config("#1", base + 0.5, 3, 2)])
    assert alone[1].tests["psnr"].better == "candidate"
    three = _tested([default] + [_config(f"#{i}", base + 0.5, 3, 2) for i in (1, 2, 3)])
    assert all(c.tests["psnr"].p_adjusted == pytest.approx(3 / 32) for c in three[1:])
    assert choose_winner(three)[0] is None
    # Ranked by SSIM: SSIM decides (better here), PSNR (worse) is only reported.
    base8 = 30 + np.random.default_rng(2).normal(0, 0.5, 8)
    default8 = _config(DEFAULT_LABEL, base8, 4, 2, ssim=np.full(8, 0.8))
    cand = _config("#1", base8 - 0.3, 4, 2, ssim=np.full(8, 0.8) + np.linspace(0.01, 0.02, 8))
    configs = _tested([default8, cand])
    winner, line = choose_winner(configs, "ssim")
    assert winner == "#1" and line.startswith("confirmed winner: #1 (method=at), SSIM +0.0")
    assert configs[1].tests["psnr"].better == "baseline"
    assert choose_winner(configs, "psnr")[0] is None


def test_verdict_refuses_below_the_report_minimum_of_units() -> None:
    base = np.array([30.0, 30.5, 29.8, 30.1])  # 2 seeds x 2 volumes: 4 < 6 units
    configs = _tested([_config(DEFAULT_LABEL, base, 2, 2), _config("#1", base + 1.0, 2, 2)])
    assert not configs[1].tests["psnr"].testable
    winner, line = choose_winner(configs)
    assert winner is None
    assert line.startswith("no confirmed winner: 4 units per configuration, a verdict needs ≥ 6")


def _trial(method: str, value: float | None, error: str | None = None) -> TrialOutcome:
    """A search trial whose objectives (PSNR and loss alike) are ``value``; None: stopped."""
    report = None
    if value is not None:
        report = TrialReport(
            val_psnr=value,
            val_loss=value,
            val_ssim=0.5,
            student_params=10,
            seeds=1,
            stage_id="kd",
            kd_run_id="",
        )
    return TrialOutcome(trial=method, params={"method": method}, report=report, error=error)


def test_top_configs_are_distinct_finished_and_ranked_by_the_objective() -> None:
    search = SearchSpec.model_validate(SPACE)
    trials = [
        _trial("at", 30.0),
        _trial("sp", 31.0),
        _trial("sp", 30.5),  # same config again
        _trial("cc", None),  # stopped early
        _trial("fsp", 35.0, error="boom"),
        _trial("pkt", float("nan")),
    ]
    out = SearchOutcome(trials=trials, study_name="s", storage="sqlite://")
    top = top_configs(out, search, 3)
    assert [t.params["method"] for t in top] == ["sp", "at"]
    loss = SearchSpec.model_validate(
        {**SPACE, "objectives": [{"metric": "val_loss", "mode": "min"}]}
    )
    assert [t.params["method"] for t in top_configs(out, loss, 1)] == ["at"]


def test_default_configuration_and_fresh_seeds(tmp_path) -> None:
    base = tiny_grid(tmp_path, seeds=2, methods=["sp", "at"])
    search = SearchSpec.model_validate(SPACE)
    assert default_params(search, base) == {"method": "sp"}  # kd_weight_scale: the preset's
    fixed = SearchSpec.model_validate({**SPACE, "default": {"kd_weight_scale": 2.0}})
    assert default_params(fixed, base) == {"kd_weight_scale": 2.0, "method": "sp"}
    assert describe_default(search, base) == "method=sp kd_weight_scale=1"
    kd = load_search("kd_weights")
    assert describe_default(kd, base.model_copy(update={"kd_balance": 0.1})) == (
        "method=sp kd_balance=0.1 output_weight=0 w_imit=1 w_s=1"
    )
    assert confirm_seeds(base, 3) == [44, 45, 46]  # the search trained 42 and 43
    path = tmp_path / "space.yaml"
    path.write_text(json.dumps({**SPACE, "default": {"w_s": 1.0}}))
    with pytest.raises(ConfigError, match=r"default: \['w_s'\] not searched"):
        load_search(str(path))


def test_confirm_flags_refuse_bad_counts(capsys) -> None:
    from raykd.cli.grid import search_main

    for argv, message in (
        (["--confirm", "-1"], "invalid choice: -1"),
        (["--confirm", "2", "--confirm-seeds", "0"], "expected >= 1, got 0"),
    ):
        with pytest.raises(SystemExit):
            search_main(argv)
        assert message in capsys.readouterr().err


PRESET = """
datasets:
  six:
    source: {source}
    size: [32, 32]
    train: [vol0, vol1]
    val: [vol2]
    test: [vol3, vol4, vol5]
presets:
  tiny:
    datasets: [six]
    accelerations: [3]
    methods: [at]
    student_depths: [2]
    teacher_depth: 3
    cascades: 2
    channels: 4
    seeds: 1
    epochs: {{teacher: 1, sft: 1, student: 1, kd: 1}}
    batch_size: 2
    precision: fp32
"""


@pytest.mark.ray
def test_confirmed_search_retrains_top_k_and_default(ray_session, tmp_path, capsys) -> None:
    from raykd.cli.grid import search_main
    from raykd.data.volumes import write_volume
    from raykd.orchestration.identity import StageStore
    from raykd.tracking import Tracking, default_tracking_uri

    data = tmp_path / "six"
    data.mkdir()
    for v in range(6):
        write_volume(data / f"vol{v}.h5", phantom_volume(4, 32, seed=v))
    preset = tmp_path / "six.yaml"
    preset.write_text(PRESET.format(source=data))
    space = tmp_path / "tconf.yaml"
    space.write_text(json.dumps(SPACE))
    root = tmp_path / "runs"
    argv = ["--space", str(space), "--preset", f"{preset}:tiny", "--root", str(root)]
    argv += ["--local-train", "--fresh", "--confirm", "2", "--confirm-seeds", "2"]
    assert search_main(argv) == 0
    out = capsys.readouterr().out
    verdict = re.compile(r"^(confirmed winner: #\d|none beats the default beyond its spread)")
    assert verdict.match(out.splitlines()[-2]), out  # the summary's line before the study's
    assert "| config | parameters | search val_psnr |" in out
    assert "| default | method=at kd_weight_scale=1 | — | 6 |" in out  # as it trains
    (path,) = root.glob("confirm-tconf-*.json")
    conf = json.loads(path.read_text())
    assert conf["seeds"] == [43, 44] and conf["split"] == "test"
    assert [c["label"] for c in conf["configs"]] == ["default", "#1", "#2"]
    assert conf["configs"][0]["params"] == {"method": "at"}
    assert all(c["n_units"] == 2 * 3 for c in conf["configs"])  # seeds x test volumes
    for c in conf["configs"][1:]:
        assert c["vs_default"]["psnr"]["n_units"] == 6 and c["vs_default"]["psnr"]["testable"]
    kd = [s for c in conf["configs"] for s in c["stage_ids"]]
    teachers = {s for c in conf["configs"] for s in c["teacher_ids"]}
    assert len(set(kd)) == 3 * 2 and len(teachers) == 2  # one teacher per seed, reused
    tracking = Tracking(default_tracking_uri(root), "raykd-search-tconf")
    (job,) = tracking.runs("tags.`raykd.confirm.split` = 'test'")
    assert verdict.match(job.data.tags["raykd.confirm.verdict"])
    assert conf["verdict"] == job.data.tags["raykd.confirm.verdict"]
    assert "confirm_top1_delta_psnr" in job.data.metrics
    arts = {a.path for a in tracking.client.list_artifacts(job.info.run_id, "confirm")}
    assert {Path(a).suffix for a in arts} == {".md", ".json"}
    trained = set(StageStore(root).uses(job.info.run_id)["trained"])
    assert set(kd) | teachers <= trained
    # The search trained seed 42 only: 1 teacher + 3 KD stages, none shared with the confirmation.
    assert len(trained) == 4 + 6 + 2

    # A confirmation that fails (injected here) loses nothing of the search: its result file is
    # written and logged before the confirmation starts, and the job run ends FAILED.
    from raykd.errors import RaykdError

    def broken_confirmation(*_args, **_kw):
        raise RaykdError("injected confirmation failure")

    import raykd.orchestration.confirm as confirm_module

    def results() -> set[Path]:  # not the job's <name>-<id>-stages.json
        return {p for p in root.glob("search-tconf-*.json") if not p.stem.endswith("-stages")}

    before = results()
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(confirm_module, "confirm_search", broken_confirmation)
        assert search_main(argv) == 2
    assert "error: injected confirmation failure" in capsys.readouterr().err
    (written,) = results() - before
    assert len(json.loads(written.read_text())["trials"]) == SPACE["num_samples"]
    (failed,) = tracking.runs("attributes.status = 'FAILED'")
    assert written.name in {a.path for a in tracking.client.list_artifacts(failed.info.run_id)}
