"""FedAvg and HFLDD in-process vs on Flower (simulation and loopback deployment), one run.

Writes benchmarks/flower/results.json and results.md: final accuracy, bits (ledger and
relay), seconds per round and setup seconds for each engine, on the same config and seed.

    PYTHONPATH=src python benchmarks/flower/bench.py [--clients 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from fldistill.config import parse_config
from fldistill.runner import Runner
from fldistill.flower.local import LocalDeployment
from fldistill.flower.sim import run_flower_simulation

HERE = Path(__file__).parent
HP = {"k": 2, "pretrain_epochs": 1, "pretrain_lr": 0.05, "distiller": "random", "distill_size": 20}


def configs(clients: int, rounds: int) -> dict:
    base = {
        "dataset": "digits", "partition": "classes:2", "clients": clients, "rounds": rounds, "seed": 1,
        "engine": "sequential",  # Flower nodes run one client each: compare like with like
        "local": {"amount": 1, "lr": 0.05, "batch_size": 32, "momentum": 0.9},
    }
    return {
        "fedavg": parse_config({**base, "method": "fedavg"}),
        "hfldd": parse_config({**base, "method": "hfldd", "params": HP, "public": {"size": 50}}),
    }


def row(engine: str, s: dict, total_s: float) -> dict:
    return {
        "engine": engine, "method": s["method"], "final_accuracy": s["final_accuracy"], "total_bits": s["total_bits"],
        "bits": {k: v for k, v in s["bits"].items() if v}, "relay_bits": s.get("flower", {}).get("relay_bits", 0),
        "setup_s": round(s["setup_s"], 2), "seconds_per_round": round(s["seconds_per_round"], 3), "total_s": round(total_s, 1),
    }


def write_md(meta: dict, rows: list[dict], clients: int, rounds: int) -> None:
    """results.md from the measured rows."""
    lines = [
        f"# fldistill on Flower vs in-process ({meta['dataset']}, {clients} clients, {rounds} rounds, seed 1)", "",
        f"Measured {meta['date']} on {meta['cpu_cores']} shared CPU cores (1-min load average {meta['load_average_1m_at_end']} at the end),",
        "torch 1 thread everywhere, Flower 1.41, all engines in one run of `PYTHONPATH=src python benchmarks/flower/bench.py`.",
        "s/round excludes setup (round 0: HFLDD's clustering and distillation); total s adds Flower's start-up",
        "(Ray, or `flwr run` and node discovery; the deployment's SuperLink and SuperNodes start once for both methods).", "",
        "| engine | method | final acc | same acc | ledger bits | same bits | relay bits | setup s | s/round | x in-process | total s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['engine']} | {r['method']} | {r['final_accuracy']:.4f} | {r['same_accuracy']} | {r['total_bits']:,} | {r['same_bits']} | "
            f"{r['relay_bits']:,} | {r['setup_s']} | {r['seconds_per_round']} | {r['seconds_per_round_vs_inprocess']} | {r['total_s']} |"
        )
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--md-only", action="store_true", help="rewrite results.md from results.json")
    args = ap.parse_args()
    if args.md_only:
        doc = json.loads((HERE / "results.json").read_text())
        write_md(doc["meta"], doc["rows"], doc["meta"]["clients"], doc["meta"]["rounds"])
        return
    torch.set_num_threads(1)  # as the Flower nodes run (flower.threads), so numbers compare
    work = Path(tempfile.mkdtemp(prefix="fldistill-flower-bench-"))
    rows = []
    try:
        cfgs = configs(args.clients, args.rounds)
        for name, cfg in cfgs.items():  # warm-up: imports, dataset cache
            Runner(cfg, work / f"warm-{name}", quiet=True).run()
        for name, cfg in cfgs.items():
            t = time.perf_counter()
            rows.append(row("in-process", Runner(cfg, work / f"inproc-{name}", quiet=True).run(), time.perf_counter() - t))
        for name, cfg in cfgs.items():
            t = time.perf_counter()
            rows.append(row("flower-simulation", run_flower_simulation(cfg, work / f"sim-{name}"), time.perf_counter() - t))
        with LocalDeployment(args.clients, work / "deploy") as dep:
            for name, cfg in cfgs.items():
                t = time.perf_counter()
                rows.append(row("flower-deployment", dep.submit(cfg, work / f"dep-{name}"), time.perf_counter() - t))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ref = {r["method"]: r for r in rows if r["engine"] == "in-process"}
    for r in rows:
        r["seconds_per_round_vs_inprocess"] = round(r["seconds_per_round"] / max(ref[r["method"]]["seconds_per_round"], 1e-9), 1)
        r["same_accuracy"] = abs(r["final_accuracy"] - ref[r["method"]]["final_accuracy"]) <= 1e-5
        r["same_bits"] = r["bits"] == ref[r["method"]]["bits"]
    meta = {"clients": args.clients, "rounds": args.rounds, "dataset": "digits classes:2", "machine": platform.processor() or platform.machine(),
            "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average_1m_at_end": round(os.getloadavg()[0], 1), "date": time.strftime("%Y-%m-%d %H:%M")}
    (HERE / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    write_md(meta, rows, args.clients, args.rounds)


if __name__ == "__main__":
    main()
