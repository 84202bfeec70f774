"""FedSeq (Chen et al., IEEE Systems Journal 2023): sequential in-cluster training.

The HFLDD paper's baseline [34] (not Zaccone et al.'s FedSeq). Clients form clusters with
a head; each round the server sends the global model to every head, the model travels a
ring inside the cluster (head -> member -> ... -> member -> head, each client training E
local epochs on its own data, every hop a device-to-device message), and the head uploads
the cluster's model. The server averages the heads' models weighted by cluster sample
counts.

Per round and cluster of J clients: one download (free in round 1: the seed), J
device-to-device transfers and one upload, so the ledger equals the seed's Eq. (19)
``O * |w| * B1 * ((2T - 1) + T * J)`` for O clusters of J clients.

Clusters: HFLDD's heterogeneous clusters by default (``clusters = "hfldd"``), so that the
comparison isolates distillation against sequential training; that costs HFLDD's
soft-label upload, which Eq. (19) does not include (phase ``soft_labels``). ``"random"``
draws ``n_clusters`` equal random clusters instead, as FedSeq's own paper does. The visit
order of the members is a fresh random permutation each round [INFERRED].
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from fldistill.cluster.knowledge import heterogeneous_clusters
from fldistill.engine.comm import ClientContext, task
from fldistill.ledger import Kind, Payload
from fldistill.methods import register
from fldistill.methods.base import Method, RunContext
from fldistill.methods.params import FedSeqParams
from fldistill.seeding import np_rng


@task("forward_inbox")
def forward_inbox_task(ctx: ClientContext, req: Payload) -> Payload:
    """Send the newest model in the inbox on (the head's upload at the end of the ring)."""
    _, msg = ctx.inbox.pop()
    return Payload(meta=dict(msg.meta)).put_state("model", msg.get_state("model"), Kind.PARAM)


@register
class FedSeq(Method):
    name = "fedseq"
    needs_public = True

    @classmethod
    def uses_public(cls, params: FedSeqParams) -> bool:  # type: ignore[override]
        return params.clusters == "hfldd"

    params: FedSeqParams

    def __init__(self, ctx: RunContext, params: BaseModel) -> None:
        super().__init__(ctx, params)
        self.clusters: list[list[int]] = []
        self.heads: list[int] = []

    def setup(self) -> dict[str, Any]:
        p = self.params
        n = self.fed.n_clients
        if p.clusters == "hfldd":
            cl = heterogeneous_clusters(self.comm, self.model_payload(), p, self.cfg.seed, self.ctx.progress("soft labels", n))
            self.clusters, self.heads = cl.clusters, cl.heads
            info: dict[str, Any] = {"purity": cl.purity, **cl.times}
        else:
            rng = np_rng(self.cfg.seed, "fedseq-clusters")
            self.clusters = [sorted(c.tolist()) for c in np.array_split(rng.permutation(n), min(p.n_clusters, n))]
            self.heads = [int(rng.choice(c)) for c in self.clusters]
            info = {}
        return {**info, "n_clusters": len(self.clusters)}

    def round(self, t: int) -> dict[str, Any]:
        rng = np_rng(self.cfg.seed, "fedseq-order", t)
        rings = []
        for c, h in zip(self.clusters, self.heads):
            members = [m for m in c if m != h]
            rings.append([h] + [members[i] for i in rng.permutation(len(members))])
        longest = max(len(r) for r in rings)
        bar = self.ctx.progress(f"round {t}: rings", sum(len(r) for r in rings))
        first = self.model_payload().with_meta(round=t)
        follow = Payload(meta={"round": t, "init_from_inbox": True})  # no tensors: the model comes D2D
        uploads: dict[int, Payload] = {}
        for j in range(longest):
            at = [r for r in rings if len(r) > j]
            reqs = {r[j]: (first if j == 0 else follow) for r in at}
            # the last client of a ring hands the model back to its head; singletons upload
            route = {r[j]: (r[j + 1] if j + 1 < len(r) else r[0]) for r in at if len(r) > 1}
            out = self.comm.call("train", reqs, phase="train", reply_to=route, progress=bar)
            uploads.update(out)  # only singleton clusters reply to the server directly
        heads_back = [r[0] for r in rings if len(r) > 1]
        if heads_back:
            uploads.update(self.comm.call("forward_inbox", {h: Payload() for h in heads_back}, phase="train"))
        sizes = self.fed.train_sizes()
        for r in rings:  # weight each cluster by its total sample count (N_m / N)
            uploads[r[0]].meta["n"] = float(sizes[r].sum())
        self.set_global(self.average(uploads))
        return {"train_loss": self.mean_meta(uploads, "loss")}

    def summary_extra(self) -> dict[str, Any]:
        return {"clusters": self.clusters, "heads": self.heads}

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, meta = super().state_dict()
        meta.update(clusters=self.clusters, heads=self.heads)
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        super().load_state_dict(tensors, meta)
        self.clusters, self.heads = meta["clusters"], meta["heads"]
