"""Plots of one run, of several runs overlaid, and of client label distributions."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # headless: before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import EngFormatter, FuncFormatter, MaxNLocator, NullFormatter  # noqa: E402

from fldistill.report.compare import metric_series as _series  # noqa: E402

if TYPE_CHECKING:
    from fldistill.report.compare import RunRecord

# Log-scale the bits axis when the positive values span more than this many decades.
LOG_DECADES = 2.0
DPI = 120


# Personalised accuracy (each client's model on its local test split) and its worst 10%:
# drawn as their own pair of curves, on the rounds that were evaluated.
PERSONAL = "personalized_accuracy"
PERSONAL_WORST = "personalized_accuracy_worst10"


def _extra_accuracy_keys(metrics: list[dict]) -> list[str]:
    """Numeric keys other than ``accuracy`` (and personalised accuracy) ending in ``accuracy``, first-seen order."""
    keys: list[str] = []
    for row in metrics:
        for k, v in row.items():
            if k not in ("accuracy", PERSONAL) and k.endswith("accuracy") and isinstance(v, (int, float)) and k not in keys:
                keys.append(k)
    return keys


def _plot_personal(ax: plt.Axes, metrics: list[dict], color: str | None = None, label: str = "") -> None:
    """Personalised accuracy (solid) and its worst 10% of clients (dashed), when the run logged them."""
    xs, ys = _series(metrics, PERSONAL)
    if not xs:
        return
    pre = f"{label} " if label else ""
    (line,) = ax.plot(xs, ys, color=color, marker="s", ms=3, label=f"{pre}personalised accuracy")
    wx, wy = _series(metrics, PERSONAL_WORST)
    if wx:
        ax.plot(wx, wy, color=line.get_color(), ls="--", lw=1, label=f"{pre}personalised, worst 10% of clients")


def _bits_series(metrics: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(cumulative total bits, accuracy) per metrics row."""
    bits = [
        float(m["bits_total"]) if m.get("bits_total") is not None else float(sum((m.get("bits") or {}).values()))
        for m in metrics
    ]
    acc = [float(m["accuracy"]) for m in metrics]
    return np.asarray(bits), np.asarray(acc)


def _use_log(all_bits: list[np.ndarray]) -> bool:
    """Whether the positive bit counts span more than LOG_DECADES decades."""
    pos = np.concatenate([b[b > 0] for b in all_bits]) if all_bits else np.array([])
    return pos.size > 0 and math.log10(pos.max() / pos.min()) > LOG_DECADES


def _setup_bits_axis(ax: plt.Axes, log: bool) -> None:
    """Label the bits axis, log-scale it if asked, add a secondary MB axis on top."""
    if log:
        ax.set_xscale("log")
    # Plain-text tick labels ("10 Mb"): cheaper than mathtext and easier to read.
    ax.xaxis.set_major_formatter(EngFormatter(unit="b", sep=" "))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("cumulative communication (bits, all hops)")
    sec = ax.secondary_xaxis(
        "top",
        functions=(lambda b: np.asarray(b) / 8e6, lambda mb: np.asarray(mb) * 8e6),
    )
    sec.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    sec.xaxis.set_minor_formatter(NullFormatter())
    sec.set_xlabel("MB (1 MB = 8e6 bits)")


def _save(fig: plt.Figure, path: Path) -> Path:
    """Save and close a figure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _title(rec: RunRecord) -> str:
    """Plot title of a run: label, dataset and status when incomplete."""
    s = rec.summary
    t = f"{rec.label} on {s.get('dataset', '?')}"
    return t + " (incomplete)" if s.get("status") == "incomplete" else t


def plot_run(run_dir: Path) -> list[Path]:
    """Plot one run's learning curve and accuracy versus communication.

    Parameters
    ----------
    run_dir : Path
        Run folder (complete or interrupted).

    Returns
    -------
    list of Path
        ``plots/learning_curve.png`` and ``plots/accuracy_vs_bits.png`` in the run folder.

    Raises
    ------
    DataError
        The run folder cannot be loaded (see :func:`fldistill.report.compare.load_run`).
    """
    from fldistill.report.compare import load_run

    rec = load_run(Path(run_dir))
    plots = rec.run_dir / "plots"
    m = rec.metrics

    # Learning curve: accuracy (+ extra *accuracy keys) and loss versus round.
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    ax_acc.plot(*_series(m, "accuracy"), marker="o", ms=3, label="accuracy")
    for key in _extra_accuracy_keys(m):
        ax_acc.plot(*_series(m, key), marker=".", ms=3, ls="--", label=key)
    _plot_personal(ax_acc, m)
    ax_acc.set_xlabel("round")
    ax_acc.set_ylabel("test accuracy")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)
    ax_loss.plot(*_series(m, "loss"), color="tab:red", marker="o", ms=3)
    ax_loss.set_xlabel("round")
    ax_loss.set_ylabel("test loss")
    ax_loss.grid(alpha=0.3)
    for ax in (ax_acc, ax_loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(_title(rec))
    paths = [_save(fig, plots / "learning_curve.png")]

    # Accuracy versus cumulative communication.
    bits, acc = _bits_series(m)
    log = _use_log([bits])
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    keep = bits > 0 if log else np.ones_like(bits, dtype=bool)  # 0 bits cannot sit on a log axis
    if bits.max(initial=0) > 0:
        ax.plot(bits[keep], acc[keep], marker="o", ms=3)
        _setup_bits_axis(ax, log)
    else:
        ax.plot(bits, acc, marker="o", ms=3)
        ax.set_xlabel("cumulative communication (bits)")
        ax.text(0.5, 0.05, "no communication recorded", transform=ax.transAxes, ha="center")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.set_title(_title(rec))
    paths.append(_save(fig, plots / "accuracy_vs_bits.png"))
    return paths


def plot_overlay(records: list[RunRecord], out_dir: Path, target: float | None = None) -> list[Path]:
    """Overlay several runs: accuracy versus round and versus cumulative bits.

    Runs that communicate nothing (e.g. centralized) appear on the bits plot as a
    horizontal line at their best accuracy. Runs that logged personalised accuracy add it
    to the accuracy-versus-round plot in their colour (and its worst 10% dashed).

    Parameters
    ----------
    records : list of RunRecord
        Loaded runs (labels already unique).
    out_dir : Path
        Folder for ``accuracy_vs_round.png`` and ``accuracy_vs_bits.png``.
    target : float, optional
        Target accuracy, drawn as a dotted horizontal line.

    Returns
    -------
    list of Path
        The two PNG files.
    """
    out_dir = Path(out_dir)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, rec in enumerate(records):
        ax.plot(*_series(rec.metrics, "accuracy"), label=rec.label, color=colors[i % len(colors)])
        _plot_personal(ax, rec.metrics, color=colors[i % len(colors)], label=rec.label)
    if target is not None:
        ax.axhline(target, color="gray", ls=":", lw=1, label=f"target {target:.3f}")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paths = [_save(fig, out_dir / "accuracy_vs_round.png")]

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    series = [_bits_series(rec.metrics) for rec in records]
    log = _use_log([b for b, _ in series])
    any_comm = False
    for i, (rec, (bits, acc)) in enumerate(zip(records, series)):
        color = colors[i % len(colors)]
        if bits.max(initial=0) <= 0:  # no communication: reference line
            ax.axhline(float(np.max(acc)), color=color, ls="--", lw=1, label=f"{rec.label} (no communication)")
            continue
        keep = bits > 0 if log else np.ones_like(bits, dtype=bool)
        ax.plot(bits[keep], acc[keep], label=rec.label, color=color)
        any_comm = True
    if target is not None:
        ax.axhline(target, color="gray", ls=":", lw=1, label=f"target {target:.3f}")
    if any_comm:
        _setup_bits_axis(ax, log)
    else:
        ax.set_xlabel("cumulative communication (bits)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paths.append(_save(fig, out_dir / "accuracy_vs_bits.png"))
    return paths


def plot_label_heatmap(counts: np.ndarray, path: Path, title: str = "") -> Path:
    """Heatmap of per-client label counts.

    Parameters
    ----------
    counts : np.ndarray
        Sample counts, shape ``(n_clients, n_classes)``. With many clients (more than 40
        and more clients than classes) the map is transposed: classes on the y axis,
        clients along x. Cells carry their counts when the map is small (at most 20 x 20).
    path : Path
        PNG file to write (parent folders are created).
    title : str
        Plot title.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        ``counts`` is not two-dimensional.
    """
    counts = np.asarray(counts)
    if counts.ndim != 2:
        raise ValueError(f"counts must have shape (n_clients, n_classes), got {counts.shape}")
    n_clients, n_classes = counts.shape
    transpose = n_clients > 40 and n_clients > n_classes
    data = counts.T if transpose else counts
    rows, cols = data.shape

    # Size the figure to the map, within bounds.
    width = float(np.clip(1.5 + 0.35 * cols, 5.0, 16.0))
    height = float(np.clip(1.2 + 0.35 * rows, 3.0, 10.0))
    fig, ax = plt.subplots(figsize=(width, height))
    im = ax.imshow(data, aspect="auto", interpolation="nearest", cmap="viridis")
    cbar = fig.colorbar(im, ax=ax)
    cbar.set_label("samples")
    ax.set_xlabel("client" if transpose else "class")
    ax.set_ylabel("class" if transpose else "client")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(integer=True, nbins=20))

    if rows <= 20 and cols <= 20:  # annotate small maps
        vmax = float(data.max()) if data.size else 0.0
        for r in range(rows):
            for c in range(cols):
                v = data[r, c]
                ax.text(
                    c, r, f"{v:g}", ha="center", va="center", fontsize=7,
                    color="black" if vmax and v > 0.6 * vmax else "white",
                )
    if title:
        ax.set_title(title)
    return _save(fig, Path(path))
