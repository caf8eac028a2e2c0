"""User-facing errors.

Everything a user can cause (bad file, bad key, bad value) raises :class:`RaykdError` with a
message that names the file/key/value and what was expected. The CLI and job scripts print the
message and exit non-zero instead of showing a traceback.
"""

from __future__ import annotations


class RaykdError(Exception):
    """An error caused by input (files, configs, arguments), with a message meant for users."""


class DataError(RaykdError):
    """A data file is missing, unreadable, malformed or holds invalid values."""


class ConfigError(RaykdError):
    """A configuration file or override is invalid."""


class CheckpointError(RaykdError):
    """A checkpoint is missing, corrupt or does not match the model it is loaded into."""
