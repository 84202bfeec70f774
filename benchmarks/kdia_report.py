"""Issue 5's comparison: KDIA's teacher and student against FedAvg and FedProx.

Reads the runs of ``python benchmarks/suite.py --suite kdia --rounds 200 --out OUT`` and
writes ``OUT/kdia_table.md`` (and prints it): final accuracy (mean of the last 10 rounds,
as methods.md §1.4 recommends), best accuracy, rounds to targets, and bits per round.

Targets per partition: 90% of FedAvg's best accuracy (the seed's "fewer rounds" claim),
plus fixed levels.

Usage::

    python benchmarks/kdia_report.py benchmarks/results/mnist1d-kdia
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

LEVELS = (0.3, 0.4, 0.5, 0.6, 0.7)


def curves(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Accuracy curves by model name (``teacher``/``student`` for KDIA, else the run's name)."""
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in recs if r["round"] >= 1]
    if "teacher_accuracy" in recs[0]:
        return {f"{run.name} {m}": [(r["round"], r[f"{m}_accuracy"]) for r in recs] for m in ("teacher", "student")}
    return {run.name: [(r["round"], r["accuracy"]) for r in recs]}


def first_round(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((t for t, a in curve if a >= target), None)


def main(out: Path) -> str:
    lines = []
    for pdir in sorted(p for p in out.iterdir() if p.is_dir()):
        runs = {d.name: d for d in sorted(pdir.iterdir()) if (d / "summary.json").exists() and d.name != "centralized"}
        if "fedavg" not in runs:
            continue
        cs: dict[str, list[tuple[int, float]]] = {}
        bits: dict[str, float] = {}
        for name, d in runs.items():
            s = json.loads((d / "summary.json").read_text())
            for label, c in curves(d).items():
                cs[label] = c
                bits[label] = s["total_bits"] / max(s["rounds"], 1)
        target = round(0.9 * max(a for _, a in cs["fedavg"]), 4)
        cen = pdir / "centralized" / "summary.json"
        cen_best = json.loads(cen.read_text())["best_accuracy"] if cen.exists() else None
        lines += [
            f"### {pdir.name} (centralized best {cen_best:.4f})" if cen_best else f"### {pdir.name}",
            "",
            f"| model | final (mean last 10) | best | rounds to {target} (0.9 x FedAvg best) | "
            + " | ".join(f"rounds to {x}" for x in LEVELS)
            + " | MB per round | vs FedAvg |",
            "|---|---|---|---|" + "---|" * len(LEVELS) + "---|---|",
        ]
        for label, c in cs.items():
            accs = [a for _, a in c]
            rt = first_round(c, target)
            row = [label, f"{sum(accs[-10:]) / len(accs[-10:]):.4f}", f"{max(accs):.4f} (r{c[accs.index(max(accs))][0]})",
                   str(rt) if rt else "not reached"]
            row += [str(first_round(c, x) or "-") for x in LEVELS]
            row += [f"{bits[label] / 8e6:.3f}", f"{bits[label] / bits['fedavg']:.2f}x"]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    text = "\n".join(lines)
    (out / "kdia_table.md").write_text(text + "\n")
    return text


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/mnist1d-kdia")))
