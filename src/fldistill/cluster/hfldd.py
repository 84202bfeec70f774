"""Client clustering of HFLDD (paper section IV.B), as pure functions.

Pipeline: soft labels ``S_i`` of every client on a public set -> pairwise KL
matrix ``M`` (Eq. 4) -> K-Means on the rows of ``M`` (homogeneous clusters)
-> Algorithm 1 ``ClusterSampling`` (heterogeneous clusters) -> one random
head per heterogeneous cluster.  Nothing here knows about models or engines.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from fldistill.errors import ConfigError, DataError

__all__ = [
    "kl_matrix",
    "kl_matrix_reference",
    "kmeans_rows",
    "cluster_sampling",
    "choose_heads",
    "purity",
    "label_coverage",
    "plot_topology",
    "save_clustering",
    "load_clustering",
]

_FORMAT = "fldistill.clustering/1"


# --------------------------------------------------------------------------- KL matrix


def _check_soft(soft: torch.Tensor | np.ndarray) -> torch.Tensor:
    soft = torch.as_tensor(soft).detach().cpu()
    if soft.dim() != 3:
        raise ConfigError(
            f"soft labels must have shape (N clients, G samples, C classes), got {tuple(soft.shape)}"
        )
    if min(soft.shape) == 0:
        raise ConfigError(f"soft labels must be non-empty, got shape {tuple(soft.shape)}")
    if not soft.is_floating_point():
        soft = soft.to(torch.float64)
    if not bool(torch.isfinite(soft).all()):
        raise ConfigError("soft labels contain NaN or inf; check the clients' local models")
    return soft


def kl_matrix(
    soft: torch.Tensor | np.ndarray,
    eps: float = 1e-12,
    max_block_bytes: int = 256 * 2**20,
) -> torch.Tensor:
    """Pairwise mean KL divergence between the clients' soft labels (Eq. 4).

    Parameters
    ----------
    soft : torch.Tensor or np.ndarray
        Shape ``(N, G, C)``: softmax outputs of ``N`` client models on the same
        ``G`` public samples over ``C`` classes.
    eps : float
        Probabilities are clamped to ``[eps, 1]`` before use, so a hard zero
        does not make the divergence infinite.
    max_block_bytes : int
        Size of one float64 block of flattened rows; rows are processed in
        chunks that fit, so peak extra memory is about three blocks plus the
        ``(N, N)`` result whatever ``N`` is.

    Returns
    -------
    torch.Tensor
        float64, shape ``(N, N)``, ``M[i, j] = KL(S_i || S_j)
        = (1/G) sum_k sum_c S_ik^c log(S_ik^c / S_jk^c)``.  Not symmetric;
        the diagonal is exactly zero and entries are clamped at zero.

    Notes
    -----
    Expanding the log ratio gives
    ``M_ij = (1/G) [ sum S_i log S_i - <S_i, log S_j> ]``, so the whole matrix
    is one row-norm term minus one matmul of the flattened ``(N, G*C)``
    tensors: O(N^2 G C) flops in BLAS instead of a Python double loop.
    """
    soft = _check_soft(soft)
    n, g, c = soft.shape
    flat = soft.reshape(n, g * c)
    d = g * c
    # float64: the result is a difference of two large sums (up to G*log(1/eps)),
    # float32 would cancel away the small divergences between similar clients.
    rows = max(1, int(max_block_bytes // (8 * d)))

    def block(lo: int) -> torch.Tensor:
        return flat[lo : lo + rows].to(torch.float64).clamp_(eps, 1.0)

    out = torch.empty((n, n), dtype=torch.float64)
    for ilo in range(0, n, rows):
        p = block(ilo)
        log_p = p.log()
        neg_entropy = torch.linalg.vecdot(p, log_p)
        for jlo in range(0, n, rows):
            # The diagonal block reuses log_p; with N*G*C*8 <= max_block_bytes
            # there is a single block and nothing is converted twice.
            log_q = log_p if jlo == ilo else block(jlo).log_()
            out[ilo : ilo + rows, jlo : jlo + rows] = neg_entropy[:, None] - p @ log_q.T
    out /= g
    # Clamping at eps leaves rows summing to slightly more than 1, and the
    # subtraction leaves rounding residue: neither may produce KL < 0.
    out.clamp_(min=0.0)
    out.fill_diagonal_(0.0)
    return out


def kl_matrix_reference(soft: torch.Tensor | np.ndarray, eps: float = 1e-12) -> torch.Tensor:
    """Eq. 4 by a plain double loop over client pairs; slow, for tests only.

    Parameters
    ----------
    soft : torch.Tensor or np.ndarray
        Shape ``(N, G, C)`` soft labels.
    eps : float
        Same clamping as :func:`kl_matrix`.

    Returns
    -------
    torch.Tensor
        float64, shape ``(N, N)``.
    """
    s = _check_soft(soft).to(torch.float64).clamp(eps, 1.0)
    n, g, _ = s.shape
    out = torch.zeros((n, n), dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            out[i, j] = (s[i] * (s[i] / s[j]).log()).sum() / g
    return out


# --------------------------------------------------------------------------- clustering


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

    if isinstance(M, torch.Tensor):
        M = M.detach().cpu().numpy()
    X = np.asarray(M, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ConfigError(f"similarity matrix must be 2-D with at least one row, got shape {X.shape}")
    n = X.shape[0]
    if not 1 <= int(k) <= n:
        raise ConfigError(
            f"number of homogeneous clusters K={k} must be between 1 and the number of clients N={n}"
        )
    if not np.isfinite(X).all():
        raise ConfigError("similarity matrix contains NaN or inf; check the soft labels")
    km = KMeans(n_clusters=int(k), n_init=10, random_state=int(seed))
    return km.fit_predict(X).astype(np.int64)


def _as_labels(homog: np.ndarray | Sequence[int]) -> np.ndarray:
    labels = np.asarray(homog)
    if labels.ndim != 1 or labels.size == 0:
        raise ConfigError(f"homogeneous labels must be a non-empty 1-D array, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(f"homogeneous labels must be integers, got dtype {labels.dtype}")
    return labels.astype(np.int64)


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


# --------------------------------------------------------------------------- plotting


def _colours(k: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    if k <= 10:
        cmap = colormaps["tab10"]
        return [cmap(i) for i in range(k)]
    if k <= 20:
        cmap = colormaps["tab20"]
        return [cmap(i) for i in range(k)]
    cmap = colormaps["hsv"]
    return [cmap(i / k) for i in range(k)]


def plot_topology(
    path: Path | str,
    hetero: Sequence[Sequence[int]],
    heads: Sequence[int],
    homog: np.ndarray | Sequence[int],
    title: str = "",
) -> Path:
    """Draw the two-layer topology like the paper's Fig. 4.

    The server sits in the centre, heads on a ring around it (edges to the
    server), members around their head (edges to the head).  Every client is
    coloured by its homogeneous cluster; an inset in the bottom-right corner
    shows the homogeneous clusters themselves.  The layout is deterministic.

    Parameters
    ----------
    path : Path
        Output PNG file; parent folders are created.
    hetero, heads : list
        Heterogeneous clusters and their heads.
    homog : np.ndarray
        Homogeneous cluster label per client.
    title : str
        Figure title.

    Returns
    -------
    Path
        ``path``.
    """
    # Figure without pyplot: no global backend state, always the Agg renderer.
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    labels = _as_labels(homog)
    if len(heads) != len(hetero):
        raise ConfigError(f"{len(hetero)} heterogeneous clusters but {len(heads)} heads")
    uniq = [int(u) for u in np.unique(labels)]
    colour_of = dict(zip(uniq, _colours(len(uniq))))
    n_het = max(1, len(hetero))
    largest = max((len(m) for m in hetero), default=1)

    r_member = 1.0
    # Ring big enough that neighbouring heads' member circles do not overlap.
    r_head = 3.0 if n_het == 1 else max(3.0, 1.25 * r_member / math.sin(math.pi / n_het))
    node = float(np.clip(3000.0 / max(len(labels), 1), 12.0, 120.0))

    fig = Figure(figsize=(10, 8), dpi=120)
    ax = fig.add_axes((0.01, 0.02, 0.76, 0.9))
    ax.set_aspect("equal")
    ax.axis("off")
    edge_kw = dict(color="0.6", linewidth=0.6, zorder=1)
    for h, (members, head) in enumerate(zip(hetero, heads)):
        theta = 2 * math.pi * h / n_het
        hx, hy = r_head * math.cos(theta), r_head * math.sin(theta)
        ax.plot([0, hx], [0, hy], color="0.3", linewidth=1.0, zorder=1)
        others = [int(m) for m in members if int(m) != int(head)]
        for j, m in enumerate(others):
            # Members evenly on a circle around the head, offset so none sits
            # on the head-server edge (the inward direction theta + pi).
            phi = theta + math.pi + 2 * math.pi * (j + 0.5) / len(others)
            rr = r_member * (0.6 + 0.4 * (len(others) / max(largest - 1, 1)))
            mx, my = hx + rr * math.cos(phi), hy + rr * math.sin(phi)
            ax.plot([hx, mx], [hy, my], **edge_kw)
            ax.scatter([mx], [my], s=node, color=colour_of[int(labels[m])], edgecolors="none", zorder=2)
        ax.scatter(
            [hx], [hy], s=node * 1.8, color=colour_of[int(labels[int(head)])],
            edgecolors="black", linewidths=1.0, zorder=3,
        )
    ax.scatter([0], [0], s=400, marker="s", color="black", zorder=4)
    ax.annotate("server", (0, 0), xytext=(0, -18), textcoords="offset points", ha="center",
                fontsize=9, bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none"), zorder=5)
    lim = r_head + 1.6 * r_member
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    if title:
        fig.suptitle(title)

    handles = [
        Line2D([], [], marker="o", linestyle="", color=colour_of[u], label=f"homog. {u}")
        for u in uniq[:20]
    ]
    handles.append(
        Line2D([], [], marker="o", linestyle="", color="white", markeredgecolor="black", label="head")
    )
    fig.legend(handles=handles, loc="upper right", bbox_to_anchor=(0.99, 0.93), fontsize=8,
               frameon=False, ncol=1 if len(handles) <= 12 else 2)

    # Inset: homogeneous clusters, each a blob of its members at a ring position.
    inset = fig.add_axes((0.77, 0.04, 0.22, 0.275))
    inset.set_aspect("equal")
    inset.set_xticks([])
    inset.set_yticks([])
    inset.set_title("homogeneous clusters", fontsize=7)
    golden = math.pi * (3 - math.sqrt(5))
    blob = 0.9 if len(uniq) < 3 else min(0.9, 0.8 * 3.0 * math.sin(math.pi / len(uniq)))
    for idx, u in enumerate(uniq):
        members = np.flatnonzero(labels == u)
        ang = 2 * math.pi * idx / len(uniq)
        cx, cy = (3.0 * math.cos(ang), 3.0 * math.sin(ang)) if len(uniq) > 1 else (0.0, 0.0)
        j = np.arange(len(members))
        rad = blob * np.sqrt((j + 0.5) / len(members))  # sunflower packing, deterministic
        inset.scatter(cx + rad * np.cos(j * golden), cy + rad * np.sin(j * golden),
                      s=6, color=colour_of[u], edgecolors="none")
    inset.set_xlim(-4.2, 4.2)
    inset.set_ylim(-4.2, 4.2)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


# --------------------------------------------------------------------------- persistence


def _plain(obj: Any) -> Any:
    """Convert NumPy/torch scalars and containers to JSON-native types."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj) if isinstance(obj, (set, frozenset)) else obj
        return [_plain(v) for v in items]
    if isinstance(obj, torch.Tensor):
        return _plain(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj)
    if obj is None or isinstance(obj, str):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a clustering file")


def save_clustering(
    path: Path | str,
    homog: np.ndarray | Sequence[int],
    hetero: Sequence[Sequence[int]],
    heads: Sequence[int],
    *,
    k: int | None = None,
    purity: float | None = None,
    coverage: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a clustering result as JSON (plain ints/floats only).

    Parameters
    ----------
    path : Path
        Output ``.json`` file; written atomically, parents created.
    homog, hetero, heads
        Homogeneous labels, heterogeneous clusters, heads.
    k : int, optional
        ``K`` of K-Means; defaults to the number of distinct homogeneous labels.
    purity : float, optional
        K-Means purity, if known.
    coverage : list of dict, optional
        Output of :func:`label_coverage`.
    extra : dict, optional
        Further JSON-able metadata (seed, dataset, ...).

    Returns
    -------
    Path
        ``path``.
    """
    labels = _as_labels(homog)
    if len(heads) != len(hetero):
        raise ConfigError(f"{len(hetero)} heterogeneous clusters but {len(heads)} heads")
    doc = {
        "format": _FORMAT,
        "k": int(k) if k is not None else int(np.unique(labels).size),
        "homogeneous": labels,
        "heterogeneous": [list(m) for m in hetero],
        "heads": list(heads),
        "purity": None if purity is None else float(purity),
        "coverage": coverage,
        "extra": extra or {},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_plain(doc), indent=1) + "\n")
    os.replace(tmp, path)  # never leave a half-written file behind
    return path


def load_clustering(path: Path | str) -> dict[str, Any]:
    """Read a file written by :func:`save_clustering`.

    Returns
    -------
    dict
        Keys ``format``, ``k``, ``homogeneous`` (list of int), ``heterogeneous``
        (list of list of int), ``heads``, ``purity``, ``coverage``, ``extra``.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"clustering file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise DataError(f"clustering file {path} is not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise DataError(f"{path} is not a fldistill clustering file (expected format {_FORMAT!r})")
    missing = {"k", "homogeneous", "heterogeneous", "heads"} - doc.keys()
    if missing:
        raise DataError(f"clustering file {path} lacks keys {sorted(missing)}")
    return doc
