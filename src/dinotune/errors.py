"""User-facing errors.

Every error a user can cause (a bad path, a mistyped config key, a wrong checkpoint) is raised as a
`DinotuneError` whose message names the file, field or key and says what to do. The CLI prints it as
one line and exits with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class DinotuneError(Exception):
    """Base class: the message is complete and actionable on its own."""


class ConfigError(DinotuneError):
    """A config file, key or value is wrong."""


class DataError(DinotuneError):
    """A dataset, image or mask cannot be used as given."""


class CheckpointError(DinotuneError):
    """A checkpoint is missing, truncated, or does not fit the architecture."""


class BackboneNotFoundError(DinotuneError):
    """A backbone source could not be found locally or on the hub."""
