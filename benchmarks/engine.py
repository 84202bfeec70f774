"""Engine benchmarks: sequential vs vectorised vs the compute floor vs Flower's simulation.

Every figure is one command; each writes ``<out>/<name>.json`` and ``<out>/<name>.md``
with the machine and versions. Compared variants run in one process (or one parent
process) and are interleaved round by round, so the *ratios* hold on a shared machine
even when absolute times are noisy.

Usage (see benchmarks/README.md)::

    python benchmarks/engine.py rounds --clients 100
    python benchmarks/engine.py rounds --clients 1000 --dataset-size 200000 --rounds 3
    python benchmarks/engine.py flower --clients 100 --rounds 100
    python benchmarks/engine.py flower --clients 1000 --rounds 3 --dataset-size 200000
    python benchmarks/engine.py flower --clients 100 --rounds 4 --dataset fashion-mnist   # 2-D CNN (mnist_cnn)
    python benchmarks/engine.py kl --clients 1000
    python benchmarks/engine.py hfldd --clients 100
    python benchmarks/engine.py scale --rounds 3  # 100, 1,000, 10,000 clients: s per client-step, peak RSS
    python benchmarks/engine.py summary        # the issue's targets from the result files
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results" / "engine"


# --------------------------------------------------------------------------- helpers
def environment() -> dict[str, Any]:
    """Machine and versions recorded with every result."""
    env: dict[str, Any] = {
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    try:
        import flwr

        env["flwr"] = flwr.__version__
        import ray

        env["ray"] = ray.__version__
    except ImportError:
        env["flwr"] = None
    return env


def peak_rss_gib() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def write(name: str, out: Path, result: dict[str, Any], table: list[tuple[str, str]]) -> None:
    """Write ``name.json`` and a two-column ``name.md`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    result = {**result, "environment": environment()}
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    env = result["environment"]
    lines = [f"# {name}", "", "| quantity | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in table], ""]
    lines.append(
        f"Machine: {env['machine']}, {env['cpus']} CPUs ({env['torch_threads']} torch threads), GPU: {env['cuda']}; "
        f"Python {env['python']}, torch {env['torch']}, flwr {env['flwr']}. {env['date']}. "
    )
    lines.append(f"Command: `{env['command']}`")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def fedavg_cfg(
    clients: int, rounds: int, dataset_size: int | None, device: str, engine: str = "auto", seed: int = 0, dataset: str = "mnist1d"
):
    """The benchmark workload: FedAvg, IID, its per-family defaults (mnist1d: 2 epochs, batch 32, mnist1d_cnn;
    28x28 grey images such as fashion-mnist: lr 0.02 and ``mnist_cnn``, the HFLDD paper's 2-D CNN)."""
    from fldistill.config import parse_config

    return parse_config(
        {"method": "fedavg", "dataset": dataset, "partition": "iid", "clients": clients, "rounds": rounds,
         "seed": seed, "dataset_size": dataset_size, "device": device, "engine": engine}
    )


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- rounds
def compute_floor_round(method: Any, t: int, kernels: str = "torch") -> float:
    """One fused forward+backward+SGD step per local step over all clients' batches of round ``t``.

    The clients' batch sequences are drawn exactly as the engines draw them; at each local
    step the batches of all clients still training are concatenated and pushed through
    one model. No per-client work at all: what the arithmetic alone costs.
    ``kernels="torch"``: the model's own PyTorch modules and autograd (the issue's floor);
    ``"fastchain"``: the vectorised engine's own kernels with one shared weight set (the
    floor of *those* kernels: what per-client weights cost on top of them).
    """
    from fldistill.engine.training import batch_schedule

    comm, fed, local = method.comm, method.fed, method.cfg.local
    model = comm.model
    sched = []
    for cid in method.sample_clients(t):
        ix = torch.from_numpy(fed.client_train[cid]).to(fed.x.device)
        sched.append([ix[b] for b in batch_schedule(len(ix), local, comm.context(cid).gen("train", t))])
    if kernels == "fastchain":
        from fldistill.engine.fastchain import ce_grad, split_plan

        sp = split_plan(model)
        if sp is None:
            return float("nan")
        P = {k: v.detach().clone().unsqueeze(0) for k, v in model.named_parameters()}
        buf: dict[str, torch.Tensor] = {}
        _sync(method.cfg.device)
        t0 = time.perf_counter()
        for s in range(max(len(c) for c in sched)):
            idx = torch.cat([c[s] for c in sched if s < len(c)])
            g, _ = ce_grad(sp, P, fed.x[idx].unsqueeze(0), fed.y[idx].unsqueeze(0))
            for k, v in P.items():
                d = buf[k].mul_(local.momentum).add_(g[k]) if k in buf else buf.setdefault(k, g[k].clone())
                v.add_(d, alpha=-local.lr)
        _sync(method.cfg.device)
        return time.perf_counter() - t0
    opt = torch.optim.SGD(model.parameters(), lr=local.lr, momentum=local.momentum)
    _sync(method.cfg.device)
    t0 = time.perf_counter()
    for s in range(max(len(c) for c in sched)):
        idx = torch.cat([c[s] for c in sched if s < len(c)])
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(fed.x[idx]), fed.y[idx]).backward()
        opt.step()
    _sync(method.cfg.device)
    return time.perf_counter() - t0


def cmd_rounds(a: argparse.Namespace) -> None:
    """Seconds per FedAvg round: sequential, vectorised and the compute floor, interleaved."""
    from fldistill.runner import Runner

    t_start = time.perf_counter()
    runner = Runner(fedavg_cfg(a.clients, a.rounds, a.dataset_size, a.device), tempfile.mkdtemp(), quiet=True)
    method = runner.build()
    build_s = time.perf_counter() - t_start
    comm = method.comm
    times: dict[str, list[float]] = {"sequential": [], "vectorised": [], "floor": [], "floor_fastchain": []}
    max_diff = 0.0
    engines = ["sequential", "vectorised"] if not a.vectorised_only else ["vectorised"]
    for t in range(1, a.rounds + 1):
        start, version = method.global_state, method.version
        ends = {}
        for i, eng in enumerate(engines if t % 2 else engines[::-1]):  # alternate who goes first
            method.global_state, method.version = start, version
            comm.engine = eng
            _sync(a.device)
            t0 = time.perf_counter()
            method.round(t)
            _sync(a.device)
            times[eng].append(time.perf_counter() - t0)
            ends[eng] = method.global_state
        times["floor"].append(compute_floor_round(method, t))
        times["floor_fastchain"].append(compute_floor_round(method, t, "fastchain"))
        if len(ends) == 2:
            max_diff = max(max_diff, max(float((ends["sequential"][k] - ends["vectorised"][k]).abs().max()) for k in start))
        method.global_state = ends["vectorised"]
        print(f"round {t}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items() if v), flush=True)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    from fldistill.engine.training import num_local_steps

    steps = sum(num_local_steps(len(method.fed.client_train[c]), method.cfg.local) for c in method.sample_clients(1))
    res: dict[str, Any] = {
        "workload": f"FedAvg, mnist1d IID, {a.clients} clients, 2 local epochs, batch 32, mnist1d_cnn",
        "clients": a.clients, "rounds": a.rounds, "device": a.device, "dataset_size": a.dataset_size,
        "samples_per_client": float(method.fed.train_sizes().mean()),
        "seconds_per_round": times, "median_s": med, "build_s": build_s,
        "max_abs_param_diff_seq_vs_vec": max_diff, "peak_rss_gib": peak_rss_gib(),
        "client_runs": comm.client_runs, "client_steps_per_round": steps,
    }
    rows = [("workload", res["workload"]), ("mean local train samples per client", f"{res['samples_per_client']:.1f}")]
    rows += [(f"{k} s/round (median of {len(times[k])})", f"{v:.4f}") for k, v in med.items()]
    if "sequential" in med:
        res["speedup_vectorised_vs_sequential"] = med["sequential"] / med["vectorised"]
        rows.append(("**vectorised speed-up over sequential**", f"**{res['speedup_vectorised_vs_sequential']:.2f}x**"))
        rows.append(("max abs parameter difference, sequential vs vectorised", f"{max_diff:.2e}"))
    res["vectorised_over_floor"] = med["vectorised"] / med["floor"]
    rows.append(("**vectorised / compute floor**", f"**{res['vectorised_over_floor']:.2f}x**"))
    res["vectorised_over_floor_fastchain"] = med["vectorised"] / med["floor_fastchain"]
    rows.append(("vectorised / floor of its own kernels (one shared weight set)", f"{res['vectorised_over_floor_fastchain']:.2f}x"))
    rows.append(("peak RSS of the process (GiB)", f"{res['peak_rss_gib']:.2f}"))
    rows.append(("data + model build (s)", f"{build_s:.2f}"))
    write(a.name or f"rounds_{a.clients}_{a.device.replace(':', '')}", Path(a.out), res, rows)


# --------------------------------------------------------------------------- scale
def cmd_scale(a: argparse.Namespace) -> None:
    """Seconds per FedAvg round and per client-step at 100, 1,000 and 10,000 clients, peak memory.

    Each size runs ``rounds --vectorised-only`` in its own child process (so its peak RSS
    is its own), with the same samples per client (``--per-client``, train + test) so
    that the work per client is constant and seconds per client-step should stay flat.
    """
    sizes = [int(x) for x in a.sizes.split(",")]
    res: dict[str, Any] = {"per_client": a.per_client, "rounds": a.rounds, "sizes": {}}
    load0 = os.getloadavg()
    for n in sizes:
        name = f"scale_{n}"
        cmd = [sys.executable, __file__, "rounds", "--vectorised-only", "--clients", str(n), "--rounds", str(a.rounds),
               "--dataset-size", str(n * a.per_client), "--threads", str(a.threads), "--out", a.out, "--name", name]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
        if r.returncode:
            raise SystemExit(f"{n} clients failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
        got = json.loads((Path(a.out) / f"{name}.json").read_text())
        s_round = got["median_s"]["vectorised"]
        per_step = s_round / got["client_steps_per_round"]
        res["sizes"][n] = {"s_per_round": s_round, "client_steps": got["client_steps_per_round"], "us_per_client_step": per_step * 1e6,
                           "peak_rss_gib": got["peak_rss_gib"], "build_s": got["build_s"], "wall_s": time.perf_counter() - t0,
                           "samples_per_client": got["samples_per_client"], "floor_s": got["median_s"]["floor"]}
        rss = got["peak_rss_gib"]
        print(f"{n} clients: {s_round:.3f} s/round, {per_step * 1e6:.1f} us per client-step, peak {rss:.2f} GiB", flush=True)
    base = res["sizes"][sizes[0]]["us_per_client_step"]
    res["load_start"], res["load_end"] = load0, os.getloadavg()
    rows_md = [(f"{n:,} clients",
                f"{v['s_per_round']:.3f} s/round, {v['client_steps']:,} client-steps, {v['us_per_client_step']:.1f} us per client-step "
                f"({v['us_per_client_step'] / base:.2f}x of {sizes[0]:,}), floor {v['floor_s']:.3f} s, "
                f"peak RSS {v['peak_rss_gib']:.2f} GiB, "
                f"build {v['build_s']:.1f} s, {v['samples_per_client']:.0f} train samples per client")
               for n, v in res["sizes"].items()]
    rows_md.append(("1-min load average, start / end", f"{load0[0]:.1f} / {res['load_end'][0]:.1f}"))
    write(a.name or "scale", Path(a.out), res, rows_md)


# --------------------------------------------------------------------------- flower
def cmd_fldistill_run(a: argparse.Namespace) -> None:
    """A whole fldistill run (what ``fldistill run`` does); prints per-round wall times as JSON."""
    from fldistill.runner import Runner

    t0 = time.perf_counter()
    out = Path(tempfile.mkdtemp()) / "run"
    s = Runner(fedavg_cfg(a.clients, a.rounds, a.dataset_size, a.device, a.engine, dataset=a.dataset), out, quiet=True).run()
    walls = [json.loads(ln)["wall_s"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    print("RESULT " + json.dumps({"in_process_s": time.perf_counter() - t0, "round_walls": walls,
                                  "final_accuracy": s["final_accuracy"], "peak_rss_gib": peak_rss_gib()}))


def cmd_flower_run(a: argparse.Namespace) -> None:
    """The same workload through Flower's simulation runtime (Ray, ``--workers`` workers)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from flower_app import run_flower

    print("RESULT " + json.dumps(run_flower(a.clients, a.rounds, a.dataset_size, a.workers, a.dataset)))


def _child(sub: str, a: argparse.Namespace, *extra: str) -> tuple[float, dict[str, Any]]:
    cmd = [sys.executable, __file__, sub, "--clients", str(a.clients), "--rounds", str(a.rounds), "--threads", str(a.threads),
           "--dataset", a.dataset, *extra]
    if a.dataset_size:
        cmd += ["--dataset-size", str(a.dataset_size)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    wall = time.perf_counter() - t0
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if r.returncode or not line:
        raise SystemExit(f"{sub} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    return wall, json.loads(line[-1][len("RESULT "):])


def _per_round(walls: list[float]) -> float:
    d = [b - a for a, b in zip(walls, walls[1:])]
    return statistics.median(d) if d else float("nan")


def cmd_flower(a: argparse.Namespace) -> None:
    """fldistill (vectorised, then sequential) vs Flower's simulation, whole runs as child processes."""
    from fldistill.runner import resolve_defaults, resolve_model_name

    cfg = resolve_defaults(fedavg_cfg(a.clients, a.rounds, a.dataset_size, a.device, dataset=a.dataset))
    res: dict[str, Any] = {"workload": f"FedAvg, {a.dataset} IID, {a.clients} clients, {resolve_model_name(cfg)}, "
                           f"{cfg.local.amount} local epochs, batch {cfg.local.batch_size}, lr {cfg.local.lr}, "
                           f"{a.rounds} rounds, centralized test evaluation every round", "dataset": a.dataset,
                           "clients": a.clients, "rounds": a.rounds, "dataset_size": a.dataset_size, "runs": {}}
    variants = [("fldistill-vectorised", "fldistill-run", ["--engine", "vectorised"]),
                ("fldistill-sequential", "fldistill-run", ["--engine", "sequential"]),
                ("flower", "flower-run", ["--workers", str(a.workers)])]
    if a.skip_sequential:
        variants = [v for v in variants if v[0] != "fldistill-sequential"]
    for label, sub, extra in variants:
        print(f"running {label} ...", flush=True)
        wall, r = _child(sub, a, *extra)
        r["whole_run_s"], r["s_per_round"] = wall, _per_round(r["round_walls"])
        res["runs"][label] = r
        print(f"  {label}: whole run {wall:.1f}s, {r['s_per_round']:.3f} s/round, accuracy {r['final_accuracy']:.4f}", flush=True)
    fv, fl = res["runs"]["fldistill-vectorised"], res["runs"]["flower"]
    res["whole_run_speedup_vs_flower"] = fl["whole_run_s"] / fv["whole_run_s"]
    res["per_round_speedup_vs_flower"] = fl["s_per_round"] / fv["s_per_round"]
    rows = [("workload", res["workload"])]
    for label, r in res["runs"].items():
        rows += [(f"{label}: whole run incl. start-up (s)", f"{r['whole_run_s']:.1f}"),
                 (f"{label}: s/round (median)", f"{r['s_per_round']:.3f}"),
                 (f"{label}: final accuracy", f"{r['final_accuracy']:.4f}")]
    rows += [("**whole-run speed-up, fldistill vectorised vs Flower**", f"**{res['whole_run_speedup_vs_flower']:.1f}x**"),
             ("**per-round speed-up, fldistill vectorised vs Flower**", f"**{res['per_round_speedup_vs_flower']:.1f}x**")]
    write(a.name or f"flower_{a.clients}" + ("" if a.dataset == "mnist1d" else f"_{a.dataset}"), Path(a.out), res, rows)


# --------------------------------------------------------------------------- kl, hfldd
def cmd_kl(a: argparse.Namespace) -> None:
    """HFLDD's N x N KL matrix on random soft labels (N clients, G public samples, 10 classes)."""
    from fldistill.cluster import kl_matrix

    g = torch.Generator().manual_seed(0)
    soft = torch.softmax(torch.randn(a.clients, a.public, 10, generator=g) * 3, -1).to(a.device)
    kl_matrix(soft[:10])  # warm-up
    times = []
    for _ in range(a.repeat):
        _sync(a.device)
        t0 = time.perf_counter()
        M = kl_matrix(soft)
        _sync(a.device)
        times.append(time.perf_counter() - t0)
    res = {"clients": a.clients, "public": a.public, "seconds": times, "median_s": statistics.median(times), "shape": list(M.shape)}
    write(a.name or f"kl_{a.clients}", Path(a.out), res,
          [("N x G x classes", f"{a.clients} x {a.public} x 10"), ("kl_matrix seconds (median)", f"{res['median_s']:.3f}")])


def cmd_hfldd(a: argparse.Namespace) -> None:
    """HFLDD's phase times on mnist1d (classes:2): soft labels per engine, clustering, distillation, training."""
    from fldistill.config import parse_config
    from fldistill.runner import Runner
    from fldistill.cluster.knowledge import heterogeneous_clusters

    # classes:2 and |D~_i| = 50 so that KIP really runs (single-class members, or members
    # with fewer samples than |D~_i|, send their data without distilling)
    cfg = parse_config({"method": "hfldd", "dataset": "mnist1d", "partition": "classes:2", "clients": a.clients,
                        "rounds": a.rounds, "seed": 0, "device": a.device, "engine": "auto",
                        "params": {"distill_size": 50, "distill_params": {"preset": "fast"}}})
    runner = Runner(cfg, tempfile.mkdtemp(), quiet=True)
    method = runner.build()
    soft: dict[str, float] = {}
    for eng in ("sequential", "vectorised"):
        method.comm.engine = eng
        soft[eng] = heterogeneous_clusters(method.comm, method.model_payload(), method.params, cfg.seed).times["soft_labels_s"]
    info = method.setup()  # vectorised soft labels again, clustering, distillation
    train = {"sequential": [], "vectorised": []}
    for t in range(1, a.rounds + 1):
        start, version = method.global_state, method.version
        for eng in ("sequential", "vectorised") if t % 2 else ("vectorised", "sequential"):
            method.global_state, method.version = start, version
            method.comm.engine = eng
            t0 = time.perf_counter()
            method.round(t)
            train[eng].append(time.perf_counter() - t0)
    res = {"clients": a.clients, "soft_labels_s": soft, "setup": info,
           "train_round_s": train, "train_round_median_s": {k: statistics.median(v) for k, v in train.items()},
           "heads": len(method.heads)}
    rows = [("workload", f"HFLDD, mnist1d classes:2, {a.clients} clients, KIP (preset fast, 50 samples), {len(method.heads)} heads")]
    rows += [(f"soft labels (E1 pre-training + public-set prediction), {k} (s)", f"{v:.2f}") for k, v in soft.items()]
    rows += [("soft labels speed-up", f"{soft['sequential'] / soft['vectorised']:.2f}x"),
             ("clustering: KL matrix + K-Means + ClusterSampling (s)", f"{info['clustering_s']:.3f}"),
             ("distillation, all members (s)", f"{info['distill_s']:.2f}"),
             ("distillation per member (s)", f"{info['distill_seconds_per_member']:.3f}")]
    rows += [(f"training round (heads), {k} (s, median)", f"{v:.3f}") for k, v in res["train_round_median_s"].items()]
    write(a.name or f"hfldd_{a.clients}", Path(a.out), res, rows)


def cmd_summary(a: argparse.Namespace) -> None:
    """The issue's targets from the result files in ``--out`` (writes ``summary.md``)."""
    out = Path(a.out)

    def load(name: str) -> dict[str, Any] | None:
        f = out / f"{name}.json"
        return json.loads(f.read_text()) if f.exists() else None

    rows = ["| figure | measured (ratio within one run) | target |", "|---|---|---|"]
    for dev in ("cpu", "cuda"):
        r100, r1k = load(f"rounds_100_{dev}"), load(f"rounds_1000_{dev}")
        if r100:
            rows.append(f"| [{dev}] vectorised vs sequential, 100 clients, s/round | {r100['speedup_vectorised_vs_sequential']:.2f}x "
                        f"({r100['median_s']['sequential']:.3f} vs {r100['median_s']['vectorised']:.3f} s) | >= 2x |")
            rows.append(f"| [{dev}] vectorised / compute floor, 100 clients | {r100['vectorised_over_floor']:.2f}x | <= 2x |")
            if "vectorised_over_floor_fastchain" in r100:
                rows.append(f"| [{dev}] vectorised / floor of its own kernels (one shared weight set), 100 clients | "
                            f"{r100['vectorised_over_floor_fastchain']:.2f}x | |")
        if r1k:
            rows.append(f"| [{dev}] 1,000 clients: vectorised s/round; vs sequential; / floor | {r1k['median_s']['vectorised']:.2f} s; "
                        f"{r1k.get('speedup_vectorised_vs_sequential', float('nan')):.2f}x; {r1k['vectorised_over_floor']:.2f}x | timed |")
            rows.append(f"| [{dev}] 1,000 clients: peak RSS of the process | {r1k['peak_rss_gib']:.2f} GiB | <= 24 GiB |")
    f100, f1k = load("flower_100"), load("flower_1000")
    if f100:
        rows.append(f"| vs Flower simulation, whole {f100['rounds']}-round run at 100 clients (start-up included) | "
                    f"{f100['whole_run_speedup_vs_flower']:.1f}x ({f100['runs']['flower']['whole_run_s']:.0f} vs "
                    f"{f100['runs']['fldistill-vectorised']['whole_run_s']:.0f} s) | >= 5x |")
    if f1k:
        rows.append(f"| vs Flower simulation, per round at 1,000 clients | {f1k['per_round_speedup_vs_flower']:.1f}x "
                    f"({f1k['runs']['flower']['s_per_round']:.2f} vs {f1k['runs']['fldistill-vectorised']['s_per_round']:.2f} s) | >= 10x |")
    kl, hf = load("kl_1000"), load("hfldd_100")
    if kl:
        rows.append(f"| HFLDD KL matrix, N = 1,000 (G = {kl['public']}) | {kl['median_s']:.2f} s | seconds |")
    if hf:
        sl = hf["soft_labels_s"]
        rows.append(f"| HFLDD soft labels, 100 clients: sequential / vectorised | {sl['sequential']:.1f} / {sl['vectorised']:.1f} s "
                    f"({sl['sequential'] / sl['vectorised']:.2f}x) | phase times |")
        rows.append(f"| HFLDD clustering; KIP per member; heads' round seq / vec | {hf['setup']['clustering_s']:.3f} s; "
                    f"{hf['setup']['distill_seconds_per_member']:.2f} s; {hf['train_round_median_s']['sequential']:.2f} / "
                    f"{hf['train_round_median_s']['vectorised']:.2f} s | phase times |")
    if not load("rounds_100_cuda"):
        rows.append("| GPU | not measured: no GPU was available to this task | same table on GPU |")
    text = "# Engine benchmark summary\n\n" + "\n".join(rows) + "\n"
    (out / "summary.md").write_text(text)
    print(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, fn in [("rounds", cmd_rounds), ("flower", cmd_flower), ("fldistill-run", cmd_fldistill_run),
                     ("flower-run", cmd_flower_run), ("kl", cmd_kl), ("hfldd", cmd_hfldd),
                     ("scale", cmd_scale), ("summary", cmd_summary)]:
        s = sub.add_parser(name, help=fn.__doc__.splitlines()[0])
        s.set_defaults(fn=fn)
        s.add_argument("--clients", type=int, default=100)
        s.add_argument("--rounds", type=int, default=10)
        s.add_argument("--dataset-size", type=int, default=None, help="mnist1d samples (train+test); 200000 for 1,000 clients")
        s.add_argument("--dataset", default="mnist1d", help="flower: the workload's dataset (fashion-mnist: mnist_cnn on 28x28)")
        s.add_argument("--device", default="cpu")
        s.add_argument("--out", default=str(RESULTS))
        s.add_argument("--name", default=None, help="result file name (default from the command)")
        s.add_argument("--engine", default="vectorised")
        s.add_argument("--workers", type=int, default=2, help="Flower: Ray workers (one CPU each)")
        s.add_argument("--public", type=int, default=1000, help="kl: public samples G")
        s.add_argument("--repeat", type=int, default=3)
        s.add_argument("--vectorised-only", action="store_true", help="rounds: skip the sequential engine")
        s.add_argument("--skip-sequential", action="store_true", help="flower: skip the sequential fldistill run")
        s.add_argument("--sizes", default="100,1000,10000", help="scale: client counts")
        s.add_argument("--per-client", type=int, default=200, help="scale: mnist1d samples per client (train + test)")
        s.add_argument("--threads", type=int, default=2,
                       help="torch threads of fldistill (default 2, the 2 cores Flower's 2 single-threaded workers get; "
                            "1 is more robust on a heavily shared machine)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    a.fn(a)


if __name__ == "__main__":
    main()
