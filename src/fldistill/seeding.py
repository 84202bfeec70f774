"""All randomness flows from the run's seed through named, keyed streams.

A stream is derived from ``(seed, *keys)`` only, never from how much randomness was
consumed before. So a round's client sampling or a client's batch order is the same
whether the run was resumed, run sequentially or vectorised.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used, so config checks start without it
    import torch


def _key(k: int | str) -> int:
    # Strings are hashed stably (Python's hash() is salted per process).
    return zlib.crc32(k.encode()) if isinstance(k, str) else int(k)


def seed_for(seed: int, *keys: int | str) -> int:
    """A 63-bit integer seed derived from ``seed`` and the stream ``keys``."""
    ss = np.random.SeedSequence([int(seed), *(_key(k) for k in keys)])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def np_rng(seed: int, *keys: int | str) -> np.random.Generator:
    """A NumPy generator for the stream ``keys`` of run ``seed``."""
    return np.random.default_rng(seed_for(seed, *keys))


T = TypeVar("T")


def seeded_build(seed: int, build: Callable[[], T]) -> T:
    """``build()`` with torch's global generator seeded by ``seed`` for the call only.

    For server-side modules whose initial weights must follow from the run seed (the
    generators of KDIA, FedGen, FedFTG and DisUE) without touching the global stream.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build()


def torch_gen(seed: int, *keys: int | str, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator for the stream ``keys`` of run ``seed``."""
    import torch

    g = torch.Generator(device=device)
    g.manual_seed(seed_for(seed, *keys))
    return g
