"""Errors that reach the user as one line, without a traceback."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


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


def check_output_dir(path: str | Path, flag: str = "--out") -> Path:
    """``path`` as a folder fldistill can create or write into, or a one-line :class:`ConfigError`.

    Checked before any work starts: an existing file of that name, an ancestor that is a
    file, and a location that cannot be written are refused, naming the flag.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} {p} is a file, not a folder; choose another {flag}")
    probe = p
    while not probe.exists():  # the nearest ancestor that exists must be a writable folder
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"{flag} {p}: {probe} is a file, so the folder cannot be created; choose another {flag}")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {p}: cannot write in {probe} (permission denied); choose another {flag}")
    return p


def make_output_dir(path: Path, flag: str = "--out") -> None:
    """Create ``path`` (and parents), turning an OS refusal into a one-line :class:`ConfigError`."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{flag} {path}: cannot create the folder ({err.strerror}); choose another {flag}") from None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ``"; did you mean 'x'?"`` suffix for an unknown ``name`` (empty when nothing is close)."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)
    if not close:
        return ""
    return "; did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
