"""What a person's browser shows when opening a raykd experiment in the MLflow UI (3.17).

Measured in MLflow 3.17.2's UI bundle and in headless Chromium (tests/test_mlflow_ui.py):

- The landing page does not follow the experiment's ``mlflow.experimentKind`` tag: the UI
  derives the kind from a per-browser "workflow type" (GenAI | Model training, localStorage
  ``mlflow.workflowType``, default GenAI), so ``#/experiments/<id>`` opens the GenAI overview
  in a fresh browser whatever the tag says. The URL parameter ``workflowType=machine_learning``
  and the route ``#/experiments/<id>/runs`` both open the runs table directly.
- A runs-table view (filter, sort, columns, column order and widths) can be stored as the
  experiment tag ``mlflow.sharedViewState.<key>`` and opened with ``?viewStateShareKey=<key>``;
  it also appears in the page's "Views" menu. Expanded rows are not part of a shared view,
  hence the filter: stage runs only, flat, so every stage's name and metrics are in sight and
  reuse links (``raykd.role = reuse``) never show a stage twice.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlencode

VIEW_KEY = "raykd-stages"  # the shared view's key (URL parameter viewStateShareKey)
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
VIEW_NAME = "raykd: stages by val PSNR"
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
STAGE_FILTER = "tags.`raykd.role` = 'stage'"
RUN_NAME_COLUMN = "attributes.`Run Name`"
COLUMNS = (
    "metrics.`final_val_psnr`",
    "metrics.`final_val_ssim`",
    "tags.`raykd.row`",
    "attributes.`Models`",
)


def stages_view() -> dict[str, Any]:
    """The runs-table state: stage runs, best validation PSNR first, results in columns."""
    return {
        "searchFilter": STAGE_FILTER,
        "orderByKey": COLUMNS[0],
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "modelVersionFilter": "All Runs",
        "datasetsFilter": [],
        "selectedColumns": list(COLUMNS),
        # Widths apply to the columns named in the order only.
        "columnOrder": [RUN_NAME_COLUMN, *COLUMNS],
        "columnWidths": {RUN_NAME_COLUMN: 360, COLUMNS[0]: 130, COLUMNS[1]: 130},
        "runsHiddenMode": "SHOW_ALL",
        "groupBy": None,
        "viewMaximized": False,
        "runListHidden": False,
    }


def share_stages_view(client: Any, experiment_id: str) -> None:
    """Store the stages view on the experiment, unless it holds this very state already (a
    person's edits saved under another key are left alone)."""
    state = json.dumps(stages_view(), sort_keys=True)
    tags = client.get_experiment(experiment_id).tags
    try:
        current = json.loads(tags.get(VIEW_TAG, "{}")).get("state")
    except (json.JSONDecodeError, AttributeError):
        current = None
    if current == state:
        return
    now = int(time.time() * 1000)
    envelope = {"name": VIEW_NAME, "createdAt": now, "updatedAt": now, "state": state}
    client.set_experiment_tag(experiment_id, VIEW_TAG, json.dumps(envelope))


def ui_base(tracking_uri: str) -> str:
    """The UI's address: the tracking server itself, else a local ``mlflow ui``."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return LOCAL_UI


def stages_url(tracking_uri: str, experiment_id: str) -> str:
    """The link that opens the experiment on its stage runs with the results in columns."""
    query = urlencode({"viewStateShareKey": VIEW_KEY, "workflowType": "machine_learning"})
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs?{query}"


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}"
