"""The Sunnybrook cardiac cine volumes in the shared data folder, by subject.

Files are ``scd_SCD0000101.h5`` ... (see ``../shared/data/README.md``); subjects are named by
the last four digits of the patient number ("0101"), the names used in split configs. Split by
subject, never by frame: the 20 cine phases of one slice position are nearly identical.
"""

from __future__ import annotations

import re
from pathlib import Path

from raykd import paths
from raykd.errors import DataError

_NAME = re.compile(r"SCD(\d{4,})$", re.IGNORECASE)


def sunnybrook_root() -> Path:
    """Default location: ``$RAYKD_SHARED_DATA/sunnybrook``."""
    return paths.shared_data_dir() / "sunnybrook"


def sunnybrook_volumes(root: str | Path | None = None) -> dict[str, Path]:
    """Subject id ("0101", ...) → h5 file, sorted by id.

    A file whose stem does not end in ``SCD<digits>`` is keyed by its stem, so volumes
    converted from the public DICOM release under other names are still found.
    """
    folder = Path(root) if root is not None else sunnybrook_root()
    if not folder.is_dir():
        raise DataError(
            f"{folder}: Sunnybrook data folder not found; pass root= or set RAYKD_SHARED_DATA "
            "to the shared data folder that contains sunnybrook/ (see its README.md)"
        )
    found: dict[str, Path] = {}
    for path in sorted(folder.glob("*.h5")):
        match = _NAME.search(path.stem)
        subject = match.group(1)[-4:] if match else path.stem
        if subject in found:
            raise DataError(
                f"{folder}: subject '{subject}' appears twice ({found[subject].name} and "
                f"{path.name}); keep one file per subject"
            )
        found[subject] = path
    if not found:
        raise DataError(f"{folder}: no .h5 volumes found (expected scd_SCD0000101.h5 ...)")
    return dict(sorted(found.items()))
