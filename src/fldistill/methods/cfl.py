"""CFL (Sattler, Müller, Samek, IEEE TNNLS 2020): clustered FL by recursive bi-partitioning.

FedAvg runs inside each cluster (at first one cluster of all clients). After a round,
a cluster ``c`` is split in two when its clients' weight updates ``dW_i = W_i - W_c``
have converged *together* but not *individually*:

    ||mean_{i in c} dW_i|| < eps1   and   max_{i in c} ||dW_i|| > eps2,

it has more than ``min_size`` (2) participating clients, and the round is past
``warmup``. The split is a bi-partition of the cosine similarities of the updates
(agglomerative clustering, complete linkage on ``1 - cos``, as the official code on
``-cos``). Each (new) cluster's model is the average of its participating members'
models; clusters are split recursively over the rounds.

Thresholds: ``eps1``/``eps2`` are the official absolute norms (notebook: 0.4 and 1.6),
which depend on the model, the learning rate and the local steps. By default
(``criterion="relative"``) the test is scale-free [INFERRED]: split when
``||mean dW|| / mean ||dW_i|| < rel_eps1`` and ``max ||dW_i|| / mean ||dW_i|| > rel_eps2``
(the updates cancel out while the clients still move).

A split is also refused when its halves are not told apart by their updates
(``min_separation`` [INFERRED], default 0.25: the mean cosine of two clients in the same
half minus the mean cosine across halves). Without it the stationarity test also fires
on clusters whose clients share one objective, once training settles: on mnist1d (N=100,
4 label-swap groups) the three correct splits had separations 0.28, 0.44 and 0.60 and the
30 spurious ones that followed 0.02-0.15; on IID clients without groups every proposed
split was below 0.2 (``min_separation=None`` restores the official behaviour).

Corrections of the official notebook and of ports (tested):

- the notebook's ``cluster_indices_new += [c1, c2]`` stores *positions* within the
  cluster, not client ids, so every split after the first is wrong; here the positions
  are mapped back to client ids;
- only the clients that took part in the round are aggregated and used for the split
  (FL-bench aggregated stale updates of absent clients). Members absent from a split
  round join the half whose mean update is closest (cosine) to their latest update, or
  the larger half if they have none yet.

Aggregation is sample-weighted (``weighting="samples"``, so CFL before its first split
*is* FedAvg); ``"uniform"`` is the official plain mean of the updates. Ledger: FedAvg's
(one model down and up per participating client; a cluster's first model is the run's
initial model, a seed).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from fldistill.cluster import agglomerative, cosine_matrix, labels_from_clusters
from fldistill.engine.training import ModelState
from fldistill.ledger import Payload
from fldistill.methods import register
from fldistill.methods.base import RunContext
from fldistill.methods.fedavg import FedAvg
from fldistill.methods.params import CFLParams


@register
class CFL(FedAvg):
    name = "cfl"
    params: CFLParams

    def __init__(self, ctx: RunContext, params: BaseModel) -> None:
        super().__init__(ctx, params)
        n = self.fed.n_clients
        self.models = self.new_bank("clusters", ctx.init_state, rows=n, fill="template")  # row k: cluster k's model
        floats = {k: v for k, v in ctx.init_state.items() if v.is_floating_point()}
        self.updates = self.new_bank("updates", floats, device="cpu")  # every client's latest dW
        self.clusters: list[list[int]] = [list(range(n))]
        self.splits: list[dict[str, Any]] = []

    # -- protocol --------------------------------------------------------------------
    def cluster_of(self) -> np.ndarray:
        """Each client's cluster index."""
        return labels_from_clusters(self.clusters, self.fed.n_clients)

    def requests(self, t: int, clients: list[int], base: Payload) -> dict[int, Payload]:
        free = self.cfg.ledger.init_model_free
        of = self.cluster_of()
        reqs: dict[int, Payload] = {}
        per: dict[int, Payload] = {}
        for c in clients:
            k = int(of[c])
            if k not in per:  # one payload per cluster, shared by its members
                per[k] = Payload(meta=dict(base.meta)).put_state("model", self.models.get(k), self.models.kind(k, free))
            reqs[c] = per[k]
        return reqs

    def aggregate(self, t: int, replies: dict[int, Payload]) -> None:
        of = self.cluster_of()
        new_clusters: list[list[int]] = []
        stats: dict[str, float] = {}
        for k, members in enumerate(self.clusters):
            came = [c for c in members if c in replies]
            if not came:
                new_clusters.append(members)
                continue
            ref = self.models.get(k)
            flat = self.updates.layout.flatten
            ref_flat = flat(ref, torch.float32)  # once per cluster, not per client
            dws = torch.stack([flat(replies[c].get_state("model"), torch.float32) - ref_flat for c in came])
            for c, dw in zip(came, dws):
                self.updates.set(c, self.updates.layout.unflatten(dw, torch.float32))
            norms = dws.double().norm(dim=1)
            mean_norm, max_norm = float(dws.double().mean(0).norm()), float(norms.max())
            stats[f"cluster{k}_mean_update"], stats[f"cluster{k}_max_update"] = mean_norm, max_norm
            halves = None
            if self._should_split(t, len(came), mean_norm, max_norm, float(norms.mean()), len(new_clusters) + len(self.clusters) - k):
                halves, sep = self._bipartition(came, dws, [c for c in members if c not in replies])
                stats[f"cluster{k}_separation"] = sep
                if self.params.min_separation is not None and not sep > self.params.min_separation:
                    halves = None  # the halves are not told apart by their updates: noise, not groups
            if halves is not None:
                self.splits.append({"round": t, "cluster": members, "into": halves, "separation": sep})
                new_clusters += halves
            else:
                new_clusters.append(members)
        # the models of the new clustering: the average of each cluster's participating members
        old_models = {k: self.models.get(k) for k in range(len(self.clusters))}
        self.clusters = new_clusters
        self._last_stats = stats
        for k, members in enumerate(new_clusters):
            came = [c for c in members if c in replies]
            if came:
                self.models.set(k, self._average({c: replies[c] for c in came}))
            else:  # no member took part: the cluster keeps its (parent's) model
                self.models.set(k, old_models[int(of[members[0]])])

    def _should_split(self, t: int, n_came: int, mean_norm: float, max_norm: float, avg_norm: float, n_after: int) -> bool:
        p = self.params
        if t <= p.warmup or n_came <= p.min_size:
            return False
        if p.max_clusters is not None and n_after >= p.max_clusters:
            return False
        if p.criterion == "absolute":
            return mean_norm < p.eps1 and max_norm > p.eps2
        return avg_norm > 0 and mean_norm / avg_norm < p.rel_eps1 and max_norm / avg_norm > p.rel_eps2

    def _bipartition(self, came: list[int], dws: torch.Tensor, absent: list[int]) -> tuple[list[list[int]], float]:
        """Split by the cosine similarity of the updates; positions map back to client ids.

        Returns the halves and their separation: the mean cosine of two different clients in
        the same half minus the mean cosine across the halves (near 0 when the updates are
        noise around one direction, large when the halves follow different objectives).
        """
        S = cosine_matrix(dws)
        labels = agglomerative(S, 2, linkage="complete")
        same = torch.from_numpy(labels[:, None] == labels[None, :])
        off = ~torch.eye(len(labels), dtype=torch.bool)
        intra = S[same & off]
        sep = float((intra.mean() if intra.numel() else torch.tensor(1.0)) - S[~same].mean())
        halves = [[came[i] for i in np.flatnonzero(labels == h)] for h in (0, 1)]
        if absent:  # members that did not take part: by their latest update, if any
            means = torch.stack([dws[labels == h].mean(0) for h in (0, 1)]).double()
            means = means / means.norm(dim=1, keepdim=True).clamp_min(1e-12)
            big = int(len(halves[1]) > len(halves[0]))
            for c in absent:
                if self.updates.has(c):
                    u = self.updates.matrix(torch.float32)[c].double()  # the row as stored: no unflatten/flatten
                    halves[int((means @ u).argmax())].append(c)
                else:
                    halves[big].append(c)
        return [sorted(h) for h in halves], sep

    def _average(self, reps: dict[int, Payload]) -> ModelState:
        return self.average(reps, uniform=self.params.weighting == "uniform")

    def after_replies(self, t: int, replies: dict[int, Payload]) -> dict[str, Any]:
        return {"n_clusters": len(self.clusters), **getattr(self, "_last_stats", {})}

    # -- what clients use ------------------------------------------------------------
    def personal_models(self) -> tuple[list[ModelState], np.ndarray]:
        return [self.models.get(k) for k in range(len(self.clusters))], self.cluster_of()

    def cluster_assignment(self) -> np.ndarray | None:
        return self.cluster_of()

    def eval_states(self) -> dict[str, ModelState]:
        """The reported model (``""``) is the largest cluster's."""
        big = max(range(len(self.clusters)), key=lambda k: len(self.clusters[k]))
        return {"": self.models.get(big)}

    def summary_extra(self) -> dict[str, Any]:
        return {"clusters": self.clusters, "splits": self.splits}

    # -- checkpoint (the cluster lists; models and updates are banks) -----------------
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, meta = super().state_dict()
        meta.update(clusters=self.clusters, splits=self.splits)
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        super().load_state_dict(tensors, meta)
        self.clusters = [list(map(int, c)) for c in meta["clusters"]]
        self.splits = list(meta["splits"])
