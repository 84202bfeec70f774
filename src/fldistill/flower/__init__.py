"""Run fldistill methods on Flower (the optional ``[flower]`` extra).

The core package never imports ``flwr``. This package's own ``__init__`` and ``cli``
do not either (the ``fldistill`` parser lists the ``flower`` commands without it); the
commands call :func:`require_flwr` first, for a one-line install hint.
"""

from __future__ import annotations

from fldistill.errors import ConfigError


def require_flwr() -> None:
    """Raise a one-line error when Flower is not installed."""
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise ConfigError('Flower is not installed: pip install "fldistill[flower]"') from None

