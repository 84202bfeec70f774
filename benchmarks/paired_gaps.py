"""Paired, per-seed accuracy gaps between one method and others in a seeded suite.

For every setting of ``OUT`` and every other label, the gap ``method - other`` of a summary
metric is computed seed by seed (same seed = same partition and client sampling), then
reported as mean ± std over seeds and the number of seeds where the method is ahead.
Usage::

    python benchmarks/paired_gaps.py benchmarks/results/mnist1d-disue --method disue
    python benchmarks/paired_gaps.py benchmarks/results/mnist1d-disue --method disue --metric final_personalized_accuracy
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from seed_curves import seeded_runs  # benchmarks/ is the script's folder, on sys.path


def summaries(setting: Path) -> dict[str, dict[int, dict]]:
    return {label: {seed: json.loads((d / "summary.json").read_text()) for seed, d in runs.items()}
            for label, runs in seeded_runs(setting).items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--method", default="disue")
    ap.add_argument("--metric", default="final_accuracy_mean5")
    a = ap.parse_args()
    print(f"| setting | {a.method} - other | {a.metric}: gap (points, mean ± std over seeds) | seeds ahead |")
    print("|---|---|---|---|")
    for s in sorted(p for p in a.out.iterdir() if p.is_dir()):
        runs = summaries(s)
        mine = runs.get(a.method, {})
        for label, other in sorted(runs.items()):
            seeds = sorted(set(mine) & set(other))
            gaps = [100 * (mine[k][a.metric] - other[k][a.metric]) for k in seeds
                    if mine[k].get(a.metric) is not None and other[k].get(a.metric) is not None]
            if label == a.method or not gaps:
                continue
            g = np.array(gaps)
            sd = f" ± {g.std(ddof=1):.2f}" if len(g) > 1 else ""
            print(f"| {s.name} | {label} | {g.mean():+.2f}{sd} | {(g > 0).sum()}/{len(g)} |")


if __name__ == "__main__":
    main()
