"""MLflow tracking: runs, lineage tags, artifacts, the model registry."""

from raykd.tracking.mlflow_store import Tracking, default_tracking_uri, flatten

__all__ = ["Tracking", "default_tracking_uri", "flatten"]
