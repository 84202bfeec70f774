"""Closed-form kernels for kernel-based dataset distillation (KIP).

The FC kernels follow the neural-tangents conventions (NTK parameterisation,
input covariance ``<x, x'> / d``), so they match the kernels the KIP reference
code and FedD3/HFLDD use, without depending on JAX.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


def fc_kernel(
    x1: Tensor,
    x2: Tensor,
    *,
    kind: Literal["ntk", "nngp"] = "ntk",
    depth: int = 1,
    w_std: float = 2**0.5,
    b_std: float = 0.1,
    eps: float = 1e-6,
) -> Tensor:
    """Infinite-width kernel of a fully-connected ReLU network.

    The network is ``Flatten -> depth x [Dense -> ReLU] -> Dense`` in the NTK
    parameterisation with weight std ``w_std`` and bias std ``b_std`` (KIP's
    "FC<depth>").

    Parameters
    ----------
    x1, x2 : Tensor
        Inputs of shape ``(n1, ...)`` and ``(n2, ...)``; flattened to ``d`` features.
    kind : {"ntk", "nngp"}
        Neural tangent kernel or NNGP (output covariance) kernel.
    depth : int
        Number of hidden ReLU layers (>= 0; 0 gives the linear input kernel).
    w_std, b_std : float
        Weight and bias standard deviations.
    eps : float
        The cosine is clamped to ``[-1 + eps, 1 - eps]``: rounding can push it past
        1 (NaN from ``acos``) and the derivative of ``acos`` is infinite at 1, which
        would make gradients w.r.t. the inputs NaN on the diagonal of ``k(X, X)``.

    Returns
    -------
    Tensor
        Kernel matrix of shape ``(n1, n2)`` in the dtype of the inputs.
    """
    if kind not in ("ntk", "nngp"):
        raise ValueError(f"kind must be 'ntk' or 'nngp', got {kind!r}")
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    a, b = _flat(x1), _flat(x2)
    d = a.shape[1]
    sw2, sb2 = w_std**2, b_std**2
    # Layer 1 (Dense on the raw input): the input has no NTK, so Theta = Sigma.
    cov = sw2 * (a @ b.T) / d + sb2
    q1 = sw2 * (a * a).sum(1) / d + sb2
    q2 = sw2 * (b * b).sum(1) / d + sb2
    ntk = cov
    tiny = torch.finfo(cov.dtype).tiny
    for _ in range(depth):
        norm = torch.sqrt((q1[:, None] * q2[None, :]).clamp_min(tiny))
        u = (cov / norm).clamp(-1.0 + eps, 1.0 - eps)
        theta = torch.acos(u)
        # Arc-cosine kernels k1/2 and k0/2 (Cho & Saul): E[relu relu], E[relu' relu'].
        e_rr = norm * (torch.sqrt(1.0 - u * u) + (math.pi - theta) * u) / (2 * math.pi)
        e_dd = (math.pi - theta) / (2 * math.pi)
        cov = sw2 * e_rr + sb2
        ntk = cov + sw2 * e_dd * ntk
        # E[relu(h)^2] = q/2 exactly on the diagonal.
        q1 = sw2 * q1 / 2 + sb2
        q2 = sw2 * q2 / 2 + sb2
    return ntk if kind == "ntk" else cov


def rbf_kernel(x1: Tensor, x2: Tensor, *, gamma: float | None = None) -> Tensor:
    """Gaussian (RBF) kernel ``exp(-gamma * ||x - x'||^2)`` on flattened inputs.

    Parameters
    ----------
    x1, x2 : Tensor
        Inputs of shape ``(n1, ...)`` and ``(n2, ...)``.
    gamma : float, optional
        Inverse length scale; defaults to ``1 / d`` (sklearn's ``"scale"`` for
        standardised inputs).

    Returns
    -------
    Tensor
        Kernel matrix of shape ``(n1, n2)``.
    """
    a, b = _flat(x1), _flat(x2)
    g = 1.0 / a.shape[1] if gamma is None else gamma
    # Expanded form (no sqrt), so gradients stay finite when x == x'.
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return torch.exp(-g * sq.clamp_min(0.0))
