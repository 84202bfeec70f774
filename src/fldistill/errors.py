"""Errors that reach the user as one line, without a traceback."""

from __future__ import annotations


class FLDistillError(Exception):
    """Base class for every error fldistill reports to the user.

    The message must say what was wrong and how to fix it, in one line.
    The CLI prints ``error: <message>`` and exits with status 2.
    """


class ConfigError(FLDistillError):
    """A configuration value is unknown, out of range or inconsistent."""


class DataError(FLDistillError):
    """A data folder or file is missing, malformed or of the wrong layout."""


class TrainingDiverged(FLDistillError):
    """The loss became NaN/inf or exploded; the run stops with this message."""
