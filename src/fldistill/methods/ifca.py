"""IFCA (Ghosh, Chung, Yin, Ramchandran, NeurIPS 2020): the Iterative Federated Clustering Algorithm.

The server keeps ``p`` cluster models. Each round, every sampled client receives all
``p`` models, evaluates each on its **full local training set** in a separate pass
before training (as the official code, ``jichan3751/ifca``), takes the one with the
lowest loss, trains a copy of it with the stock local training, and uploads the
trained model with the index of its cluster. The server averages model weights per
cluster (sample-weighted by default; ``weighting="uniform"`` is the official MNIST/CIFAR
scripts' plain mean); a cluster with no member this round keeps its model.

Initialisation: cluster 0 is the run's seeded initial model (so ``p = 1`` *is* FedAvg,
tested) and cluster ``k > 0`` an independent seeded initialisation of the same
architecture. All derive from the run seed, so while a cluster model is untouched it
travels as a seed (free with ``ledger.init_model_free``). ``init="search"`` is the
official ``find_good_initializer``: before round 1, re-draw the models of clusters
1..p-1 until every cluster is the choice of at least ``init_share`` of the clients
(at most ``init_tries`` draws; the assignment pass costs only seeds and indices).

Ledger per round and participating client: ``p`` models down (each a seed while it is
at its initial value), one model up (the cluster index is metadata).

Not copied from the official scripts: they pick a *test* client's cluster by its test
loss. Here every assignment, in training and in the personalised evaluation, comes from
the client's training data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from fldistill.engine.comm import ClientContext, InProcessComm, Unsupported, batched_task, task, train_task
from fldistill.engine.selection import model_losses, pooled_model_losses
from fldistill.engine.training import ModelState, fresh_state
from fldistill.ledger import Kind, Payload
from fldistill.methods import register
from fldistill.methods.base import RunContext
from fldistill.methods.fedavg import FedAvg
from fldistill.methods.params import IFCAParams
from fldistill.seeding import seed_for


def _cluster_states(req: Payload) -> list[ModelState]:
    return [req.get_state(f"cluster{k}") for k in range(int(req.meta["clusters"]))]


def _as_train_request(req: Payload, state: ModelState) -> Payload:
    """The stock ``train`` request for the chosen model (internal to the client: not priced)."""
    meta = {k: v for k, v in req.meta.items() if k != "clusters"}
    return Payload(meta=meta).put_state("model", state, Kind.PARAM)


@task("ifca_assign")
def ifca_assign_task(ctx: ClientContext, req: Payload) -> Payload:
    """The cluster whose model has the lowest loss on this client's training data.

    Request: ``cluster0.* .. cluster{p-1}.*``, metadata ``clusters`` = p.
    Reply: metadata ``cluster`` and ``losses`` (no tensors).
    """
    x, y = ctx.data("train")
    losses = model_losses(ctx.model, _cluster_states(req), x, y)
    return Payload(meta={"cluster": int(losses.argmin()), "losses": losses.tolist()})


@task("ifca_train")
def ifca_train_task(ctx: ClientContext, req: Payload) -> Payload:
    """Pick the best cluster model on the training data (a separate pass), then train a copy of it.

    Request: as ``ifca_assign`` plus the ``train`` metadata. Reply: as ``train`` (prefix
    ``model``) plus metadata ``cluster``.
    """
    states = _cluster_states(req)
    x, y = ctx.data("train")
    k = int(model_losses(ctx.model, states, x, y).argmin())
    reply = train_task(ctx, _as_train_request(req, states[k]))
    reply.meta["cluster"] = k
    return reply


def _shared_clusters(requests: Mapping[int, Payload]) -> list[ModelState]:
    """The cluster models, which must be the very same tensors in every request of the call."""
    ids = sorted(requests)
    first = requests[ids[0]].tensors
    for c in ids[1:]:
        t = requests[c].tensors
        if t.keys() != first.keys() or any(t[k] is not first[k] for k in first):
            raise Unsupported("the requests carry different cluster models")
    return _cluster_states(requests[ids[0]])


def _pooled_losses(comm: InProcessComm, ids: list[int], states: list[ModelState]) -> torch.Tensor:
    fed = comm.fed
    return pooled_model_losses(comm.model, states, fed.x, fed.y, [fed.client_train[c] for c in ids])


@batched_task("ifca_assign")
def ifca_assign_batched(comm: InProcessComm, requests: Mapping[int, Payload]) -> dict[int, Payload]:
    """Batched ``ifca_assign``: each cluster model runs once over all clients' samples."""
    ids = sorted(requests)
    losses = _pooled_losses(comm, ids, _shared_clusters(requests))
    return {c: Payload(meta={"cluster": int(losses[i].argmin()), "losses": losses[i].tolist()}) for i, c in enumerate(ids)}


@batched_task("ifca_train")
def ifca_train_batched(comm: InProcessComm, requests: Mapping[int, Payload]) -> dict[int, Payload]:
    """Batched ``ifca_train``: pooled assignment pass, then the batched ``train`` task."""
    from fldistill.engine.vectorised import train_batched

    ids = sorted(requests)
    states = _shared_clusters(requests)
    choice = _pooled_losses(comm, ids, states).argmin(1).tolist()
    chosen = dict(zip(ids, choice))
    done = train_batched(comm, {c: _as_train_request(requests[c], states[chosen[c]]) for c in ids})
    for c, reply in done.items():
        reply.meta["cluster"] = int(chosen[c])
    return done


@register
class IFCA(FedAvg):
    name = "ifca"
    params: IFCAParams
    task = "ifca_train"
    round_label = "assign + local training"

    def __init__(self, ctx: RunContext, params: BaseModel) -> None:
        super().__init__(ctx, params)
        p = self.params.clusters
        self.models = self.new_bank("clusters", ctx.init_state, rows=p, fill="template")
        for k in range(1, p):
            self.models.initialize(k, fresh_state(ctx.model, seed_for(self.cfg.seed, "ifca", "init", k, 0)))
        self._assign_cache: tuple[tuple[int, ...], np.ndarray] | None = None

    # -- protocol --------------------------------------------------------------------
    def cluster_payload(self, meta: dict[str, Any]) -> Payload:
        """All p cluster models (each a seed while untouched), with ``meta``."""
        free = self.cfg.ledger.init_model_free
        out = Payload(meta={**meta, "clusters": self.params.clusters})
        for k in range(self.params.clusters):
            out.put_state(f"cluster{k}", self.models.get(k), self.models.kind(k, free))
        return out

    def setup(self) -> dict[str, Any]:
        if self.params.init != "search" or self.params.clusters == 1:
            return {}
        p, n = self.params.clusters, self.fed.n_clients
        shares = np.zeros(p)
        for attempt in range(self.params.init_tries):
            if attempt > 0:  # re-draw clusters 1..p-1 (cluster 0 stays the run's initial model)
                for k in range(1, p):
                    self.models.initialize(k, fresh_state(self.ctx.model, seed_for(self.cfg.seed, "ifca", "init", k, attempt)))
            req = self.cluster_payload({})
            bar = self.ctx.progress(f"IFCA initialiser {attempt + 1}", n)
            replies = self.comm.call("ifca_assign", {c: req for c in range(n)}, phase="init", progress=bar)
            got = np.array([replies[c].meta["cluster"] for c in sorted(replies)], dtype=np.int64)
            shares = np.bincount(got, minlength=p) / max(len(got), 1)
            if shares.min() >= self.params.init_share:
                return {"init_tries": attempt + 1, "init_min_share": float(shares.min())}
        return {"init_tries": self.params.init_tries, "init_min_share": float(shares.min())}

    def requests(self, t: int, clients: list[int], base: Payload) -> dict[int, Payload]:
        req = self.cluster_payload(dict(base.meta))  # the cluster models instead of one global model
        return {c: req for c in clients}

    def aggregate(self, t: int, replies: dict[int, Payload]) -> None:
        members: dict[int, dict[int, Payload]] = {}
        for c in sorted(replies):
            members.setdefault(int(replies[c].meta["cluster"]), {})[c] = replies[c]
        for k, reps in members.items():  # a cluster without members keeps its model
            self.models.set(k, self.average(reps, uniform=self.params.weighting == "uniform"))

    def after_replies(self, t: int, replies: dict[int, Payload]) -> dict[str, Any]:
        used = {int(r.meta["cluster"]) for r in replies.values()}
        return {"clusters_used": len(used)}

    # -- what clients use ------------------------------------------------------------
    def assignment(self) -> np.ndarray:
        """Every client's choice among the current cluster models, from its training data."""
        if self.params.clusters == 1:
            return np.zeros(self.fed.n_clients, dtype=np.int64)
        key = tuple(int(v) for v in self.models.versions)
        if self._assign_cache is None or self._assign_cache[0] != key:
            fed = self.fed
            states = [self.models.get(k) for k in range(self.params.clusters)]
            losses = pooled_model_losses(self.ctx.model, states, fed.x, fed.y, fed.client_train, self.cfg.eval_batch_size)
            self._assign_cache = (key, losses.argmin(1).numpy().astype(np.int64))
        return self._assign_cache[1]

    def personal_models(self) -> tuple[list[ModelState], np.ndarray]:
        return [self.models.get(k) for k in range(self.params.clusters)], self.assignment()

    def cluster_assignment(self) -> np.ndarray | None:
        return self.assignment()

    def eval_states(self) -> dict[str, ModelState]:
        """The cluster models; the reported one (``""``) is the model most clients choose."""
        states = [self.models.get(k) for k in range(self.params.clusters)]
        counts = np.bincount(self.assignment(), minlength=len(states))
        out = {"": states[int(counts.argmax())]}
        if len(states) > 1:
            out.update({f"cluster{k}": st for k, st in enumerate(states)})
        return out

    def summary_extra(self) -> dict[str, Any]:
        a = self.assignment()
        return {"cluster_sizes": np.bincount(a, minlength=self.params.clusters).tolist(), "assignment": a.tolist()}
