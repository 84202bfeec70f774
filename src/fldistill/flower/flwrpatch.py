"""Flower's fixed waits, shortened: what a small deployment's rounds mostly wait on.

Flower 1.41 waits in three places that no option reaches (benchmarks/flower/overhead.py
traces them):

- a SuperNode sleeps 3 s after each empty look for a message, and 0.5 s between looks
  for its ClientApp's reply;
- every pull of a message's contents (ClientApp from SuperNode, SuperNode from SuperLink,
  ServerApp from SuperLink) that finds an object not there yet backs off 1 s, 2 s, 4 s...
  up to 10 s, and the contents routinely trail the message by milliseconds.

:func:`shorten_waits` caps them at ``FLDISTILL_FLOWER_POLL_S`` seconds (default 0.2): the
same code asking more often. Protocol, TLS, authentication and the message path are
Flower's. The patch knows Flower 1.41's layout; on another version it changes nothing and
says so (the waits are then Flower's own).
"""

from __future__ import annotations

import os
import sys
import time as _time
from types import ModuleType
from typing import Any

POLL_ENV = "FLDISTILL_FLOWER_POLL_S"
DEFAULT_POLL_S = 0.2
FLWR_VERSION = "1.41"  # the Flower minor release whose internals these patches are written against


class CappedTime(ModuleType):
    """The ``time`` module as one module of Flower sees it: ``sleep`` capped, the rest as is."""

    def __init__(self, cap_s: float) -> None:
        super().__init__("time")
        self.cap_s = cap_s

    def sleep(self, seconds: float) -> None:
        """Sleep at most ``cap_s``: the caller's loop asks again sooner."""
        _time.sleep(min(seconds, self.cap_s))

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)


def poll_seconds() -> float | None:
    """The cap from ``FLDISTILL_FLOWER_POLL_S`` (None when unset: leave Flower alone).

    Raises
    ------
    SystemExit
        The value is not seconds between 0.01 and 3.
    """
    raw = os.environ.get(POLL_ENV)
    if raw is None:
        return None
    try:
        cap = float(raw)
    except ValueError:
        cap = -1.0
    if not 0.01 <= cap <= 3.0:
        raise SystemExit(f"{POLL_ENV}={raw!r}: give seconds between 0.01 and 3 (default {DEFAULT_POLL_S})")
    return cap


def shorten_waits(cap_s: float, *, supernode: bool = False) -> bool:
    """Cap Flower's object-pull back-off (and, with ``supernode``, the SuperNode's sleeps).

    Returns
    -------
    bool
        Whether the patch applied (False on a Flower other than 1.41, with a warning).
    """
    import flwr
    from flwr.supercore.inflatable import inflatable_utils

    # the keyword defaults of both pull functions, patched in place: every module that
    # imported a function by name sees the new values
    defaults = [f.__kwdefaults__ or {} for f in (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree)]
    if not flwr.__version__.startswith(FLWR_VERSION + ".") or not all("backoff_cap" in d for d in defaults):
        print(f"fldistill: Flower {flwr.__version__} is not the {FLWR_VERSION} these patches know; its waits are left as they are",
              file=sys.stderr)
        return False
    for d in defaults:
        d.update(initial_backoff=min(0.02, cap_s), backoff_cap=cap_s, max_tries_per_object=None)  # max_time bounds
    if supernode:
        from flwr.supernode import start_client_internal as sci

        if getattr(sci, "time", None) is _time:
            sci.time = CappedTime(cap_s)
    return True


def shorten_waits_from_env(*, supernode: bool = False) -> None:
    """:func:`shorten_waits` with the cap from the environment, if one is set there."""
    cap = poll_seconds()
    if cap is not None:
        shorten_waits(cap, supernode=supernode)
