"""Label-knowledge clustering as a protocol step (HFLDD section IV.B; reused by FedSeq).

Clients pre-train from the initial model and upload softmax soft labels on the public
set (task ``soft_labels``); the server computes the pairwise KL matrix (Eq. 4), runs
K-Means on its rows (homogeneous clusters), re-mixes them with ClusterSampling
(Algorithm 1) and draws one head per heterogeneous cluster.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fldistill.cluster.algorithms import choose_heads, cluster_sampling, kmeans_rows
from fldistill.cluster.scores import label_coverage, purity
from fldistill.cluster.similarity import kl_matrix
from fldistill.engine.comm import ClientContext, Comm, local_config_from, task
from fldistill.engine.training import local_train, make_objective, predict_proba
from fldistill.ledger import Kind, Payload
from fldistill.methods.params import ClusteringParams
from fldistill.seeding import np_rng


def default_k(n_clients: int) -> int:
    """HFLDD's K when ``params.k`` is null: the paper's 10, at most half the clients (at least 1)."""
    return max(1, min(10, n_clients // 2))


@task("soft_labels")
def soft_labels_task(ctx: ClientContext, req: Payload) -> Payload:
    """Train from the received model, then predict soft labels on the public set."""
    state = req.get_state("model")
    x, y = ctx.data("train")
    local = local_config_from(req.meta, ctx.local)
    obj = make_objective("ce", {}, state, ctx.model)
    trained, stats = local_train(ctx.model, state, x, y, local, obj, ctx.gen("pretrain"), where=f"client {ctx.cid} pre-training")
    if ctx.fed.public is None:
        raise RuntimeError("soft_labels needs the federation's public set (the method must declare needs_public)")
    pub = torch.as_tensor(ctx.fed.public.x, device=x.device)
    soft = predict_proba(ctx.model, trained, pub)
    return Payload(meta={"n": len(y), "loss": stats["loss"]}).put("soft", soft, Kind.FLOAT)


@dataclass
class Clustering:
    """The outcome of HFLDD's label-knowledge clustering."""

    homog: np.ndarray
    clusters: list[list[int]]
    heads: list[int]
    k: int
    purity: float
    coverage: list[dict]
    M: torch.Tensor
    times: dict[str, float]


def heterogeneous_clusters(
    comm: Comm, model: Payload, p: ClusteringParams, seed: int, progress: Callable[[int], None] | None = None
) -> Clustering:
    """Label knowledge collection + heterogeneous client clustering (HFLDD Algorithm 2, l. 2-21).

    Every client pre-trains from ``model`` (the seeded initial model, prefix ``model``)
    and uploads soft labels on the public set (phase ``soft_labels``); the server
    clusters them.
    """
    fed, n = comm.fed, comm.fed.n_clients
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    pre = {
        "unit": p.pretrain_unit,
        "amount": p.pretrain_epochs,
        "lr": p.pretrain_lr,
        "momentum": p.pretrain_momentum,
        "batch_size": p.pretrain_batch,
    }
    req = model.with_meta(local=pre)
    replies = comm.call("soft_labels", {c: req for c in range(n)}, phase="soft_labels", progress=progress)
    # A client that did not answer (a lost Flower node) is left out of the clustering.
    present = sorted(replies)
    if not present:
        raise RuntimeError("HFLDD: no client answered the soft-label collection; nothing to cluster")
    soft = torch.stack([replies[c].tensors["soft"] for c in present])
    times["soft_labels_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    M = kl_matrix(soft)
    k = min(p.k if p.k is not None else default_k(n), len(present))
    homog = kmeans_rows(M.cpu().numpy(), k, seed)
    rng = np_rng(seed, "hfldd-clusters")
    clusters = [[present[i] for i in c] for c in cluster_sampling(homog, rng)]
    heads = choose_heads(clusters, rng)
    times["clustering_s"] = time.perf_counter() - t0
    counts = fed.label_counts()
    pur = purity(homog, [frozenset(np.flatnonzero(counts[c]).tolist()) for c in present])
    return Clustering(homog, clusters, heads, k, pur, label_coverage(clusters, heads, counts), M, times)
