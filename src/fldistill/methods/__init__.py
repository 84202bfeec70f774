"""Registry of methods. A method is a small module against the shared engine.

What each built-in method is (name, description, parameters, local defaults) lives in the
torch-free :mod:`fldistill.methods.catalog`; this registry holds the classes that run them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from fldistill.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from fldistill.methods.base import Method

METHODS: dict[str, type[Method]] = {}

# Set by the catalog's card on a built-in method, never by the class itself.
_FROM_CARD = ("description", "Params", "local_defaults")


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to :data:`METHODS` under ``cls.name``.

    A built-in method (one with a card in :mod:`fldistill.methods.catalog`) gets its
    ``description``, ``Params`` and ``local_defaults`` from the card and must not set
    them itself, so that the card stays their only source. Other methods (a test's, a
    plug-in's) set their own.
    """
    from fldistill.methods.catalog import CARDS  # not at module level: `import fldistill.methods` stays pydantic-free

    card = CARDS.get(cls.name)
    if card is not None:
        own = [a for a in _FROM_CARD if a in vars(cls)]
        if own:
            raise TypeError(f"{cls.__name__} sets {', '.join(own)}: a built-in method takes them from fldistill.methods.catalog")
        cls.description, cls.Params, cls.local_defaults = card.description, card.params, card.local_defaults
    METHODS[cls.name] = cls
    return cls


def unknown_method(name: str, names: Iterable[str]) -> ConfigError:
    """The one-line error for an unknown method ``name``: a did-you-mean hint and the valid ``names``."""
    valid = sorted(names)
    return ConfigError(f"unknown method '{name}'{did_you_mean(name, valid)} (choose one of: {', '.join(valid)})")


def get_method(name: str) -> type[Method]:
    """The method class called ``name``; unknown names get a did-you-mean hint and the valid ones."""
    _load_builtin()
    if name not in METHODS:
        raise unknown_method(name, METHODS)
    return METHODS[name]


def all_methods() -> dict[str, type[Method]]:
    """Every registered method."""
    _load_builtin()
    return dict(sorted(METHODS.items()))


def _load_builtin() -> None:
    # Imported lazily so that `import fldistill.methods` stays cheap and cycle-free.
    import importlib

    from fldistill.methods.catalog import CARDS

    for mod in CARDS:  # each built-in method lives in the module of its name
        try:
            importlib.import_module(f"fldistill.methods.{mod}")
        except ModuleNotFoundError as err:  # a method module still being written
            if err.name != f"fldistill.methods.{mod}":
                raise
