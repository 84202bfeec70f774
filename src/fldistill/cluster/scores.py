"""Clustering quality against ground truth: purity, adjusted Rand index, label coverage."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from fldistill.cluster._labels import _as_labels
from fldistill.errors import ConfigError


def purity(pred: np.ndarray | Sequence[int], true_label_sets: Sequence[frozenset[int]]) -> float:
    """Purity of a clustering against the clients' true label sets.

    A client's true group is the set of classes it holds; two clients are in
    the same true group iff their sets are equal.

    Parameters
    ----------
    pred : np.ndarray
        Predicted cluster per client, shape ``(N,)``.
    true_label_sets : list of frozenset of int
        The classes of each client.

    Returns
    -------
    float
        ``(1/N) sum_clusters max_group |cluster ∩ group|``, in ``(0, 1]``.
    """
    pred = _as_labels(pred)
    if len(true_label_sets) != pred.size:
        raise ConfigError(
            f"purity needs one true label set per client: {pred.size} predictions, "
            f"{len(true_label_sets)} label sets"
        )
    groups = [frozenset(int(c) for c in s) for s in true_label_sets]
    total = 0
    for lab in np.unique(pred):
        counts = Counter(groups[i] for i in np.flatnonzero(pred == lab))
        total += max(counts.values())
    return total / pred.size


def adjusted_rand(pred: np.ndarray | Sequence[int], true: np.ndarray | Sequence[int]) -> float:
    """Adjusted Rand index of a clustering against true groups (1 = identical, ~0 = chance).

    Parameters
    ----------
    pred, true : array of int
        Predicted cluster and true group per client, shape ``(N,)``; label values need
        not match (the index is invariant to relabelling).
    """
    from sklearn.metrics import adjusted_rand_score  # imported lazily: sklearn is slow to import

    p, t = _as_labels(pred), _as_labels(true)
    if p.size != t.size:
        raise ConfigError(f"adjusted_rand needs one true group per client: {p.size} predictions, {t.size} groups")
    return float(adjusted_rand_score(t, p))


def label_coverage(
    hetero: Sequence[Sequence[int]],
    heads: Sequence[int],
    client_class_counts: np.ndarray,
) -> list[dict[str, Any]]:
    """Which classes each heterogeneous cluster's pooled data covers.

    Parameters
    ----------
    hetero : list of list of int
        Heterogeneous clusters.
    heads : list of int
        Head of each cluster.
    client_class_counts : np.ndarray
        Shape ``(N, n_classes)``: number of local samples of each class per client.

    Returns
    -------
    list of dict
        Per cluster: ``head``, ``members``, ``size``, ``n_classes_covered``
        (classes with at least one sample in the union of the members' data)
        and ``class_counts`` (per-class totals), all plain ints.
    """
    counts = np.asarray(client_class_counts)
    if counts.ndim != 2:
        raise ConfigError(
            f"client_class_counts must have shape (N clients, n classes), got {counts.shape}"
        )
    if len(heads) != len(hetero):
        raise ConfigError(f"{len(hetero)} heterogeneous clusters but {len(heads)} heads")
    out = []
    for members, head in zip(hetero, heads):
        members = [int(m) for m in members]
        if int(head) not in members:
            raise ConfigError(f"head {head} is not a member of its cluster {members}")
        pooled = counts[members].sum(axis=0)
        out.append(
            {
                "head": int(head),
                "members": members,
                "size": len(members),
                "n_classes_covered": int((pooled > 0).sum()),
                "class_counts": [int(v) for v in pooled],
            }
        )
    return out
