"""``fldistill sweep``: a grid of config values times seeds, run by parallel workers.

Every point of the grid and every seed is one ordinary run (``fldistill run`` in a child
process), in ``OUT/<point>/s<seed>``, so each is reproducible from its ``config.json``
alone. The workers split the cores between them (``OMP_NUM_THREADS`` = cores // workers),
so a sweep never oversubscribes the machine. A sweep is resumable: run the same command
again and finished runs are skipped, interrupted ones resume from their last checkpoint,
the rest start. At the end the runs of each point are aggregated over seeds (mean ± std
and a 95% interval, learning curves with bands: :mod:`fldistill.report.seeds`).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fldistill.checks import check_config
from fldistill.config import _coerce, diff_configs, parse_config
from fldistill.errors import ConfigError, check_output_dir, make_output_dir

MANIFEST = "sweep.json"


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: a grid point (``label``, its ``overrides``) and a seed."""

    label: str
    seed: int
    overrides: tuple[tuple[str, Any], ...]
    out: Path

    @property
    def name(self) -> str:
        return f"{self.label}/s{self.seed}"

    @property
    def key(self) -> str:
        """The file stem of its config (``OUT/configs``) and log (``OUT/logs``)."""
        return f"{self.label}-s{self.seed}"

    def log(self, sweep_dir: Path) -> Path:
        return sweep_dir / "logs" / f"{self.key}.log"


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["local.lr=0.05,0.1", "params.mu=[0, 0.01]"]`` -> ``{"local.lr": [0.05, 0.1], "params.mu": [0, 0.01]}``.

    Values are comma-separated (coerced like ``--set``) or one JSON list (for values that
    hold commas themselves).
    """
    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid expects KEY=V1,V2,..., got '{item}' (e.g. --grid local.lr=0.05,0.1)")
        key, text = (s.strip() for s in item.split("=", 1))
        if not key or not text:
            raise ConfigError(f"--grid '{item}': both a key and at least one value are needed")
        if key in grid:
            raise ConfigError(f"--grid names '{key}' twice; give all its values in one --grid {key}=V1,V2")
        if key in ("seed", "name"):
            raise ConfigError(f"--grid {key}: use --seeds for seeds; run folders are named by the sweep")
        if text.startswith("["):
            try:
                values = json.loads(text)
            except json.JSONDecodeError as err:
                raise ConfigError(f"--grid {key}: '{text}' is not a JSON list ({err.msg})") from None
        else:
            values = [_coerce(v.strip()) for v in text.split(",") if v.strip()]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"--grid {key}: no values in '{text}'")
        if len({json.dumps(v) for v in values}) != len(values):
            raise ConfigError(f"--grid {key}: a value is listed twice in '{text}'")
        grid[key] = values
    return grid


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-4"`` -> seeds, each a non-negative integer, no repeats."""
    seeds: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            if re.fullmatch(r"\d+-\d+", part):
                a, b = (int(x) for x in part.split("-"))
                seeds.extend(range(a, b + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise ConfigError(f"--seeds expects integers like 0,1,2 or 0-4, got '{text}'") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds '{text}': give distinct non-negative integers, e.g. 0,1,2")
    return seeds


def _value_text(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def point_label(overrides: tuple[tuple[str, Any], ...]) -> str:
    """A folder-safe name of a grid point: ``local.lr-0.05_params.mu-0`` (``base`` without a grid)."""
    if not overrides:
        return "base"
    text = "_".join(f"{k}-{_value_text(v)}" for k, v in overrides)
    return re.sub(r"[^A-Za-z0-9._=+-]", "", text.replace(" ", "")) or "point"


def plan(base: dict[str, Any], grid: dict[str, list[Any]], seeds: list[int], out: Path) -> list[SweepRun]:
    """Every run of the sweep, each config validated (torch-free) before anything starts."""
    runs: list[SweepRun] = []
    keys = list(grid)
    for values in itertools.product(*(grid[k] for k in keys)):
        overrides = tuple(zip(keys, values))
        label = point_label(overrides)
        for seed in seeds:
            run = SweepRun(label, seed, overrides, out / label / f"s{seed}")
            try:
                check_config(parse_config(run_config(base, run)))
            except ConfigError as err:
                raise ConfigError(f"sweep point {run.name}: {err}") from None
            runs.append(run)
    if len({r.out for r in runs}) != len(runs):
        raise ConfigError("two grid points map to the same folder name; use values that differ in letters or digits")
    return runs


def run_config(base: dict[str, Any], run: SweepRun) -> dict[str, Any]:
    """The explicit config of one run: the sweep's base with the point's values and the seed."""
    cfg = json.loads(json.dumps(base))
    for key, value in run.overrides:  # the exact grid values, typed as the user wrote them
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--grid {key}: '{p}' is not a section")
        node[last] = value
    cfg["seed"] = run.seed
    cfg.pop("name", None)
    return cfg


def check_manifest(out: Path, base: dict[str, Any]) -> None:
    """One sweep folder holds one base config: refuse another (more points or seeds are fine)."""
    path = out / MANIFEST
    if not path.is_file():
        return
    # Compared as full configs, so a key given explicitly at its default is no change.
    saved = parse_config(json.loads(path.read_text()).get("base") or {}).model_dump(mode="json")
    diff = diff_configs(saved, parse_config(base).model_dump(mode="json"))
    if diff:
        what = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items()))
        raise ConfigError(f"sweep folder {out} holds a sweep of another base config ({what}); use another --out")


def worker_env(threads: int) -> dict[str, str]:
    """The environment of a worker: ``threads`` torch/BLAS threads, so workers split the cores."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    return env


def available_cores() -> int:
    """Cores this process may use (its CPU affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass
class Outcome:
    """How one run of the sweep ended."""

    run: SweepRun
    status: str  # done | skipped | resumed | failed
    seconds: float = 0.0
    message: str = ""


def _command(run: SweepRun, cfg_path: Path, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "fldistill.cli", "run", "--config", str(cfg_path), "--out", str(run.out), "--quiet"]
    return [*cmd, "--resume"] if resume else cmd


def execute(
    base: dict[str, Any],
    runs: list[SweepRun],
    out: Path,
    *,
    workers: int | None = None,
    console: Console | None = None,
    quiet: bool = False,
) -> list[Outcome]:
    """Run every run that is not finished, ``workers`` at a time; returns how each ended."""
    console = console or Console(stderr=True)
    out = check_output_dir(out)
    check_manifest(out, base)
    make_output_dir(out)
    # The manifest lists every run this folder's sweeps planned, earlier calls' too, so the
    # aggregate of a folder filled by several calls (another grid, more seeds) covers them all.
    entries = {(e["label"], e["seed"]): e for e in manifest_entries(out)}
    entries.update({(r.label, r.seed): {"label": r.label, "seed": r.seed, "dir": str(r.out)} for r in runs})
    manifest = {"format": "fldistill.sweep/1", "base": base, "runs": list(entries.values())}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    (out / "configs").mkdir(exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    outcomes: list[Outcome] = []
    pending: list[tuple[SweepRun, bool]] = []
    for r in runs:
        if _finished(r, base):
            outcomes.append(Outcome(r, "skipped", message="finished earlier"))
        else:  # interrupted, or finished with fewer rounds: the resume continues it (and refuses any other change)
            pending.append((r, (r.out / "checkpoint" / "state.safetensors").is_file()))
    cores = available_cores()
    n_workers = max(1, min(workers or cores, len(pending) or 1))
    threads = max(1, cores // n_workers)
    env = worker_env(threads)
    console.print(  # one line even when quiet: what will run, and how the cores are split
        f"sweep: {len(runs)} runs, {len(outcomes)} finished earlier, {sum(res for _, res in pending)} to resume; "
        f"{n_workers} workers x {threads} threads on {cores} cores",
        highlight=False,
    )
    running: dict[subprocess.Popen[bytes], tuple[SweepRun, bool, float]] = {}
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*cols, console=console, disable=quiet) as progress:
        bar = progress.add_task("sweep runs", total=len(runs), completed=len(outcomes))
        queue = list(pending)
        try:
            while queue or running:
                while queue and len(running) < n_workers:
                    r, resume = queue.pop(0)
                    cfg_path = out / "configs" / f"{r.key}.json"
                    cfg_path.write_text(json.dumps(run_config(base, r), indent=2, sort_keys=True) + "\n")
                    log = open(r.log(out), "ab")  # noqa: SIM115 - closed when the child ends
                    proc = subprocess.Popen(_command(r, cfg_path, resume), stdout=log, stderr=subprocess.STDOUT, env=env)
                    log.close()  # the child holds its own descriptor
                    running[proc] = (r, resume, time.perf_counter())
                for proc in [p for p in running if p.poll() is not None]:
                    r, resume, t0 = running.pop(proc)
                    dt = time.perf_counter() - t0
                    if proc.returncode == 0:
                        outcomes.append(Outcome(r, "resumed" if resume else "done", dt))
                    else:
                        outcomes.append(Outcome(r, "failed", dt, _last_error(r.log(out))))
                    progress.advance(bar)
                time.sleep(0.2)
        except KeyboardInterrupt:
            for proc in running:
                proc.terminate()
            for proc in running:
                proc.wait()
            raise KeyboardInterrupt("sweep interrupted; run the same command again to continue (finished runs are kept)") from None
    order = {r.out: i for i, r in enumerate(runs)}
    return sorted(outcomes, key=lambda o: order[o.run.out])


def manifest_entries(out: Path) -> list[dict[str, Any]]:
    """The runs recorded in ``out``'s manifest (every call's), in the order they were planned."""
    path = out / MANIFEST
    return list(json.loads(path.read_text()).get("runs", [])) if path.is_file() else []


def finished_runs(out: Path) -> list[Path]:
    """The folders of the manifest's runs that have a summary: what the sweep's aggregate covers.

    Found under ``out`` by point and seed (``dir`` records the path as given, which may be
    relative to another working directory).
    """
    dirs = [out / e["label"] / f"s{e['seed']}" for e in manifest_entries(out)]
    return [d for d in dirs if (d / "summary.json").is_file()]


def _finished(run: SweepRun, base: dict[str, Any]) -> bool:
    """The run has its summary for at least the sweep's number of rounds."""
    if not (run.out / "summary.json").is_file() or not (run.out / "config.json").is_file():
        return False
    saved = json.loads((run.out / "config.json").read_text())
    return int(saved.get("rounds", 0)) >= parse_config(run_config(base, run)).rounds


def _last_error(log: Path) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.is_file() else []
    errs = [ln for ln in lines if ln.startswith("error:")]
    return (errs or lines or ["no output"])[-1].strip()[:300]


def aggregate(run_dirs: list[Path], out: Path, target: float | None = None) -> Table:
    """Group the finished runs by grid point over seeds; write ``sweep.md``, ``sweep.csv`` and ``accuracy_bands.png``."""
    from fldistill.report.compare import load_run
    from fldistill.report.seeds import group_runs, render_seed_table, write_seed_files

    rows = write_seed_files(group_runs([load_run(d) for d in run_dirs]), out, "sweep", target)
    return render_seed_table(rows, title=f"sweep {out}: mean ± std over seeds, 95% interval")


TUNE_FRACTION = 0.1  # validation share of each client's training data when tuning (unless the config sets one)


@dataclass(frozen=True)
class PointScore:
    """A grid point's validation score over seeds (mean of the last k rounds' ``val_accuracy``)."""

    label: str
    overrides: tuple[tuple[str, Any], ...]
    mean: float
    std: float
    seeds: int


def score_points(runs: list[SweepRun], last: int = 5) -> list[PointScore]:
    """Score every grid point whose runs all finished, best first; the global test set is never read."""
    import statistics

    from fldistill.report.compare import load_run, metric_series

    by_point: dict[str, list[SweepRun]] = {}
    for r in runs:
        by_point.setdefault(r.label, []).append(r)
    scores = []
    for label, point in by_point.items():
        vals = []
        for r in point:
            if not (r.out / "summary.json").is_file():
                break
            rounds, values = metric_series(load_run(r.out).metrics, "val_accuracy")
            val = [v for t, v in zip(rounds, values) if t >= 1]
            if not val:
                break
            vals.append(sum(val[-last:]) / len(val[-last:]))
        else:
            std = statistics.stdev(vals) if len(vals) > 1 else 0.0
            scores.append(PointScore(label, point[0].overrides, statistics.fmean(vals), std, len(vals)))
    return sorted(scores, key=lambda s: -s.mean)


def tuned_config(base: dict[str, Any], best: PointScore, fraction_was_set: bool) -> dict[str, Any]:
    """The base config with the chosen values: what ``fldistill run --config tuned.json`` runs (on all training data)."""
    cfg = run_config(base, SweepRun(best.label, 0, best.overrides, Path()))
    cfg.pop("seed", None)
    if not fraction_was_set:
        cfg.pop("validation_fraction", None)  # tuning held data out; the tuned run trains on all of it
    return cfg
