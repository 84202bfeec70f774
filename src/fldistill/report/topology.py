"""The two-layer topology plot of a clustered federation (HFLDD's Fig. 4)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fldistill.cluster._labels import _as_labels, _check_heads


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
    _check_heads(hetero, heads)
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
    edge_kw: dict[str, Any] = dict(color="0.6", linewidth=0.6, zorder=1)
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
        blob_members = np.flatnonzero(labels == u)
        ang = 2 * math.pi * idx / len(uniq)
        cx, cy = (3.0 * math.cos(ang), 3.0 * math.sin(ang)) if len(uniq) > 1 else (0.0, 0.0)
        jj = np.arange(len(blob_members))
        rad = blob * np.sqrt((jj + 0.5) / len(blob_members))  # sunflower packing, deterministic
        inset.scatter(cx + rad * np.cos(jj * golden), cy + rad * np.sin(jj * golden),
                      s=6, color=colour_of[u], edgecolors="none")
    inset.set_xlim(-4.2, 4.2)
    inset.set_ylim(-4.2, 4.2)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
