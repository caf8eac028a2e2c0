"""The dataset catalogue a grid names by key: where the volumes come from, the split by volume,
the native size and the folder of the paper's fixed masks (under the shared data).

The built-in entries are data (``datasets:`` in the shipped ``paper_grid.yaml``); a preset file
of the user's own may add entries in the same form (:func:`catalogue_entries`), e.g. a folder of
h5 volumes with its own train/val/test split.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raykd.errors import ConfigError
from raykd.plan.package_data import GRID_FILE_NAME, search_space_file
from raykd.train.config import format_validation_error

# Size of a folder of h5 volumes unless its entry or the grid sets one.
DEFAULT_SIZE = (240, 240)


class DatasetEntry(BaseModel):
    """One catalogue entry (``datasets.<name>`` in a preset file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    source: str = Field(description="'mni152', 'sunnybrook' or a folder of h5 volumes")
    size: tuple[int, int] | None = None  # native slice size; None: DEFAULT_SIZE
    masks: str | None = None  # masks/<masks>/mask_<a>x.npy under the shared data
    mask_accelerations: tuple[float, ...] = (4.0, 5.0)  # the paper's masks that exist
    train: tuple[str, ...] | None = None  # volumes per split; None: the source's own split
    val: tuple[str, ...] | None = None
    test: tuple[str, ...] | None = None
    complex: bool = False  # complex images (data.complex): two-channel networks

    def split(self, name: str) -> list[str] | None:
        volumes = getattr(self, name)
        return None if volumes is None else list(volumes)

    @property
    def native_size(self) -> tuple[int, int]:
        return (int(self.size[0]), int(self.size[1])) if self.size else DEFAULT_SIZE

    def fixed_mask(self, size: tuple[int, int], acceleration: float) -> str | None:
        """``shared:masks/...`` of the paper's mask for this size and acceleration, if the
        entry declares one. Decided from the entry alone (never from which files exist here),
        so a stage's identity is the same on every machine."""
        if not self.masks or tuple(size) != self.native_size:
            return None
        if float(acceleration) not in self.mask_accelerations:
            return None
        return f"shared:masks/{self.masks}/mask_{int(acceleration)}x.npy"


def catalogue_entries(data: Any, where: str, base: Path | None = None) -> dict[str, DatasetEntry]:
    """The ``datasets:`` mapping of a preset file, validated; a relative folder ``source`` is
    looked up next to the file (``base``) first; a source name ('mni152', ``shared:...``) or a
    path found nowhere there is kept as written."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: 'datasets' must map names to entries")
    out = {}
    for name, entry in data.items():
        try:
            parsed = DatasetEntry.model_validate(entry)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, f"{where} dataset '{name}'")) from None
        path = Path(parsed.source).expanduser()
        if base is not None and not path.is_absolute() and (base / path).exists():
            parsed = parsed.model_copy(update={"source": str(base / path)})
        out[str(name)] = parsed
    return out


@lru_cache(maxsize=1)
def builtin_datasets() -> dict[str, DatasetEntry]:
    """The shipped catalogue (``datasets:`` of ``paper_grid.yaml``)."""
    file = search_space_file(GRID_FILE_NAME[: -len(".yaml")])
    return catalogue_entries(yaml.safe_load(file.read_text()).get("datasets"), str(file))
