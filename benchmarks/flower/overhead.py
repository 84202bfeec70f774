"""Where a Flower deployment round's time goes, and what the warm executor and short waits save.

One run, same config and seed everywhere: FedAvg on digits (classes:2), one SuperNode per
client, for each node count: in-process (the sequential engine), a stock Flower deployment
(``flower-supernode`` with its own SuperExec: a fresh ``flwr-clientapp`` per message, fixed
3 s / 1 s waits), the warm executor alone (``--isolation process`` beside
``fldistill.flower.executor``), and warm + waits capped at 0.2 s (the default of
``fldistill flower local``). Each deployment traces its message path
(``fldistill.flower.trace``), so the table splits a round into: server push -> ClientApp
task start (delivery, process start, message pull), the task itself, and task end -> all
replies at the server. Peak memory is the largest sum of PSS over the deployment's
processes, sampled every second.

    PYTHONPATH=src python benchmarks/flower/overhead.py --nodes 4 20 --rounds 3

Writes benchmarks/flower/overhead.json and overhead.md (a --nodes subset keeps the other
rows already there).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from fldistill.config import RunConfig, parse_config
from fldistill.flower.local import LocalDeployment, descendants
from fldistill.runner import Runner

HERE = Path(__file__).parent
MODES: dict[str, dict[str, Any]] = {
    "stock": {"warm": False, "poll_s": None},
    "warm": {"warm": True, "poll_s": None},
    "warm+poll": {"warm": True, "poll_s": 0.2},
}


def config(nodes: int, rounds: int) -> RunConfig:
    return parse_config({
        "method": "fedavg", "dataset": "digits", "partition": "classes:2", "clients": nodes, "rounds": rounds, "seed": 1,
        "engine": "sequential", "local": {"amount": 1, "lr": 0.05, "batch_size": 32, "momentum": 0.9},
        "flower": {"connect_timeout_s": 900},  # 20 stock SuperNodes take minutes to start on 2 busy cores
    })


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemorySampler(threading.Thread):
    """Peak of the summed PSS of every process below this one (the deployment's), once a second."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_kib, self.stop = 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.peak_kib = max(self.peak_kib, sum(pss_kib(p) for p in [os.getpid(), *descendants(os.getpid())]))


def stages(trace: Path) -> dict[str, float]:
    """Median seconds per exchange of the train task: push -> first task start, task, last task end -> replies."""
    ev = [json.loads(line) for line in trace.read_text().splitlines()] if trace.exists() else []
    rows: dict[str, list[float]] = {"deliver_s": [], "task_s": [], "return_s": [], "exchange_s": []}
    push = None
    starts: list[float] = []
    ends: list[float] = []
    for e in ev:
        if e["event"] == "push":
            push, starts, ends = (e["t"] if e.get("type") == "train.train" else None), [], []
        elif push is not None and e["event"] == "task_start":
            starts.append(e["t"])
        elif push is not None and e["event"] == "task_end":
            ends.append(e["t"])
        elif push is not None and e["event"] == "replies" and starts and ends:
            rows["deliver_s"].append(statistics.median(starts) - push)
            rows["task_s"].append(statistics.median(b - a for a, b in zip(sorted(starts), sorted(ends))))
            rows["return_s"].append(e["t"] - max(ends))
            rows["exchange_s"].append(e["t"] - push)
            push = None
    return {k: round(statistics.median(v), 3) if v else float("nan") for k, v in rows.items()}


def run_mode(mode: str, cfg: RunConfig, work: Path) -> dict[str, Any]:
    mem = MemorySampler()
    mem.start()
    t = time.perf_counter()
    trace = work / f"{mode}.trace.jsonl"
    try:
        if mode == "in-process":
            s = Runner(cfg, work / mode, quiet=True).run()
        else:
            with LocalDeployment(cfg.clients, work / f"{mode}-deploy", trace=trace, **MODES[mode]) as dep:
                s = dep.submit(cfg, work / mode, timeout_s=3600)
    finally:
        mem.stop.set()
        mem.join()
    row = {"mode": mode, "nodes": cfg.clients, "final_accuracy": s["final_accuracy"], "total_bits": s["total_bits"],
           "seconds_per_round": round(s["seconds_per_round"], 3), "setup_s": round(s["setup_s"], 2),
           "total_s": round(time.perf_counter() - t, 1), "peak_pss_gib": round(mem.peak_kib / 2**20, 2)}
    if mode != "in-process":
        row.update(stages(trace))
    return row


def write_md(doc: dict[str, Any]) -> None:
    rows = doc["rows"]
    lines = [
        "# Flower deployment overhead: where a round goes, before and after", "",
        f"FedAvg, digits classes:2, one SuperNode per client, {doc['rounds']} rounds, seed 1, torch 1 thread, Flower 1.41, "
        f"{doc['cores']} shared CPU cores. Command: `{doc['command']}`.", "",
        "s/round excludes setup (node discovery). deliver: server push -> ClientApp task start (median over nodes); "
        "task: the training itself; return: last task end -> all replies at the server (medians over rounds). "
        "Peak PSS: the deployment's processes together. Same acc/bits: equal to in-process at the same node count.", "",
        "| nodes | mode | s/round | x in-process | x stock | deliver s | task s | return s | peak PSS GiB "
        "| final acc | same acc | bits | same bits | load 1m | measured |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["nodes"], list(("in-process", *MODES)).index(r["mode"]))):
        base = next(b for b in rows if b["nodes"] == r["nodes"] and b["mode"] == "in-process")
        stock = next((b for b in rows if b["nodes"] == r["nodes"] and b["mode"] == "stock"), None)
        xs = f"{stock['seconds_per_round'] / r['seconds_per_round']:.1f}" if stock else "-"
        st = [f"{r[k]:.2f}" if k in r else "-" for k in ("deliver_s", "task_s", "return_s")]
        x_in = r["seconds_per_round"] / base["seconds_per_round"]
        lines.append(
            f"| {r['nodes']} | {r['mode']} | {r['seconds_per_round']:.3f} | {x_in:.1f} | {xs} | "
            f"{' | '.join(st)} | {r['peak_pss_gib']:.2f} | {r['final_accuracy']:.4f} | {r['final_accuracy'] == base['final_accuracy']} | "
            f"{r['total_bits']:,} | {r['total_bits'] == base['total_bits']} | {r['load_1m']} | {r['date']} |"
        )
    lines += ["", "Rows of one node count come from one run of the command (one machine, minutes apart); compare within a node count."]
    lines += [f"- {n['nodes']} nodes, {n['text']}" for n in doc.get("notes", [])]  # runs that did not finish
    (HERE / "overhead.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[4, 20])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=["in-process", *MODES], choices=["in-process", *MODES])
    args = ap.parse_args()
    torch.set_num_threads(1)
    path = HERE / "overhead.json"
    old = json.loads(path.read_text()) if path.exists() else {"rows": []}
    rows = [r for r in old["rows"] if r["nodes"] not in args.nodes]
    notes = [n for n in old.get("notes", []) if n["nodes"] not in args.nodes]  # a rerun's node count drops its old notes
    work = Path(tempfile.mkdtemp(prefix="fld-overhead-"))
    try:
        for n in args.nodes:
            cfg = config(n, args.rounds)
            for mode in args.modes:
                r = run_mode(mode, cfg, work / f"n{n}")
                r["load_1m"], r["date"] = round(os.getloadavg()[0], 1), time.strftime("%Y-%m-%d %H:%M")
                print(json.dumps(r), flush=True)
                rows.append(r)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    doc = {"rounds": args.rounds, "cores": os.cpu_count(), "rows": rows, "notes": notes,
           "command": f"PYTHONPATH=src python benchmarks/flower/overhead.py --nodes N --rounds {args.rounds}"
                      f" (N = {', '.join(map(str, sorted({r['nodes'] for r in rows})))}, each its own run)"}
    path.write_text(json.dumps(doc, indent=1) + "\n")
    write_md(doc)


if __name__ == "__main__":
    main()
