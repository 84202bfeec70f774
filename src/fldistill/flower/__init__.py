"""Run fldistill methods on Flower (the optional ``[flower]`` extra).

The core package never imports ``flwr``; importing this subpackage checks for it and
says how to install it.
"""

from __future__ import annotations

from fldistill.errors import ConfigError


def require_flwr() -> None:
    """Raise a one-line error when Flower is not installed."""
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise ConfigError('Flower is not installed: pip install "fldistill[flower]"') from None


require_flwr()
