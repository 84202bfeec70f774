"""Learning curves with bands over seeds: mean ± std of a metric per round, one panel per setting.

Reads a suite's output (``OUT/<setting>/<label>-s<seed>/metrics.jsonl``) and writes
``OUT/curves_<metric>.png``. Usage::

    python benchmarks/seed_curves.py benchmarks/results/mnist1d-disue --metric accuracy
    python benchmarks/seed_curves.py benchmarks/results/mnist1d-disue --metric personalized_accuracy
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np


def seeded_runs(setting: Path) -> dict[str, dict[int, Path]]:
    """The finished runs of a setting folder, per label and seed (folders ``<label>-s<seed>``)."""
    out: dict[str, dict[int, Path]] = {}
    for d in sorted(setting.iterdir()):
        m = re.match(r"(.+)-s(\d+)$", d.name)
        if m and (d / "summary.json").exists():
            out.setdefault(m.group(1), {})[int(m.group(2))] = d
    return out


def curves(setting: Path, metric: str) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per label: rounds, mean and std over seeds of ``metric`` (rounds every seed logged)."""
    runs: dict[str, list[dict[int, float]]] = {}
    for label, by_seed in seeded_runs(setting).items():
        for d in by_seed.values():
            recs = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
            pts = {int(r["round"]): float(r[metric]) for r in recs if metric in r and r["round"] >= 1}
            if pts:
                runs.setdefault(label, []).append(pts)
    out = {}
    for label, seeds in runs.items():
        rounds = sorted(set.intersection(*(set(p) for p in seeds)))
        vals = np.array([[p[r] for r in rounds] for p in seeds])
        out[label] = (np.array(rounds), vals.mean(0), vals.std(0, ddof=1) if len(seeds) > 1 else np.zeros(len(rounds)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--metric", default="accuracy")
    ap.add_argument("--only", help="comma-separated labels to draw (default: all)")
    a = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted(p for p in a.out.iterdir() if p.is_dir())
    fig, axes = plt.subplots(1, len(settings), figsize=(5.5 * len(settings), 4), squeeze=False)
    keep = set(a.only.split(",")) if a.only else None
    for ax, s in zip(axes[0], settings):
        for label, (r, m, sd) in sorted(curves(s, a.metric).items()):
            if keep and label not in keep:
                continue
            (line,) = ax.plot(r, m, label=label, lw=1.2)
            ax.fill_between(r, m - sd, m + sd, color=line.get_color(), alpha=0.15)
        ax.set_title(s.name)
        ax.set_xlabel("round")
        ax.set_ylabel(f"{a.metric} (mean ± std over seeds)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = a.out / f"curves_{a.metric}.png"
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
