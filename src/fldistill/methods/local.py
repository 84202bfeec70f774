"""Local training alone: every client trains its own model and nothing is aggregated.

The personalised-accuracy baseline (what a client gets without federating). Each client's
model lives in the state bank ``models`` (one row per client, starting from the seeded
initial model) and is handed to the client as :attr:`~fldistill.ledger.Kind.STATE`: it is
the client's own persistent state, kept server-side only so that memory stays flat in the
number of clients, so the ledger prices it at 0 bits. The trained model comes back the
same way: the stock ``train`` task replies with a ``PARAM`` model, which the ledger would
price as an upload, so this module registers ``local_train``, the stock task (and its
batched twin) with the reply re-marked as ``STATE``. A run's ledger therefore stays at 0
bits on every hop.

The reported model (``accuracy`` and ``loss`` on the global test set) is the FedAvg,
weighted by local training-set sizes, of all clients' current models. No client ever
holds it and nothing is sent to build it: it only keeps the global-accuracy columns
comparable to the other methods. The meaningful metric of this baseline is
``personalized_accuracy`` (each client's own model on its own local test split).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from fldistill.engine import ClientContext, InProcessComm, Kind, ModelState, Payload, batched_task, task, train_task
from fldistill.methods import register
from fldistill.methods.base import Method, RunContext


def _as_state(reply: Payload) -> Payload:
    """The reply with every tensor re-marked as the client's own state (free on the ledger)."""
    return Payload(dict(reply.tensors), {k: Kind.STATE for k in reply.kinds}, dict(reply.meta))


@task("local_train")
def local_train_task(ctx: ClientContext, req: Payload) -> Payload:
    """The stock ``train`` task whose trained model stays the client's own (``Kind.STATE`` reply)."""
    return _as_state(train_task(ctx, req))


@batched_task("local_train")
def local_train_batched(comm: InProcessComm, requests: Mapping[int, Payload]) -> dict[int, Payload]:
    """The batched twin of :func:`local_train_task`: the stock batched ``train``, replies re-marked."""
    from fldistill.engine.vectorised import train_batched  # the vectorised engine is loaded only when used

    return {cid: _as_state(rep) for cid, rep in train_batched(comm, requests).items()}


@register
class Local(Method):
    """Local training alone (no communication); see the module docstring."""

    name = "local"

    def __init__(self, ctx: RunContext, params: BaseModel) -> None:
        super().__init__(ctx, params)
        self.models = self.new_bank("models", ctx.init_state, fill="template")
        sizes = torch.as_tensor(self.fed.train_sizes(), dtype=torch.float64)
        self._weights = sizes / sizes.sum()

    def round(self, t: int) -> dict[str, Any]:
        clients = self.sample_clients(t)
        meta = {"round": t, "objective": "ce", "objective_args": {}}
        requests = {c: Payload(meta=dict(meta)).put_state("model", self.models.get(c), Kind.STATE) for c in clients}
        bar = self.ctx.progress(f"round {t}: local training", len(clients))
        replies = self.comm.call("local_train", requests, phase="train", progress=bar)
        for c in sorted(replies):
            self.models.set(c, replies[c].get_state("model"))
        self.global_state = self._mean_model()
        return {"train_loss": self.mean_meta(replies, "loss"), "participants": len(clients)}

    def _mean_model(self) -> ModelState:
        """The sample-weighted average of every client's model (the reported model; never sent)."""
        out: ModelState = {}
        for dt in self.models.layout.widths:
            m = self.models.matrix(dt)
            if dt.is_floating_point:
                vec = (self._weights.to(m.device) @ m.to(torch.float64)).to(dt)
            else:  # integer buffers take the maximum, as in weighted_average
                vec = m.max(0).values
            out.update({k: v.clone() for k, v in self.models.layout.unflatten(vec, dt).items()})
        return {k: out[k] for k in self.models.layout.keys}

    def personal_models(self) -> tuple[list[ModelState], np.ndarray]:
        """Every client uses its own model."""
        n = self.fed.n_clients
        return [self.models.get(i) for i in range(n)], np.arange(n, dtype=np.int64)
