"""Similarity under encryption: clients hide their updates, the server still clusters them.

DisUE's "lightweight similarity encryption" (methods.md §2.4, [INFERRED]). The clients
share a secret the server never sees and upload ``e_i = T_s(vec(Δ_i))``:

- ``"orthogonal"`` (default): ``T_s = c_s D_s P_s``, a secret permutation ``P_s``, secret
  signs ``D_s`` and a secret positive scale ``c_s`` (so absolute norms are hidden too).
  Inner products scale by ``c_s^2`` and cosines are preserved exactly (up to float
  summation order): the clustering on ``e`` is the clustering on ``Δ``. Upload ``|θ|``.
- ``"jl"``: a secret Gaussian Johnson-Lindenstrauss projection ``R_s / sqrt(m)``,
  ``m = jl_dim``: cosines preserved approximately (error ``O(1/sqrt(m))``), upload ``m``.
- ``"none"``: no vector is uploaded; the server reads ``Δ_i`` from the uploaded model.

The secret. A real federation provisions it to the clients out of band (a key agreed
among them). In simulation :func:`client_secret` derives it from the run seed under a
domain only client-side code uses, so runs stay reproducible; the server-side method
object never calls it and never holds the key or the transform (tested). An honest but
curious server that knew the run seed could re-derive it: simulation is not a security
boundary, the protocol is what is modelled.
"""

from __future__ import annotations

import functools
import math
from typing import get_args

import torch
from torch import Tensor

from fldistill.methods.params import Scheme  # defined torch-free, with DisUE's parameters
from fldistill.seeding import seed_for, torch_gen

SCHEMES: tuple[str, ...] = get_args(Scheme)


def client_secret(run_seed: int, epoch: int = 0) -> int:
    """The clients' shared secret of key ``epoch`` (client-side code only)."""
    return seed_for(run_seed, "clients-only", "similarity-secret", epoch)


@functools.lru_cache(maxsize=4)
def _orthogonal(secret: int, d: int) -> tuple[Tensor, Tensor, float]:
    g = torch_gen(secret, "orthogonal", d)
    perm = torch.randperm(d, generator=g)
    signs = torch.randint(0, 2, (d,), generator=g).to(torch.float32) * 2 - 1
    scale = float(torch.empty(()).uniform_(0.5, 2.0, generator=g))
    return perm, signs, scale


@functools.lru_cache(maxsize=2)
def _jl(secret: int, d: int, m: int) -> Tensor:
    g = torch_gen(secret, "jl", d, m)
    return torch.randn(m, d, generator=g) / math.sqrt(m)


def encrypt(vec: Tensor, scheme: Scheme, secret: int, jl_dim: int = 1024) -> Tensor:
    """The encrypted form of a flat update ``vec`` ``(d,)`` (float32, on the CPU).

    Parameters
    ----------
    vec : Tensor
        The update, flattened.
    scheme : {"orthogonal", "jl"}
        See the module docstring (``"none"`` uploads nothing: it is an error here).
    secret : int
        The clients' shared secret (:func:`client_secret`).
    jl_dim : int
        ``m`` of the JL projection.
    """
    v = vec.detach().reshape(-1).to("cpu", torch.float32)
    if scheme == "orthogonal":
        perm, signs, scale = _orthogonal(secret, v.numel())
        return v[perm] * signs * scale
    if scheme == "jl":
        return _jl(secret, v.numel(), int(jl_dim)) @ v
    raise ValueError(f"encrypt: unknown scheme {scheme!r}; choose one of {SCHEMES[:2]}")


def encrypted_size(scheme: Scheme, d: int, jl_dim: int) -> int:
    """Values uploaded per client by ``scheme`` for an update of ``d`` values."""
    return {"orthogonal": d, "jl": int(jl_dim), "none": 0}[scheme]
