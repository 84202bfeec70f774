"""Personalised evaluation: every client scores the model it would use on its own local test split.

A method says which models its clients use (``Method.personal_models``: the distinct
models and each client's index into them). :func:`personal_eval` runs each distinct model
once over the concatenated local test samples of the clients that use it, in chunks, and
splits correct counts and loss sums back per client with ``index_add_``. A global method
(one model for everyone) therefore costs one pass over all local test samples, whatever
the number of clients; local training (one model per client) costs one small forward per
client. :func:`personal_eval_reference` is the per-client loop over
:func:`~fldistill.engine.training.evaluate` it must equal (the tests compare them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fldistill.data.federation import Federation
from fldistill.engine.training import ModelState, evaluate, set_state

WORST_FRACTION = 0.1  # personalized_accuracy_worst10: the worst ceil(10%) of the clients


@dataclass
class PersonalEval:
    """Per-client results of a personalised evaluation.

    Attributes
    ----------
    correct : np.ndarray
        Correctly classified local test samples per client, int64 ``(N,)``.
    n : np.ndarray
        Local test samples per client, int64 ``(N,)``; clients with 0 are skipped by
        every aggregate.
    loss_sum : np.ndarray
        Summed cross-entropy over each client's local test samples, float64 ``(N,)``.
    """

    correct: np.ndarray
    n: np.ndarray
    loss_sum: np.ndarray

    @property
    def evaluated(self) -> np.ndarray:
        """Mask of the clients with at least one local test sample."""
        return self.n > 0

    @property
    def skipped(self) -> int:
        """How many clients have an empty local test split."""
        return int((self.n == 0).sum())

    @property
    def client_accuracy(self) -> np.ndarray:
        """Accuracy per client, float64 ``(N,)``; NaN where the client has no test sample."""
        out = np.full(len(self.n), np.nan)
        ok = self.evaluated
        out[ok] = self.correct[ok] / self.n[ok]  # correctly rounded, as ``evaluate``'s correct / n
        return out

    @property
    def client_loss(self) -> np.ndarray:
        """Mean cross-entropy per client, float64 ``(N,)``; NaN where the client has no test sample."""
        out = np.full(len(self.n), np.nan)
        ok = self.evaluated
        out[ok] = self.loss_sum[ok] / self.n[ok]
        return out

    @property
    def accuracy(self) -> float:
        """Sample-weighted accuracy over all clients' local test samples."""
        total = int(self.n.sum())
        return int(self.correct.sum()) / total if total else math.nan

    @property
    def loss(self) -> float:
        """Sample-weighted mean cross-entropy over all clients' local test samples."""
        total = int(self.n.sum())
        return float(self.loss_sum.sum()) / total if total else math.nan

    @property
    def accuracy_clients(self) -> float:
        """Plain mean of the accuracies of the clients with at least one local test sample."""
        acc = self.client_accuracy[self.evaluated]
        return float(acc.mean()) if acc.size else math.nan

    def accuracy_worst(self, fraction: float = WORST_FRACTION) -> float:
        """Mean accuracy of the worst ``ceil(fraction * M)`` of the ``M`` evaluated clients."""
        acc = np.sort(self.client_accuracy[self.evaluated])
        if not acc.size:
            return math.nan
        k = max(1, math.ceil(fraction * acc.size))
        return float(acc[:k].mean())

    def metrics(self) -> dict[str, float]:
        """The metrics-record entries (``personalized_*``)."""
        return {
            "personalized_accuracy": self.accuracy,
            "personalized_accuracy_clients": self.accuracy_clients,
            "personalized_accuracy_worst10": self.accuracy_worst(WORST_FRACTION),
            "personalized_loss": self.loss,
        }


def _check_assign(states: Sequence[ModelState], assign: np.ndarray | Sequence[int], n_clients: int) -> np.ndarray:
    a = np.asarray(assign)
    if a.shape != (n_clients,) or (a.size and not np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"personal models: need one integer model index per client, shape ({n_clients},), got {a.dtype} {a.shape}")
    a = a.astype(np.int64)
    if a.size and (a.min() < 0 or a.max() >= len(states)):
        raise ValueError(f"personal models: model indices must lie in [0, {len(states)}), got [{a.min()}, {a.max()}]")
    return a


@torch.no_grad()
def personal_eval(
    model: torch.nn.Module,
    states: Sequence[ModelState],
    assign: np.ndarray | Sequence[int],
    fed: Federation,
    batch_size: int = 4096,
) -> PersonalEval:
    """Evaluate every client's model on the client's local test split, batched by model.

    Parameters
    ----------
    model : torch.nn.Module
        The worker module (its state is overwritten, as by :func:`~fldistill.engine.training.evaluate`).
    states : sequence of ModelState
        The distinct models clients use.
    assign : array of int, shape (N,)
        Per client, the index of its model in ``states``.
    fed : Federation
        Local test splits: ``fed.client_test[cid]`` indexes into ``fed.x``, ``fed.y``.
    batch_size : int
        Samples per forward (``cfg.eval_batch_size``).

    Returns
    -------
    PersonalEval
        Per-client correct counts, sample counts and loss sums. Equal to
        :func:`personal_eval_reference` (accuracies exactly, up to the rare prediction a
        different batch composition rounds differently; losses to float rounding).
    """
    n_clients = fed.n_clients
    a = _check_assign(states, assign, n_clients)
    n = np.array([len(ix) for ix in fed.client_test], dtype=np.int64)
    dev = fed.x.device
    correct = torch.zeros(n_clients, dtype=torch.int64, device=dev)
    loss = torch.zeros(n_clients, dtype=torch.float64, device=dev)
    # Clients grouped by model (stable: client order within a model), empty splits dropped.
    order = np.argsort(a, kind="stable")
    order = order[n[order] > 0]
    if order.size:
        cuts = np.flatnonzero(np.diff(a[order])) + 1
        was = model.training
        model.eval()
        for members in np.split(order, cuts):
            idx = torch.from_numpy(np.concatenate([fed.client_test[c] for c in members])).to(dev)
            owner = torch.from_numpy(np.repeat(members, n[members])).to(dev)
            set_state(model, states[int(a[members[0]])])
            for i in range(0, len(idx), batch_size):
                ix, who = idx[i : i + batch_size], owner[i : i + batch_size]
                out, yb = model(fed.x[ix]), fed.y[ix]
                correct.index_add_(0, who, (out.argmax(1) == yb).to(torch.int64))
                loss.index_add_(0, who, F.cross_entropy(out, yb, reduction="none").to(torch.float64))
        model.train(was)
    return PersonalEval(correct.cpu().numpy(), n, loss.cpu().numpy())


def personal_eval_reference(
    model: torch.nn.Module,
    states: Sequence[ModelState],
    assign: np.ndarray | Sequence[int],
    fed: Federation,
    batch_size: int = 4096,
) -> PersonalEval:
    """:func:`personal_eval` as a plain per-client loop over :func:`~fldistill.engine.training.evaluate` (tests)."""
    a = _check_assign(states, assign, fed.n_clients)
    correct, n, loss = [], [], []
    for cid in range(fed.n_clients):
        x, y = fed.client_data(cid, "test")
        acc, mean = evaluate(model, states[int(a[cid])], x, y, batch_size) if len(y) else (0.0, 0.0)
        correct.append(round(acc * len(y)))
        n.append(len(y))
        loss.append(mean * len(y))
    return PersonalEval(np.array(correct, dtype=np.int64), np.array(n, dtype=np.int64), np.array(loss, dtype=np.float64))
