"""Start-up time of the commands that must not import torch, against a bare Python start.

Each command runs ``--repeats`` times, interleaved (so machine load hits all alike), as a
fresh process; the table gives the median wall time and its ratio to ``python -c pass``,
with ``python -c "import torch"`` for scale. The load average is printed with it.

    python benchmarks/startup.py --repeats 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _fake_run(folder: Path) -> Path:
    """A two-round run folder to ``show`` (the command reads files only)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"method": "fedavg", "dataset": "mnist1d", "rounds": 2, "clients": 4, "seed": 0}))
    recs = [{"round": t, "accuracy": 0.1 + 0.3 * t, "loss": 2.3 - t, "bits": {"down": t * 8, "up": t * 8}, "bits_total": t * 16, "wall_s": t}
            for t in range(3)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    run = _fake_run(tmp / "run")
    py = sys.executable
    cli = [py, "-m", "fldistill.cli"]
    cases = {
        "python -c pass": [py, "-c", "pass"],
        "python -c 'import torch'": [py, "-c", "import torch"],
        "fldistill --help": [*cli, "--help"],
        "fldistill run --help": [*cli, "run", "--help"],
        "fldistill list methods": [*cli, "list", "methods"],
        "fldistill list keys": [*cli, "list", "keys"],
        "fldistill list models": [*cli, "list", "models"],
        "fldistill show RUN": [*cli, "show", str(run)],
        "config error (--set local.lr=-1)": [*cli, "run", "--set", "local.lr=-1", "--out", str(tmp / "x")],
        "unknown method (--method fedavf)": [*cli, "run", "--method", "fedavf", "--out", str(tmp / "x")],
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    load = os.getloadavg()
    for _ in range(args.repeats):
        for name, cmd in cases.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=False)
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["python -c pass"])
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; after: {os.getloadavg()[0]:.2f}; {args.repeats} runs each")
    print("| command | median s | x bare python |")
    print("|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.3f} | {med / base:.1f} |")


if __name__ == "__main__":
    main()
