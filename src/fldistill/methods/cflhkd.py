"""CFLHKD, reconstructed (Ahmad, Kanatbekova, Brandić, Aral, arXiv 2512.10443; seed 000).

Only the abstract is public and no code exists: this is ``../shared/spec/methods.md`` §3's
reconstruction, every choice an option with a documented default, and every result is
labelled "reconstructed CFLHKD" (the summary says so).

Roles: clients, ``k`` edge servers (``edge:k``, one per cluster, holding the cluster
model ``w_e,k``) and the cloud (``cloud``, the global model ``w_g``).

1. **Warm-up** (rounds ``1..warmup_rounds``): FedAvg between the cloud, acting as a plain
   server, and the clients (hops ``server<->client``).
2. **Clustering** (before the first cloud round, and every ``recluster_every`` cloud
   rounds): every client trains once from ``w_g`` and uploads its model (phase
   ``clustering``); the cloud clusters the updates ``w_i - w_g`` by cosine similarity
   (``clustering="agglomerative"``, average linkage, or ``"kmeans"`` on the similarity
   rows) into ``k`` clusters. New edge models start from ``w_g``.
3. **Cloud round** (every later round): the cloud sends each edge ``w_g`` and, when the
   distillation is on, the other clusters' models (``cloud->edge``); each edge runs
   ``edge_rounds`` rounds of FedAvg with its sampled members (``edge<->client``), the
   clients training on
       ``CE(f(x), y) + lam * tau^2 * KL(q_T || softmax(f(x)/tau))``,
       ``q_T = sum_m beta_m softmax(f_m(x)/tau)``
   over the teachers ``{w_g} + {w_e,j : j != k}`` with ``beta_global`` on ``w_g`` and the
   rest shared by cluster sample counts (``beta_rest="size"``) or equally; then edges send
   their models up (``edge->cloud``) and the cloud averages them weighted by cluster
   sample counts. Edges keep their cluster models (the personalisation).
   ``variant="b"`` then refines ``w_g`` on the cloud by ensemble distillation from the edge
   models on the unlabelled public set (FedDF-style; ``public.source`` as for HFLDD).

Pricing: the teacher pack (``k`` models) is sent to a client once per cloud round, on its
first edge round; later edge rounds of the same cloud round hand it over as the client's
own state (free). With ``lam = 0`` no teachers are sent at all. The sampled clients of
edge round ``r`` of cloud round ``t`` are the run's shared sample of round ``t`` for
``r = 0`` (another seeded draw for ``r > 0``), intersected with each cluster; the local
training stream of edge round ``r`` is keyed ``t + 10^6 r``. So ``k = 1``,
``edge_rounds = 1``, ``lam = 0``, ``warmup_rounds = 0`` is FedAvg exactly (tested).

Deviations from the spec's counts: the spec prices ``k(k+1)`` models cloud->edge per
cloud round; an edge already holds its own model, so here each edge receives ``w_g`` plus
the ``k - 1`` other models (``k^2`` in all; ``k`` without distillation).

``edge_init="keep"`` (default) lets each edge continue from its own cluster model, so the
cluster models are personal across cloud rounds and the global model is their average;
``"global"`` restarts every edge from ``w_g`` each cloud round (as hierarchical FedAvg), so
the cluster models are ``R_e`` edge rounds of cluster training on top of the global model
(the teachers are then the cluster models of the previous cloud round).

``lam_warmup`` ramps ``lam`` linearly over the first cloud rounds (an immature teacher
hurts early rounds); 0 applies it at once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel

from fldistill.cluster import agglomerative, cosine_matrix, kmeans_rows, labels_from_clusters
from fldistill.engine.training import ModelState, Net, Objective, frozen_forward, get_state, objective, set_state, weighted_average
from fldistill.ledger import CLOUD, Kind, Payload, edge
from fldistill.methods import register
from fldistill.methods.base import RunContext
from fldistill.methods.fedavg import FedAvg
from fldistill.methods.params import CFLHKDParams
from fldistill.seeding import torch_gen

STREAM = 1_000_000  # edge round r of cloud round t trains on stream t + STREAM * r


@objective("cflhkd")
def _cflhkd(
    args: dict[str, Any], ref: ModelState, model: torch.nn.Module, tensors: dict[str, torch.Tensor], gen: torch.Generator
) -> Objective:
    """``CE + lam tau^2 KL(q_T || p_tau)``; teacher ``m`` is the ``teacher{m}.*`` tensors, shared by the call."""
    lam, tau = float(args["lam"]), float(args["tau"])
    betas = [float(b) for b in args["betas"]]
    names = list(model.state_dict())

    def loss(net: Net, x: torch.Tensor, y: torch.Tensor, inp: dict[str, torch.Tensor]) -> torch.Tensor:
        s = net.logits(x)
        q = torch.zeros_like(s)
        for m, b in enumerate(betas):
            q = q + b * F.softmax(frozen_forward(model, {k: inp[f"teacher{m}.{k}"] for k in names}, x) / tau, 1)
        kl = (q * (q.clamp_min(1e-12).log() - F.log_softmax(s / tau, 1))).sum(1).mean()
        return F.cross_entropy(s, y) + lam * tau * tau * kl

    # the teachers are the same for every client of an edge: passed once, not per client
    return Objective("cflhkd", loss, shared={k: v.detach() for k, v in tensors.items() if k.startswith("teacher")})


@register
class CFLHKD(FedAvg):
    name = "cflhkd"
    params: CFLHKDParams

    @classmethod
    def uses_public(cls, params: BaseModel) -> bool:
        return getattr(params, "variant", "a") == "b"

    def __init__(self, ctx: RunContext, params: BaseModel) -> None:
        super().__init__(ctx, params)
        self.edges = self.new_bank("edges", ctx.init_state, rows=self.params.k, fill="template")
        self.clusters: list[list[int]] = [list(range(self.fed.n_clients))] if self.params.k == 1 else []
        self.sizes = self.fed.train_sizes()
        self._pack_sent: set[int] = set()

    # -- rounds ------------------------------------------------------------------------
    def cloud_round(self, t: int) -> int:
        """1-based index of round ``t`` among the cloud rounds (0 during warm-up)."""
        return max(0, t - self.params.warmup_rounds)

    def round(self, t: int) -> dict[str, Any]:
        c = self.cloud_round(t)
        if c == 0:
            return super().round(t)  # warm-up: plain FedAvg between the cloud and the clients
        p = self.params
        extra: dict[str, Any] = {}
        if p.k > 1 and (not self.clusters or (p.recluster_every and (c - 1) % p.recluster_every == 0)):
            extra.update(self.recluster(t))
        lam = self.lam_at(c)
        packs = self.send_to_edges(lam > 0)  # the teachers: the cluster models as the last round left them
        if p.edge_init == "global" and c > 1:  # edges restart from w_g, which they just received
            for k in range(len(self.clusters)):
                self.edges.set(k, self.global_state)
        self._pack_sent = set()
        losses: list[float] = []
        for r in range(p.edge_rounds):
            sampled = set(self.sample_clients(t, r) if r else self.sample_clients(t))
            for k, members in enumerate(self.clusters):
                got = self.edge_round(t, r, k, [m for m in members if m in sampled], packs[k], lam)
                losses += [rep.meta["loss"] for rep in got.values()]
        for k in range(len(self.clusters)):
            self.comm.send(Payload().put_state("model", self.edges.get(k), Kind.PARAM), src=edge(k), dst=CLOUD, phase="cloud")
        n_k = [float(self.sizes[m].sum()) for m in self.clusters]
        self.set_global(weighted_average([self.edges.get(k) for k in range(len(self.clusters))], n_k))
        if p.variant == "b":
            extra["cloud_distill_loss"] = self.cloud_distill(t)
        return {"train_loss": float(np.mean(losses)) if losses else float("nan"), "lam": lam, **extra}

    def lam_at(self, c: int) -> float:
        """The KD weight of cloud round ``c`` (ramped over ``lam_warmup`` rounds)."""
        p = self.params
        return p.lam if p.lam_warmup == 0 else p.lam * min(1.0, c / p.lam_warmup)

    def teacher_weights(self, k: int) -> list[float]:
        """beta of the global model, then of every other cluster (in cluster order)."""
        p = self.params
        others = [j for j in range(len(self.clusters)) if j != k]
        if not others:
            return [1.0]
        w = np.array([self.sizes[self.clusters[j]].sum() if p.beta_rest == "size" else 1.0 for j in others], dtype=np.float64)
        return [p.beta_global] + ((1.0 - p.beta_global) * w / w.sum()).tolist()

    def send_to_edges(self, with_teachers: bool) -> list[Payload]:
        """Cloud -> edge k: ``w_g`` and, for the distillation, the other clusters' models.

        Returns, per edge, the teacher pack its clients get (``teacher0`` = ``w_g``,
        then the other clusters), priced as sent.
        """
        free = self.cfg.ledger.init_model_free
        packs = []
        for k in range(len(self.clusters)):
            pack = self.model_payload(prefix="teacher0")
            if with_teachers:
                for m, j in enumerate(j for j in range(len(self.clusters)) if j != k):
                    pack.put_state(f"teacher{m + 1}", self.edges.get(j), self.edges.kind(j, free))
            self.comm.send(pack, src=CLOUD, dst=edge(k), phase="cloud")
            packs.append(pack)
        return packs

    def edge_round(self, t: int, r: int, k: int, clients: list[int], pack: Payload, lam: float) -> dict[int, Payload]:
        """One round of FedAvg between edge ``k`` and its sampled ``clients``."""
        if not clients:
            return {}
        meta: dict[str, Any] = {"round": t + STREAM * r}
        if lam > 0:
            meta.update(objective="cflhkd", objective_args={"lam": lam, "tau": self.params.tau, "betas": self.teacher_weights(k)})
        model = Payload(meta=meta).put_state("model", self.edges.get(k), self.edges.kind(k, self.cfg.ledger.init_model_free))
        first, later = model, model
        if lam > 0:  # the teacher pack: priced on a client's first edge round of this cloud round, then its own state
            first, later = model.with_meta(), model.with_meta()
            for name, tensor in pack.tensors.items():
                first.put(name, tensor, pack.kinds[name])
                later.put(name, tensor, Kind.STATE)
        reqs = {c: (later if c in self._pack_sent else first) for c in clients}
        self._pack_sent.update(clients)
        bar = self.ctx.progress(f"round {t}: edge {k}, edge round {r + 1}", len(clients))
        replies = self.comm.call("train", reqs, phase="edge", sender=edge(k), progress=bar)
        if replies:
            self.edges.set(k, self.average(replies))
        return replies

    # -- clustering --------------------------------------------------------------------
    def recluster(self, t: int) -> dict[str, Any]:
        """Every client trains once from ``w_g``; cluster the updates by cosine similarity."""
        n, p = self.fed.n_clients, self.params
        req = self.model_payload().with_meta(round=t + STREAM * p.edge_rounds, objective="ce", objective_args={})
        bar = self.ctx.progress(f"round {t}: clustering updates", n)
        replies = self.comm.call("train", {c: req for c in range(n)}, phase="clustering", progress=bar)
        came = sorted(replies)
        keys = [k for k, v in self.global_state.items() if v.is_floating_point()]
        g = torch.cat([self.global_state[k].reshape(-1).double() for k in keys])
        upd = torch.stack([torch.cat([replies[c].get_state("model")[k].reshape(-1).double() for k in keys]) - g for c in came])
        k = min(p.k, len(came))
        S = cosine_matrix(upd)
        labels = agglomerative(S, k) if p.clustering == "agglomerative" else kmeans_rows(S, k, self.cfg.seed)
        clusters = [[came[i] for i in np.flatnonzero(labels == j)] for j in range(k)]
        missing = [c for c in range(n) if c not in replies]  # lost clients join the largest cluster
        if missing:
            max(clusters, key=len).extend(missing)
        self.clusters = [sorted(cl) for cl in clusters if cl]
        for j in range(len(self.clusters)):  # new edge models start from the global model
            self.edges.set(j, self.global_state)
        return {"n_clusters": len(self.clusters)}

    # -- variant B ---------------------------------------------------------------------
    def cloud_distill(self, t: int) -> float:
        """FedDF-style: ``w_g`` learns the edge ensemble's softened outputs on the public set."""
        p, model, fed = self.params, self.ctx.model, self.fed
        assert fed.public is not None
        x = torch.as_tensor(fed.public.x, device=fed.x.device)
        n_k = torch.tensor([float(self.sizes[m].sum()) for m in self.clusters], dtype=torch.float64)
        w = (n_k / n_k.sum()).tolist()
        with torch.no_grad():
            target = sum(wk * frozen_forward(model, self.edges.get(j), x) for j, wk in enumerate(w))
            soft = F.softmax(torch.as_tensor(target) / p.tau, 1)
        set_state(model, self.global_state)
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=p.distill_lr)
        gen = torch_gen(self.cfg.seed, "cflhkd", "distill", t, device=x.device)
        b, total = min(p.distill_batch, len(x)), 0.0
        for _ in range(p.distill_steps):
            idx = torch.randint(0, len(x), (b,), generator=gen, device=x.device)
            out = F.log_softmax(model(x[idx]) / p.tau, 1)
            loss = (soft[idx] * (soft[idx].clamp_min(1e-12).log() - out)).sum(1).mean() * p.tau * p.tau
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        self.set_global(get_state(model))
        return total / p.distill_steps

    # -- what clients use, reports, checkpoint -------------------------------------------
    def personal_models(self) -> tuple[list[ModelState], np.ndarray]:
        if not self.clusters or self.cloud_round_done == 0:
            return [self.global_state], np.zeros(self.fed.n_clients, dtype=np.int64)
        return [self.edges.get(k) for k in range(len(self.clusters))], self.assignment_array()

    def assignment_array(self) -> np.ndarray:
        """Each client's cluster (edge) index."""
        return labels_from_clusters(self.clusters, self.fed.n_clients)

    @property
    def cloud_round_done(self) -> int:
        """How many cloud rounds have run (the edge models exist only after the first)."""
        return int(self.edges.versions.max())

    def cluster_assignment(self) -> np.ndarray | None:
        return self.assignment_array() if self.clusters and self.params.k > 1 else None

    def summary_extra(self) -> dict[str, Any]:
        return {"reconstructed": "reconstructed CFLHKD (seed 000: abstract only; methods.md section 3)", "clusters": self.clusters}

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, meta = super().state_dict()
        meta.update(clusters=self.clusters)
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        super().load_state_dict(tensors, meta)
        self.clusters = [list(map(int, c)) for c in meta["clusters"]]
