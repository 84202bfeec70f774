"""Clustering algorithms: K-Means and agglomerative clustering of similarity rows, and
HFLDD's heterogeneous clusters (Algorithm 1, ClusterSampling) with their heads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from fldistill.cluster._labels import _as_labels
from fldistill.errors import ConfigError


def _rows(M: np.ndarray | torch.Tensor, k: int, *, what: str) -> np.ndarray:
    """``M`` as a finite float64 matrix of N >= 1 rows, with ``1 <= k <= N`` checked."""
    if isinstance(M, torch.Tensor):
        M = M.detach().cpu().numpy()
    X = np.asarray(M, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ConfigError(f"similarity matrix must be 2-D with at least one row, got shape {X.shape}")
    n = X.shape[0]
    if not 1 <= k <= n:
        raise ConfigError(f"number of {what}={k} must be between 1 and the number of clients N={n}")
    if not np.isfinite(X).all():
        raise ConfigError("similarity matrix contains NaN or inf; check the soft labels or updates")
    return X


def kmeans_rows(M: np.ndarray | torch.Tensor, k: int, seed: int) -> np.ndarray:
    """Homogeneous clusters: K-Means on the rows of the similarity matrix.

    Each row ``M[i]`` (client ``i``'s divergence to every client) is one
    point, as in the paper.

    Parameters
    ----------
    M : np.ndarray or torch.Tensor
        Shape ``(N, N)``, e.g. from :func:`kl_matrix`.
    k : int
        Number of homogeneous clusters ``K``, ``1 <= K <= N``.
    seed : int
        ``random_state`` of scikit-learn's ``KMeans`` (``n_init=10``).

    Returns
    -------
    np.ndarray
        int64 cluster label in ``[0, K)`` per client, shape ``(N,)``.
    """
    from sklearn.cluster import KMeans  # imported lazily: sklearn is slow to import

    X = _rows(M, int(k), what="homogeneous clusters K")
    km = KMeans(n_clusters=int(k), n_init=10, random_state=int(seed))
    return km.fit_predict(X).astype(np.int64)


def agglomerative(
    S: np.ndarray | torch.Tensor, k: int, *, linkage: Literal["average", "complete", "single"] = "average"
) -> np.ndarray:
    """Agglomerative clustering of a similarity matrix into ``k`` clusters.

    Parameters
    ----------
    S : np.ndarray or torch.Tensor
        Symmetric ``(N, N)`` similarity in ``[-1, 1]`` (e.g. :func:`~fldistill.cluster.cosine_matrix`);
        the distance is ``1 - S``.
    k : int
        Number of clusters, ``1 <= k <= N``.
    linkage : {"average", "complete", "single"}
        scikit-learn's linkage on the precomputed distance (deterministic: no seed).

    Returns
    -------
    np.ndarray
        int64 cluster label in ``[0, k)`` per client, shape ``(N,)``.
    """
    from sklearn.cluster import AgglomerativeClustering  # imported lazily: sklearn is slow to import

    X = _rows(S, int(k), what="clusters k")
    if X.shape[0] != X.shape[1]:
        raise ConfigError(f"similarity matrix must be square, got shape {X.shape}")
    n = X.shape[0]
    if int(k) == n:
        return np.arange(n, dtype=np.int64)
    if int(k) == 1:
        return np.zeros(n, dtype=np.int64)
    dist = np.clip(1.0 - (X + X.T) / 2.0, 0.0, None)
    np.fill_diagonal(dist, 0.0)
    model = AgglomerativeClustering(n_clusters=int(k), metric="precomputed", linkage=linkage)
    return model.fit_predict(dist).astype(np.int64)


def cluster_sampling(homog: np.ndarray | Sequence[int], rng: np.random.Generator) -> list[list[int]]:
    """Heterogeneous clusters by Algorithm 1 (ClusterSampling).

    Repeatedly draws one random client from every non-empty homogeneous
    cluster into a new heterogeneous cluster until all are empty.

    Parameters
    ----------
    homog : np.ndarray
        Homogeneous cluster label per client, shape ``(N,)``; client ids are
        the indices ``0..N-1``.  Labels need not be contiguous.
    rng : np.random.Generator
        Source of randomness; the same seed gives the same clusters.

    Returns
    -------
    list of list of int
        ``H`` heterogeneous clusters, ``H`` = size of the largest homogeneous
        cluster.  Each holds at most one client per homogeneous cluster,
        listed in increasing homogeneous label; every client appears once.
    """
    labels = _as_labels(homog)
    # Drawing without replacement one at a time is the same as shuffling each
    # homogeneous cluster once and dealing its members out in order.
    queues = [rng.permutation(np.flatnonzero(labels == lab)) for lab in np.unique(labels)]
    n_hetero = max(len(q) for q in queues)
    return [[int(q[h]) for q in queues if h < len(q)] for h in range(n_hetero)]


def choose_heads(hetero: Sequence[Sequence[int]], rng: np.random.Generator) -> list[int]:
    """One uniformly random cluster head per heterogeneous cluster.

    Parameters
    ----------
    hetero : list of list of int
        Heterogeneous clusters, e.g. from :func:`cluster_sampling`.
    rng : np.random.Generator
        Source of randomness.

    Returns
    -------
    list of int
        ``heads[h]`` is a member of ``hetero[h]``.
    """
    heads = []
    for h, members in enumerate(hetero):
        if len(members) == 0:
            raise ConfigError(f"heterogeneous cluster {h} is empty; every cluster needs a head")
        heads.append(int(members[int(rng.integers(len(members)))]))
    return heads


def labels_from_clusters(clusters: Sequence[Sequence[int]], n: int) -> np.ndarray:
    """The cluster index of each of ``n`` clients, from lists of member ids (int64, shape ``(n,)``).

    Raises
    ------
    ConfigError
        If a client is in no cluster or in two.
    """
    out = np.full(n, -1, dtype=np.int64)
    for k, members in enumerate(clusters):
        m = np.asarray(members, dtype=np.int64)
        if (out[m] != -1).any():
            raise ConfigError(f"clients {sorted(m[out[m] != -1].tolist())[:5]} are in two clusters")
        out[m] = k
    if (out == -1).any():
        raise ConfigError(f"clients {np.flatnonzero(out == -1).tolist()[:5]} are in no cluster")
    return out
