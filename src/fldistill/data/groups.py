"""Ground-truth client groups: a concept shift per group, for clustered FL.

The spec ``G:KIND`` splits the clients into G groups (a seeded, balanced assignment) and
gives each group its own transform of the samples (inputs, labels or both), applied on
top of the label partition:

- ``labelswap`` (any dataset): group g relabels ``y -> perm_g[y]``; ``perm_0`` is the
  identity and every later permutation is seeded and distinct from all earlier ones
  (so G <= n_classes!);
- ``rotate`` (square images ``(C, H, W)``): group g rotates by ``90 * g`` degrees with
  ``torch.rot90(x, g, dims=(-2, -1))`` (counter-clockwise as displayed), IFCA's rotated
  MNIST/CIFAR (G <= 4);
- ``signal`` (1-D signals ``(L,)`` or ``(C, L)``): group g applies the g-th of identity,
  time reversal, sign flip, circular shift by ``L // 2`` (G <= 4).

The transforms act on the *normalised* tensors: a sign flip is then a real flip around
0, and the others commute with the dataset-level normalisation anyway, so every group
shares the statistics of the untransformed pool.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported in transform(): parsing a groups spec must not load torch
    import torch

from fldistill.errors import ConfigError
from fldistill.seeding import np_rng

KINDS = ("labelswap", "rotate", "signal")
_MAX_GEOMETRIC = 4  # rotate and signal have four distinct transforms each
_HELP = "use G:KIND with G >= 1 groups and KIND labelswap, rotate (square images) or signal (1-D signals), e.g. 4:rotate"


@dataclass(frozen=True)
class GroupSpec:
    """A parsed ground-truth groups spec (``n_groups`` groups, transform ``kind``)."""

    n_groups: int
    kind: str

    def __str__(self) -> str:
        return f"{self.n_groups}:{self.kind}"


def parse_groups(
    text: str,
    *,
    n_classes: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    n_clients: int | None = None,
) -> GroupSpec:
    """Parse and validate a ``G:KIND`` spec against what is known of the task.

    Parameters
    ----------
    text : str
        The spec, e.g. ``"4:rotate"`` (case and spaces are ignored).
    n_classes, input_shape, n_clients : optional
        The task's facts; checks that need one are skipped when it is None (a folder
        dataset's shape is known only after loading).

    Returns
    -------
    GroupSpec
        ``str()`` of it is the normalised spec (``"4:labelswap"``).

    Raises
    ------
    ConfigError
        One line saying what is wrong and what would fit.
    """
    t = text.strip().lower().replace(" ", "")
    g_text, sep, kind = t.partition(":")
    if not sep:
        raise ConfigError(f"groups '{text}' is not of the form G:KIND; {_HELP}")
    try:
        g = int(g_text)
    except ValueError:
        raise ConfigError(f"groups '{text}': G must be an integer number of groups; {_HELP}") from None
    if kind not in KINDS:
        raise ConfigError(f"groups '{text}': unknown kind '{kind}'; {_HELP}")
    if g < 1:
        raise ConfigError(f"groups '{text}': need at least 1 group, got {g}; {_HELP}")
    if n_clients is not None and g > n_clients:
        raise ConfigError(f"groups '{text}': {g} groups but only {n_clients} clients; use at most {n_clients} groups or more clients")
    if kind == "labelswap" and n_classes is not None and g > math.factorial(n_classes):
        raise ConfigError(
            f"groups '{text}': {n_classes} classes allow only {math.factorial(n_classes)} distinct label permutations "
            f"({n_classes}!); use at most that many groups"
        )
    if kind in ("rotate", "signal") and g > _MAX_GEOMETRIC:
        what = "rotations (0, 90, 180, 270 degrees)" if kind == "rotate" else "signal transforms (identity, reversal, sign flip, shift)"
        raise ConfigError(f"groups '{text}': {kind} has only {_MAX_GEOMETRIC} distinct {what}; use G <= 4 or labelswap")
    if input_shape:
        shape = tuple(input_shape)
        if kind == "rotate" and not (len(shape) == 3 and shape[1] == shape[2]):
            raise ConfigError(
                f"groups '{text}': rotate needs square images (C, H, W) with H == W, but the inputs have shape {shape}; "
                "use signal (1-D data) or labelswap"
            )
        if kind == "signal" and len(shape) not in (1, 2):
            raise ConfigError(
                f"groups '{text}': signal needs 1-D signals of shape (L,) or (C, L), but the inputs have shape {shape}; "
                "use rotate (square images) or labelswap"
            )
    return GroupSpec(g, kind)


def assign_groups(n_clients: int, n_groups: int, seed: int) -> np.ndarray:
    """The true group of each client: a seeded permutation dealt into balanced groups.

    Parameters
    ----------
    n_clients, n_groups : int
        N clients into G groups (1 <= G <= N).
    seed : int
        The run seed (stream ``"groups-assign"``).

    Returns
    -------
    np.ndarray
        int64, shape ``(n_clients,)``; group sizes differ by at most 1 (the first
        ``N mod G`` groups have one more client).
    """
    if not 1 <= n_groups <= n_clients:
        raise ConfigError(f"cannot split {n_clients} clients into {n_groups} groups; use 1 <= G <= {n_clients}")
    order = np_rng(seed, "groups-assign").permutation(n_clients)
    out = np.empty(n_clients, dtype=np.int64)
    out[order] = np.arange(n_clients, dtype=np.int64) % n_groups
    return out


@lru_cache(maxsize=64)
def _label_perms(n_groups: int, n_classes: int, seed: int) -> tuple[tuple[int, ...], ...]:
    perms: list[tuple[int, ...]] = [tuple(range(n_classes))]
    seen = set(perms)
    for g in range(1, n_groups):
        # One stream per group, re-drawn until new: group g's permutation depends on the
        # earlier groups only, so it is the same whatever G is.
        rng = np_rng(seed, "groups-labelswap", g)
        while True:
            p = tuple(int(v) for v in rng.permutation(n_classes))
            if p not in seen:
                break
        perms.append(p)
        seen.add(p)
    return tuple(perms)


def label_perms(n_groups: int, n_classes: int, seed: int) -> np.ndarray:
    """The ``labelswap`` permutations, shape ``(n_groups, n_classes)``; row 0 is the identity.

    Raises
    ------
    ConfigError
        If ``n_groups > n_classes!`` (not enough distinct permutations).
    """
    if n_groups > math.factorial(n_classes):
        raise ConfigError(f"labelswap: {n_groups} groups but {n_classes} classes allow only {math.factorial(n_classes)} permutations")
    return np.array(_label_perms(n_groups, n_classes, seed), dtype=np.int64).reshape(n_groups, n_classes)


def transform(
    x: torch.Tensor, y: torch.Tensor, kind: str, g: int, n_classes: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group ``g``'s version of the samples ``(x, y)`` (batch first).

    Parameters
    ----------
    x, y : torch.Tensor
        Normalised inputs ``(n, *input_shape)`` and labels ``(n,)``.
    kind : str
        ``labelswap``, ``rotate`` or ``signal``.
    g : int
        The group (0 is always the identity).
    n_classes : int
        Number of classes (``labelswap``).
    seed : int
        The run seed (``labelswap``'s permutations).

    Returns
    -------
    tuple of torch.Tensor
        New tensors where changed; an unchanged one is returned as is (not a copy), so
        do not modify the results in place.
    """
    import torch

    if kind == "labelswap":
        if g == 0:
            return x, y
        perm = torch.as_tensor(label_perms(g + 1, n_classes, seed)[g], device=y.device)
        return x, perm[y]
    if kind == "rotate":
        if x.dim() != 4 or x.shape[-1] != x.shape[-2]:
            shape = tuple(x.shape)
            raise ConfigError(f"groups rotate needs square images (n, C, H, W), got a batch of shape {shape}; use signal or labelswap")
        k = g % 4
        return (torch.rot90(x, k, dims=(-2, -1)) if k else x), y
    if kind == "signal":
        if x.dim() not in (2, 3):
            shape = tuple(x.shape)
            raise ConfigError(f"groups signal needs 1-D signals (n, L) or (n, C, L), got a batch of shape {shape}; use rotate or labelswap")
        if not 0 <= g < _MAX_GEOMETRIC:
            raise ConfigError(f"groups signal has {_MAX_GEOMETRIC} transforms, got group {g}; use G <= 4")
        if g == 0:
            return x, y
        if g == 1:
            return torch.flip(x, dims=(-1,)), y
        if g == 2:
            return -x, y
        return torch.roll(x, x.shape[-1] // 2, dims=-1), y
    raise ConfigError(f"unknown groups kind '{kind}'; {_HELP}")
