"""Run a grid of fldistill experiments in parallel worker processes, then compare them.

Each run goes to ``OUT/<partition>/<label>``; finished runs (with ``summary.json``) are
skipped and interrupted ones resumed, so the suite can be re-run safely. Workers use one
thread each so that two of them share a 2-core machine fairly.

Usage::

    python benchmarks/suite.py --suite foundation --out benchmarks/results/mnist1d
    python benchmarks/suite.py --suite paper --out benchmarks/results/mnist1d
    python benchmarks/suite.py --suite kdia --rounds 200 --out benchmarks/results/mnist1d-kdia
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

_KDIA_LOCAL = ["participation=0.1", "local.lr=0.01", "local.amount=10", "local.batch_size=64", "local.weight_decay=1e-5"]
# label -> (method, extra --set overrides)
_ALL = ["centralized", "fedavg", "fedprox", "fedseq", "dynafed", "scaffold", "moon", "hfldd"]
SUITES: dict[str, dict[str, list[tuple[str, str, list[str]]]]] = {
    # issues 2 and 3: the foundation's baselines and HFLDD on mnist1d, N=100, T=100
    "foundation": {
        "classes:1": [
            ("centralized", "centralized", []),
            ("fedavg", "fedavg", []),
            ("fedprox", "fedprox", []),
            ("hfldd", "hfldd", []),
            ("hfldd-none", "hfldd", ["params.distiller=none"]),
        ],
        "classes:2": [("fedavg", "fedavg", []), ("hfldd", "hfldd", [])],
        "classes:10": [("fedavg", "fedavg", []), ("hfldd", "hfldd", [])],
    },
    # issue 4: the HFLDD paper's comparison (Fig. 3, Tables II-IV) with SCAFFOLD and MOON
    "paper": {
        p: [(m, m, []) for m in _ALL] + ([("hfldd-none", "hfldd", ["params.distiller=none"])] if p == "classes:1" else [])
        for p in ("classes:1", "classes:2", "classes:10")
    },
    # issue 5: KDIA against FedAvg and FedProx, 10% participation, Dirichlet label skew, T=200,
    # all three with the local settings of KDIA's code (lr 0.01, 10 epochs, batch 64, weight
    # decay 1e-5, momentum 0.9): FedAvg's mnist1d default (lr 0.15) diverges at 10% of clients
    # under Dirichlet(0.1). KDIA first: it is the longest run, so workers start on it.
    "kdia": {
        p: [
            ("kdia", "kdia", [*_KDIA_LOCAL, "params.gen_epochs=2"]),  # CPU preset: 2x100 generator steps
            ("fedavg", "fedavg", _KDIA_LOCAL),
            ("fedprox", "fedprox", _KDIA_LOCAL),
            ("centralized", "centralized", []),
        ]
        for p in ("dirichlet:0.1", "dirichlet:0.5")
    },
}


def run_one(out: Path, partition: str, label: str, method: str, sets: list[str], rounds: int, clients: int, dataset: str) -> str:
    d = out / partition.replace(":", "") / label
    if (d / "summary.json").exists():
        return f"{label} {partition}: done already"
    cmd = [sys.executable, "-m", "fldistill.cli", "run", "--method", method, "--dataset", dataset, "--partition", partition,
           "--clients", str(clients), "--rounds", str(rounds), "--out", str(d), "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    if (d / "metrics.jsonl").exists():
        cmd.append("--resume")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t = time.time()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    return f"{label} {partition}: rc={r.returncode} {time.time() - t:.0f}s {r.stdout.strip()[-300:]} {r.stderr.strip()[-300:]}"


def write_table(out: Path) -> Path:
    """One Markdown table over all partitions: the paper's Fig. 3 / Tables II-IV in one view.

    Target accuracy per partition: 80% of that partition's centralized best accuracy.
    """
    from fldistill.report.compare import bits_to_target, format_bits, load_run, rounds_to_target

    lines = ["| partition | method | final acc (mean last 5) | best acc | rounds to target | bits to target | total sent | s/round |",
             "|---|---|---|---|---|---|---|---|"]
    def natural(p: Path) -> tuple[str, int]:
        digits = "".join(ch for ch in p.name if ch.isdigit())
        return p.name.rstrip("0123456789"), int(digits or 0)

    for pdir in sorted((p for p in out.iterdir() if p.is_dir()), key=natural):
        runs = {d.name: load_run(d) for d in sorted(pdir.iterdir()) if (d / "summary.json").exists()}
        if not runs:
            continue
        cen = runs.get("centralized")
        target = round(0.8 * cen.summary["best_accuracy"], 4) if cen else None
        for name, r in runs.items():
            s = r.summary
            rt = rounds_to_target(r.metrics, target) if target else None
            bt = bits_to_target(r.metrics, target) if target else None
            lines.append(
                f"| {s.get('partition', pdir.name)} | {name} | {s['final_accuracy_mean5']:.4f} | {s['best_accuracy']:.4f} | "
                f"{rt if rt is not None else 'not reached'} | {format_bits(bt) if bt is not None else '-'} | "
                f"{format_bits(s['total_bits'])} | {s.get('seconds_per_round', float('nan')):.2f} |"
            )
        lines.append(f"| {pdir.name} | target | {target} (0.8 x centralized best) | | | | | |" if target else "")
    path = out / "results_table.md"
    path.write_text("\n".join(x for x in lines if x) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", default="foundation", choices=sorted(SUITES))
    ap.add_argument("--out", default="benchmarks/results/mnist1d")
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--dataset", default="mnist1d")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", help="comma-separated partitions to run")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(p, *spec) for p, specs in SUITES[a.suite].items() for spec in specs if not a.only or p in a.only.split(",")]
    # longest first: the position of a run in its partition's list is its expected rank in cost
    jobs.sort(key=lambda j: [s[0] for s in SUITES[a.suite][j[0]]].index(j[1]))
    with ThreadPoolExecutor(a.workers) as ex:
        for msg in ex.map(lambda j: run_one(out, j[0], j[1], j[2], j[3], a.rounds, a.clients, a.dataset), jobs):
            print(msg, flush=True)
    import torch

    env = {"command": " ".join([sys.executable, *sys.argv]), "machine": platform.platform(), "cpus": os.cpu_count(),
           "python": platform.python_version(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    (out / "environment.json").write_text(json.dumps(env, indent=2) + "\n")
    for p in SUITES[a.suite]:
        dirs = [str(out / p.replace(":", "") / lab) for lab, _, _ in SUITES[a.suite][p] if (out / p.replace(":", "") / lab / "summary.json").exists()]
        if dirs:
            subprocess.run([sys.executable, "-m", "fldistill.cli", "compare", *dirs, "--out", str(out / p.replace(":", "") / "compare")])
    print(write_table(out).read_text())


if __name__ == "__main__":
    main()
