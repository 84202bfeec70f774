"""Every registered method on Flower's simulation runtime against in-process, one run.

For each method: 2 rounds on 4 digits clients in two planted label-swap groups (IID
within a group), small method settings so that each pair of runs takes seconds; the
in-process reference is the sequential engine (a Flower node runs one client). A method
passes when every round's accuracy agrees within 1e-5, the bits per hop are identical
and the ledgers (by phase) are equal; writes ``every_method.md`` and ``.json`` beside
this file. The tests cover FedAvg, HFLDD, IFCA, CFL, CFLHKD and DisUE
(``tests/test_flower.py``, ``tests/test_flower_resume.py``); this covers the rest.

    PYTHONPATH=src python benchmarks/flower/every_method.py [--methods fedavg,kdia]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from fldistill.config import parse_config
from fldistill.flower.sim import run_flower_simulation
from fldistill.methods import all_methods
from fldistill.runner import Runner

HERE = Path(__file__).parent
# Small settings per method, the ones the unit tests use (seconds per run, same code path).
SMALL: dict[str, dict[str, Any]] = {
    "cfl": {"warmup": 1, "rel_eps1": 10.0, "rel_eps2": 0.0, "min_separation": None},
    "cflhkd": {"k": 2, "edge_rounds": 2, "warmup_rounds": 1},
    "disue": {"iterations": 2, "batch": 16, "student_steps": 2, "noise_dim": 8, "gen_width": 8, "groups": 2},
    "dynafed": {"L": 2, "expert_epochs": 1, "iterations": 5, "syn_steps": 2, "ipc": 2},
    "fedftg": {"iterations": 2, "batch": 16, "student_steps": 2, "noise_dim": 8, "gen_width": 8},
    "fedgen": {"gen_steps": 10, "gen_batch": 16, "noise_dim": 8, "gen_hidden": 16},
    "fedseq": {"clusters": "random", "n_clusters": 2},
    "hfldd": {"k": 2, "pretrain_epochs": 1, "pretrain_lr": 0.05, "distiller": "random", "distill_size": 20},
    "ifca": {"clusters": 2},
    "kdia": {"gen_epochs": 1, "gen_iters": 3, "gen_batch": 8, "noise_dim": 8, "gen_hidden": 16},
}
EXTRA: dict[str, dict[str, Any]] = {"hfldd": {"public": {"size": 50}}, "cflhkd": {"public": {"size": 40}}}


def config(method: str) -> Any:
    doc = {
        "method": method, "dataset": "digits", "partition": "iid", "groups": "2:labelswap", "clients": 4, "rounds": 2,
        "seed": 1, "engine": "sequential", "local": {"amount": 1, "lr": 0.05, "batch_size": 32, "momentum": 0.9},
        "params": SMALL.get(method, {}), **EXTRA.get(method, {}),
    }
    return parse_config(doc)


def records(d: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]


def compare(ref: Path, sim: Path) -> dict[str, Any]:
    """Largest per-round accuracy gap, and whether bits per round and the ledger agree."""
    a, b = records(ref), records(sim)
    gap = max((abs(x["accuracy"] - y["accuracy"]) for x, y in zip(a, b)), default=math.inf) if len(a) == len(b) else math.inf
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (ref, sim))
    same_bits = [x["bits"] for x in a] == [y["bits"] for y in b]
    same_ledger = sa["bits"] == sb["bits"] and sa["bits_by_phase"] == sb["bits_by_phase"]
    return {"acc_gap": gap, "same_bits": same_bits, "same_ledger": same_ledger, "final_acc": a[-1]["accuracy"],
            "bits": sum(sa["bits"].values()), "hops": sorted(k for k, v in sa["bits"].items() if v)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="", help="comma-separated subset (default: every registered method with clients)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    names = [m for m in (args.methods.split(",") if args.methods else all_methods()) if m != "centralized"]
    load0 = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in names:
            cfg, d = config(m), Path(tmp) / m
            t0 = time.perf_counter()
            Runner(cfg, d / "ref", quiet=True).run()
            t1 = time.perf_counter()
            try:
                run_flower_simulation(cfg, d / "sim")
                row = {"method": m, **compare(d / "ref", d / "sim"), "error": ""}
            except Exception as err:  # noqa: BLE001 (a failing method is a row of the table, not the end of the run)
                row = {"method": m, "acc_gap": math.inf, "same_bits": False, "same_ledger": False, "error": str(err)[:300]}
            row |= {"inprocess_s": round(t1 - t0, 2), "flower_s": round(time.perf_counter() - t1, 2)}
            row["ok"] = row["acc_gap"] <= 1e-5 and row["same_bits"] and row["same_ledger"]
            rows.append(row)
            print(f"{m}: {'ok' if row['ok'] else 'FAILED'} gap={row['acc_gap']:.2e} {row['error']}", flush=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_start": load0, "load_end": os.getloadavg(),
            "torch": torch.__version__, "python": platform.python_version(),
            "command": "PYTHONPATH=src python benchmarks/flower/every_method.py"}
    (HERE / "every_method.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str) + "\n")
    lines = [
        "# Every method on Flower's simulation runtime vs in-process (digits, 4 clients, 2 rounds, seed 1)", "",
        f"Measured {meta['date']} on 2 shared CPU cores (1-min load {load0[0]:.1f} at the start, {meta['load_end'][0]:.1f} at the end), "
        f"torch 1 thread, `{meta['command']}`. Same: every round's accuracy within 1e-5, identical bits per hop and round, "
        "identical ledger by phase.", "",
        "| method | same | max acc gap | same bits per round | same ledger | final acc | bits sent | hops "
        "| in-process s | Flower sim s | error |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {'yes' if r['ok'] else '**no**'} | {r['acc_gap']:.1e} | {r['same_bits']} | {r['same_ledger']} | "
            f"{r.get('final_acc', float('nan')):.4f} | {r.get('bits', 0):,} | {', '.join(r.get('hops', []))} | {r['inprocess_s']} | "
            f"{r['flower_s']} | {r['error']} |"
        )
    (HERE / "every_method.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
