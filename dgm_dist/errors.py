"""The project's own exception types.

Anything a user can cause (bad data, a bad config value, a missing dataset) is raised as a
`DgmError` with a message that says what is wrong and how to fix it; the CLI prints the message
and exits with status 2, without a traceback.
"""


class DgmError(Exception):
    """Base class of errors a user can cause and fix."""


class DataError(DgmError):
    """A dataset is missing, corrupt, or inconsistent; or a cache cannot be written."""


class ConfigError(DgmError):
    """A configuration value is invalid."""


class TrackingError(DgmError):
    """The tracking store (MLflow) cannot be used."""


class TrainingError(DgmError):
    """A run that started but could not finish (diverged, or workers failed for good)."""


class DivergedError(DgmError):
    """Training produced a non-finite loss or gradient (raised in Tune trials, where it fails the trial)."""
