"""Learning curves with bands over seeds: mean ± std of a metric per round, one panel per setting.

Reads a suite's output (``OUT/<setting>/<label>-s<seed>/metrics.jsonl``) and writes
``OUT/curves_<metric>.png``; the curves are :func:`fldistill.report.seeds.draw_seed_curves`
(``fldistill compare`` draws the same bands for runs that differ only in seed). Usage::

    python benchmarks/seed_curves.py benchmarks/results/mnist1d-disue --metric accuracy
    python benchmarks/seed_curves.py benchmarks/results/mnist1d-disue --metric personalized_accuracy
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from fldistill.report.compare import load_run
from fldistill.report.seeds import SeedGroup, draw_seed_curves


def seeded_runs(setting: Path) -> dict[str, dict[int, Path]]:
    """The finished runs of a setting folder, per label and seed (folders ``<label>-s<seed>``)."""
    out: dict[str, dict[int, Path]] = {}
    for d in sorted(setting.iterdir()):
        m = re.match(r"(.+)-s(\d+)$", d.name)
        if m and (d / "summary.json").exists():
            out.setdefault(m.group(1), {})[int(m.group(2))] = d
    return out


def setting_groups(setting: Path, only: set[str] | None = None) -> list[SeedGroup]:
    """The setting's runs as seed groups labelled by their folder names (``disue-nogls``), sorted by label."""
    groups = []
    for label, by_seed in sorted(seeded_runs(setting).items()):
        if only is None or label in only:
            records = [load_run(by_seed[s]) for s in sorted(by_seed)]
            groups.append(SeedGroup(label=label, config=records[0].config, records=records, seeds=sorted(by_seed)))
    return groups


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--metric", default="accuracy")
    ap.add_argument("--only", help="comma-separated labels to draw (default: all)")
    a = ap.parse_args()
    from fldistill.report.plots import plt  # Agg backend, set there

    settings = sorted(p for p in a.out.iterdir() if p.is_dir())
    fig, axes = plt.subplots(1, len(settings), figsize=(5.5 * len(settings), 4), squeeze=False)
    only = set(a.only.split(",")) if a.only else None
    for ax, s in zip(axes[0], settings):
        draw_seed_curves(ax, setting_groups(s, only), a.metric, first_round=1)  # round 0 (initial model) left out
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
