"""Registry of methods. A method is a small module against the shared engine."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fldistill.errors import ConfigError

if TYPE_CHECKING:
    from fldistill.methods.base import Method

METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to :data:`METHODS` under ``cls.name``."""
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    """The method class called ``name``; unknown names list the valid ones."""
    _load_builtin()
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}'; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def all_methods() -> dict[str, type[Method]]:
    """Every registered method."""
    _load_builtin()
    return dict(sorted(METHODS.items()))


def _load_builtin() -> None:
    # Imported lazily so that `import fldistill.methods` stays cheap and cycle-free.
    import importlib

    builtin = (
        *("centralized", "fedavg", "fedprox", "hfldd", "fedseq", "scaffold", "moon", "dynafed", "kdia"),
        *("local", "ifca", "cfl", "cflhkd", "fedftg", "fedgen", "disue"),
    )
    for mod in builtin:
        try:
            importlib.import_module(f"fldistill.methods.{mod}")
        except ModuleNotFoundError as err:  # a method module still being written
            if err.name != f"fldistill.methods.{mod}":
                raise
