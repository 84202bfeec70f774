"""Run a grid of fldistill experiments in parallel worker processes, then compare them.

Each run goes to ``OUT/<partition>/<label>``; finished runs (with ``summary.json``) are
skipped and interrupted ones resumed, so the suite can be re-run safely. Workers use one
thread each so that two of them share a 2-core machine fairly.

Usage::

    python benchmarks/suite.py --suite foundation --out benchmarks/results/mnist1d
    python benchmarks/suite.py --suite paper --out benchmarks/results/mnist1d
    python benchmarks/suite.py --suite kdia --rounds 200 --out benchmarks/results/mnist1d-kdia
    python benchmarks/suite.py --suite clustered --out benchmarks/results/mnist1d-clustered
    python benchmarks/suite.py --suite cflhkd --seeds 0,1,2 --out benchmarks/results/mnist1d-cflhkd
    python benchmarks/suite.py --suite disue --rounds 200 --seeds 0,1,2 --out benchmarks/results/mnist1d-disue
    python benchmarks/suite.py --suite disue-sequential --rounds 200 --seeds 0 --out benchmarks/results/mnist1d-disue-sequential

A setting is a partition, optionally with ground-truth groups after a ``|``
(``iid|4:labelswap``). With ``--seeds`` every run is repeated per seed (``<label>-s<seed>``)
and ``clustered_table.md`` reports mean ± std over the seeds.
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
# issue 15: one local setting for every method of the DisUE comparison (KDIA's, plus the unit
# and momentum spelled out: FedGen's own defaults are its code's 20 plain-SGD steps)
_DISUE_LOCAL = [*_KDIA_LOCAL, "local.unit=epochs", "local.momentum=0.9"]
# CPU preset: one generator step on the sum over teachers per iteration (params.update=joint,
# 3.2x (DisUE) and 4.0x (FedFTG) less server time than the code's one step per teacher, same
# accuracy within noise: the disue-sequential suite, docs/results.md)
_DISUE_GEN = ["params.update=joint"]
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
    # issue 13: clustered FL on concept-shift groups and on label skew, N=100, T=100
    "clustered": {
        p: [
            ("ifca", "ifca", []),
            ("ifca-search", "ifca", ["params.init=search"]),
            ("cfl", "cfl", []),
            ("local", "local", []),
            ("fedavg", "fedavg", []),
            ("fedprox", "fedprox", []),
        ]
        for p in ("iid|4:labelswap", "iid|4:signal", "dirichlet:0.1")
    },
    # issue 14: reconstructed CFLHKD (variants A and B) against the clustered and global baselines
    "cflhkd": {
        p: [
            ("cflhkd-b", "cflhkd", ["params.variant=b"]),
            ("cflhkd-a", "cflhkd", []),
            ("ifca", "ifca", []),
            ("cfl", "cfl", []),
            ("local", "local", []),
            ("fedavg", "fedavg", []),
            ("fedprox", "fedprox", []),
        ]
        for p in ("dirichlet:0.1", "iid|4:labelswap")
    },
    # issue 15: reconstructed DisUE, its ablations, the generator-based and clustered baselines;
    # N=100, 10% participation, any-alpha Dirichlet, T=200 (run with --rounds 200 --seeds 0,1,2)
    "disue": {
        p: [
            ("disue", "disue", [*_DISUE_LOCAL, *_DISUE_GEN]),
            ("disue-nogls", "disue", [*_DISUE_LOCAL, *_DISUE_GEN, "params.gls=uniform"]),
            ("disue-nogwf", "disue", [*_DISUE_LOCAL, *_DISUE_GEN, "params.gwf=uniform"]),
            ("fedgen", "fedgen", _DISUE_LOCAL),
            ("fedftg", "fedftg", [*_DISUE_LOCAL, *_DISUE_GEN]),
            ("cflhkd", "cflhkd", _DISUE_LOCAL),
            ("ifca", "ifca", _DISUE_LOCAL),
            ("cfl", "cfl", _DISUE_LOCAL),
            ("fedprox", "fedprox", _DISUE_LOCAL),
            ("fedavg", "fedavg", _DISUE_LOCAL),
        ]
        for p in ("dirichlet-client:0.01", "dirichlet-client:0.1", "dirichlet-client:0.5")
    },
    # issue 15: the code's generator update (one step per teacher) against the CPU preset above
    "disue-sequential": {
        "dirichlet-client:0.1": [
            ("fedftg-sequential", "fedftg", _DISUE_LOCAL),
            ("disue-sequential", "disue", _DISUE_LOCAL),
        ]
    },
    # issue 14: CFLHKD's edge rounds per cloud round and number of clusters (defaults: R_e=2, K=4),
    # and edges restarting from the global model every cloud round (run with --rounds 50)
    "cflhkd-sweep": {
        "iid|4:labelswap": [
            ("cflhkd-re5", "cflhkd", ["params.edge_rounds=5"]),
            ("cflhkd-k8", "cflhkd", ["params.k=8"]),
            ("cflhkd-a", "cflhkd", []),
            ("cflhkd-re1", "cflhkd", ["params.edge_rounds=1"]),
            ("cflhkd-k2", "cflhkd", ["params.k=2"]),
        ],
        "dirichlet:0.1": [
            ("cflhkd-global", "cflhkd", ["params.edge_init=global"]),
            ("cflhkd-a", "cflhkd", []),
        ],
    },
}


def setting_dir(setting: str) -> str:
    """The folder of a setting: ``iid|4:labelswap`` -> ``iid-4labelswap``."""
    return setting.replace(":", "").replace("|", "-")


def run_one(
    out: Path, setting: str, label: str, method: str, sets: list[str], rounds: int, clients: int, dataset: str, seed: int | None = None
) -> str:
    partition, _, groups = setting.partition("|")
    d = out / setting_dir(setting) / (label if seed is None else f"{label}-s{seed}")
    if (d / "summary.json").exists():
        return f"{d.name} {setting}: done already"
    cmd = [sys.executable, "-m", "fldistill.cli", "run", "--method", method, "--dataset", dataset, "--partition", partition,
           "--clients", str(clients), "--rounds", str(rounds), "--out", str(d), "--quiet"]
    if groups:
        cmd += ["--groups", groups]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    for s in sets:
        cmd += ["--set", s]
    if (d / "metrics.jsonl").exists():
        cmd.append("--resume")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t = time.time()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    return f"{d.name} {setting}: rc={r.returncode} {time.time() - t:.0f}s {r.stdout.strip()[-300:]} {r.stderr.strip()[-300:]}"


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


def _mean_std(values: list[float]) -> str:
    import numpy as np

    v = np.array([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return "-"
    return f"{v.mean():.4f}" if v.size == 1 else f"{v.mean():.4f} ± {v.std(ddof=1):.4f}"


def write_seeded_table(out: Path) -> Path:
    """Mean ± std over seeds (runs ``<label>-s<seed>``) of global and personalised accuracy, per setting."""
    import re

    from fldistill.report.compare import format_bits

    cols = ["setting", "method", "seeds", "global acc (last 5)", "personalised acc", "personalised worst 10%",
            "group acc", "purity", "ARI", "total sent", "MB/round", "s/round", "server s/round", "rounds to 0.9 x FedAvg"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for sdir in sorted(p for p in out.iterdir() if p.is_dir()):
        groups: dict[str, list[dict]] = {}
        for d in sorted(sdir.iterdir()):
            if (d / "summary.json").exists():
                groups.setdefault(re.sub(r"-s\d+$", "", d.name), []).append(json.loads((d / "summary.json").read_text()))
        curves = {label: [_accuracy_curve(sdir / f"{label}-s{x['seed']}") for x in ss] for label, ss in groups.items()}
        ref = groups.get("fedavg")
        target = 0.9 * sum(x["final_accuracy_mean5"] for x in ref) / len(ref) if ref else None
        for label, ss in groups.items():
            server = [_server_seconds(sdir / f"{label}-s{x['seed']}") for x in ss]
            reach = [_rounds_to(c, target) for c in curves[label]] if target is not None else []
            row = [sdir.name, label, str(len(ss)),
                   _mean_std([x["final_accuracy_mean5"] for x in ss]),
                   _mean_std([x.get("final_personalized_accuracy") for x in ss]),
                   _mean_std([x.get("final_personalized_accuracy_worst10") for x in ss]),
                   _mean_std([x.get("final_group_accuracy") for x in ss]),
                   _mean_std([x.get("final_purity") for x in ss]),
                   _mean_std([x.get("final_ari") for x in ss]),
                   format_bits(int(sum(x["total_bits"] for x in ss) / len(ss))),
                   f"{sum(x['total_bits'] for x in ss) / len(ss) / 8e6 / max(1, ss[0].get('rounds', 1)):.3f}",
                   _mean_std([x.get("seconds_per_round") for x in ss]),
                   _mean_std(server) if any(v is not None for v in server) else "-",
                   (_reach(reach) if reach else "-")]
            lines.append("| " + " | ".join(row) + " |")
    path = out / "clustered_table.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()] if (run / "metrics.jsonl").exists() else []


def _accuracy_curve(run: Path) -> list[float]:
    return [r["accuracy"] for r in _records(run) if r["round"] >= 1]


def _server_seconds(run: Path) -> float | None:
    """Mean per round of the server-side distillation / generator seconds, if the method logs them."""
    vals = [r.get("distill_s", r.get("generator_s")) for r in _records(run) if r["round"] >= 1]
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def _rounds_to(curve: list[float], target: float) -> int | None:
    return next((i + 1 for i, a in enumerate(curve) if a >= target), None)


def _reach(values: list[int | None]) -> str:
    import numpy as np

    got = [v for v in values if v is not None]
    miss = len(values) - len(got)
    if not got:
        return "not reached"
    v = np.array(got, dtype=np.float64)
    text = f"{v.mean():.0f}" if v.size == 1 else f"{v.mean():.0f} ± {v.std(ddof=1):.0f}"
    return text + (f" ({miss} not reached)" if miss else "")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", default="foundation", choices=sorted(SUITES))
    ap.add_argument("--out", default="benchmarks/results/mnist1d")
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--dataset", default="mnist1d")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", help="comma-separated settings to run")
    ap.add_argument("--seeds", help="comma-separated seeds: every run once per seed, a mean ± std table")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds: list[int | None] = [int(x) for x in a.seeds.split(",")] if a.seeds else [None]
    jobs = [(p, *spec, seed) for seed in seeds for p, specs in SUITES[a.suite].items() for spec in specs
            if not a.only or p in a.only.split(",")]
    # longest first: the position of a run in its setting's list is its expected rank in cost
    jobs.sort(key=lambda j: [s[0] for s in SUITES[a.suite][j[0]]].index(j[1]))
    with ThreadPoolExecutor(a.workers) as ex:
        for msg in ex.map(lambda j: run_one(out, j[0], j[1], j[2], j[3], a.rounds, a.clients, a.dataset, j[4]), jobs):
            print(msg, flush=True)
    import torch

    env = {"command": " ".join([sys.executable, *sys.argv]), "machine": platform.platform(), "cpus": os.cpu_count(),
           "python": platform.python_version(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    (out / "environment.json").write_text(json.dumps(env, indent=2) + "\n")
    for p in SUITES[a.suite]:
        sd = out / setting_dir(p)
        names = [lab if seed is None else f"{lab}-s{seed}" for lab, _, _ in SUITES[a.suite][p] for seed in seeds[:1]]
        dirs = [str(sd / n) for n in names if (sd / n / "summary.json").exists()]
        if dirs:
            subprocess.run([sys.executable, "-m", "fldistill.cli", "compare", *dirs, "--out", str(sd / "compare")])
    if a.seeds or a.suite in ("clustered", "cflhkd", "cflhkd-sweep"):
        print(write_seeded_table(out).read_text())
    else:
        print(write_table(out).read_text())


if __name__ == "__main__":
    main()
