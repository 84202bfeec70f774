"""Model selection by clients: each client's loss under each of several models.

Clustered methods (IFCA) let every client pick, among K models, the one with the lowest
loss on its own training data. The sequential form is one :func:`model_losses` call per
client; :func:`pooled_model_losses` is its batched twin: each model runs once over the
union of the clients' samples and the per-sample losses are summed per client, which
gives the same means up to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fldistill.engine.training import ModelState, set_state


@torch.no_grad()
def model_losses(
    model: torch.nn.Module, states: Sequence[ModelState], x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096
) -> torch.Tensor:
    """Mean cross-entropy of each state on ``(x, y)`` (eval mode): shape ``(len(states),)``, float64."""
    was = model.training
    model.eval()
    out = torch.zeros(len(states), dtype=torch.float64)
    try:
        for k, st in enumerate(states):
            set_state(model, st)
            total = 0.0
            for i in range(0, len(y), batch_size):
                total += float(F.cross_entropy(model(x[i : i + batch_size]), y[i : i + batch_size], reduction="sum"))
            out[k] = total / max(len(y), 1)
    finally:
        model.train(was)
    return out


@torch.no_grad()
def pooled_model_losses(
    model: torch.nn.Module,
    states: Sequence[ModelState],
    x: torch.Tensor,
    y: torch.Tensor,
    index: Sequence[np.ndarray],
    batch_size: int = 4096,
) -> torch.Tensor:
    """Mean cross-entropy of each state on each client's samples: ``(clients, states)``, float64.

    Parameters
    ----------
    model : torch.nn.Module
        The worker module (its tensors are overwritten, its mode restored).
    states : sequence of ModelState
        The candidate models.
    x, y : torch.Tensor
        The sample pool.
    index : sequence of np.ndarray
        Per client, its samples as indices into the pool.
    """
    lens = [len(ix) for ix in index]
    if not lens or sum(lens) == 0:
        return torch.zeros(len(lens), len(states), dtype=torch.float64)
    flat = torch.from_numpy(np.concatenate([np.asarray(ix, dtype=np.int64) for ix in index])).to(x.device)
    owner = torch.repeat_interleave(torch.arange(len(lens), device=x.device), torch.tensor(lens, device=x.device))
    xs, ys = x[flat], y[flat]
    out = torch.zeros(len(lens), len(states), dtype=torch.float64, device=x.device)
    was = model.training
    model.eval()
    try:
        for k, st in enumerate(states):
            set_state(model, st)
            for i in range(0, len(ys), batch_size):
                ce = F.cross_entropy(model(xs[i : i + batch_size]), ys[i : i + batch_size], reduction="none")
                out[:, k].index_add_(0, owner[i : i + batch_size], ce.to(torch.float64))
    finally:
        model.train(was)
    n = torch.tensor(lens, dtype=torch.float64, device=x.device).clamp_min(1.0)
    return (out / n[:, None]).cpu()
