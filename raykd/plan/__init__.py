"""Experiment planning, without Ray: presets, the grid, typed rows, stage configs, searches.

- :mod:`~raykd.plan.package_data`: where the shipped ``search_spaces/*.yaml`` are read from.
- :mod:`~raykd.plan.presets`: :class:`GridSpec` and the presets of ``paper_grid.yaml``.
- :mod:`~raykd.plan.datasets`: the built-in dataset catalogue (source, split, size, masks).
- :mod:`~raykd.plan.rows`: the typed Table-1 :class:`Row`, grid rows, labels, trial groups.
- :mod:`~raykd.plan.budgets`: epochs per stage, equal budgets, the equal-compute control.
- :mod:`~raykd.plan.identity`: stage identities (what makes two stages the same).
- :mod:`~raykd.plan.stages`: row → typed :class:`StageConfig` / :class:`StageRequest` list.
- :mod:`~raykd.plan.search_space`: search spaces and what one sampled point trains.

Nothing here imports Ray or MLflow (a test asserts it); :mod:`raykd.orchestration` drives
Tune and Train with what this package plans.
"""

from raykd.plan.budgets import Epochs
from raykd.plan.presets import DEFAULT_ROWS, GridSpec, load_preset, preset_names
from raykd.plan.rows import Row, grid_rows, row_label, trial_groups
from raykd.plan.search_space import SearchSpec, load_search, trial_row_and_spec
from raykd.plan.stages import StageOverrides, StageRequest, row_requests, stage_config

__all__ = [
    "DEFAULT_ROWS",
    "Epochs",
    "GridSpec",
    "Row",
    "SearchSpec",
    "StageOverrides",
    "StageRequest",
    "grid_rows",
    "load_preset",
    "load_search",
    "preset_names",
    "row_label",
    "row_requests",
    "stage_config",
    "trial_groups",
    "trial_row_and_spec",
]
