"""``fldistill show``: one run folder at a glance (config, status, summary, per-round table, artefacts).

Imports neither torch nor numpy, so the command starts at once; everything is read from the
run folder's JSON files through :mod:`fldistill.report.compare`.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fldistill.errors import ConfigError
from fldistill.report.compare import (
    RunRecord,
    _summary_from_metrics,
    _total_bits,
    format_bits,
    format_cell,
    last_k_label,
    load_run,
    trained_rounds,
)

# Rows of the per-round table when the caller gives no cap.
DEFAULT_ROWS = 20

# Rows always shown at each end of a long run's table (the rest are every k-th round).
END_ROWS = 3

# Method metrics listed from the last round, at most this many (the rest are in metrics.jsonl).
MAX_EXTRA_METRICS = 8

# Keys of a metrics row shown elsewhere (the per-round table or the summary), not as method metrics.
_STANDARD_KEYS = {"round", "accuracy", "loss", "bits", "bits_total", "wall_s"}

_HINT = "pass a folder made by `fldistill run --out`"


def check_run_dir(run_dir: Path) -> Path:
    """``run_dir`` if it is a run folder, else a one-line :class:`ConfigError` saying what to pass instead.

    Parameters
    ----------
    run_dir : Path
        Candidate run folder.

    Returns
    -------
    Path
        The same folder.

    Raises
    ------
    ConfigError
        The path does not exist, is a file, or has neither ``config.json`` nor ``metrics.jsonl``
        (or only ``config.json``: the run stopped before recording round 0).
    """
    p = Path(run_dir)
    if not p.exists():
        raise ConfigError(f"{p} does not exist; {_HINT}")
    if not p.is_dir():
        if p.name in ("config.json", "metrics.jsonl", "summary.json"):
            raise ConfigError(f"{p} is a file, not a run folder; pass the folder that holds it ({p.parent})")
        raise ConfigError(f"{p} is a file, not a run folder; {_HINT}")
    has_config, has_metrics = (p / "config.json").is_file(), (p / "metrics.jsonl").is_file()
    if has_config and not has_metrics:
        raise ConfigError(f"{p} has config.json but no metrics.jsonl: the run stopped before round 0; re-run it")
    if not has_metrics:
        inner = sorted(c.name for c in p.iterdir() if c.is_dir() and (c / "metrics.jsonl").is_file())
        if inner:  # e.g. the demo's output folder: point at the runs inside it
            names = ", ".join(inner[:3]) + (", ..." if len(inner) > 3 else "")
            raise ConfigError(f"{p} is not a run folder but holds run folders ({names}); pass one of them")
        raise ConfigError(f"{p} is not a run folder (no config.json or metrics.jsonl); {_HINT}")
    return p


@dataclass
class RunStatus:
    """Whether a run finished, in words.

    Attributes
    ----------
    complete : bool
        ``summary.json`` exists and the metrics reach the configured number of rounds.
    last_round : int
        Last round in ``metrics.jsonl``.
    planned : int or None
        ``rounds`` of ``config.json``.
    text : str
        E.g. ``"complete (3 of 3 rounds)"`` or ``"incomplete at round 2 of 7 (no summary.json)"``.
    """

    complete: bool
    last_round: int
    planned: int | None
    text: str


def run_status(rec: RunRecord) -> RunStatus:
    """The status of a loaded run (a summary.json left by a shorter run being extended does not count).

    Parameters
    ----------
    rec : RunRecord
        From :func:`fldistill.report.compare.load_run`.

    Returns
    -------
    RunStatus
    """
    last = int(rec.metrics[-1]["round"])
    planned = rec.config.get("rounds")
    planned = int(planned) if isinstance(planned, int) else None
    of = f" of {planned}" if planned is not None else ""
    error = rec.run_dir / "error.txt"
    if error.is_file():  # the Flower apps write the error there instead of a summary
        first = (error.read_text(encoding="utf-8", errors="replace").strip().splitlines() or ["?"])[0]
        return RunStatus(False, last, planned, f"failed at round {last}{of}: {first}")
    has_summary = (rec.run_dir / "summary.json").is_file()
    if has_summary and (planned is None or last >= planned):
        return RunStatus(True, last, planned, f"complete ({last}{of} rounds)")
    why = "summary.json is from a shorter run, now extended" if has_summary else "no summary.json"
    return RunStatus(False, last, planned, f"incomplete at round {last}{of} ({why})")


def _compact(value: Any) -> str:
    """A config value on one line (JSON for lists and dicts)."""
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return f"{value:g}" if isinstance(value, float) else str(value)


def config_lines(config: dict, summary: dict) -> list[tuple[str, str]]:
    """The key settings of a run as (name, value) pairs, a handful of lines.

    Parameters
    ----------
    config : dict
        ``config.json`` (may be empty).
    summary : dict
        The run's summary (it names the resolved model and partition).

    Returns
    -------
    list of (str, str)
    """
    if not config:
        return [("config", "config.json missing: settings unknown")]
    params = config.get("params") or {}
    method = str(config.get("method", summary.get("method", "?")))
    if params:
        method += "  (" + ", ".join(f"{k}={_compact(v)}" for k, v in params.items()) + ")"
    clients = f"{config.get('clients', '?')} clients"
    part = config.get("participation")
    if isinstance(part, int | float) and part != 1:
        clients += f" (participation {part:g})"
    data = f"{config.get('dataset', '?')}, partition {summary.get('partition') or config.get('partition', '?')}, {clients}"
    model = str(config.get("model", "?"))
    resolved = summary.get("model")
    if resolved and resolved != model:
        model = f"{resolved} ({model})"
    lines = [
        ("method", method),
        ("data", data),
        ("rounds", f"{config.get('rounds', '?')}, seed {config.get('seed', '?')}, model {model}"),
    ]
    local = config.get("local") or {}
    if local:
        unit = str(local.get("unit", "epochs"))
        parts = [f"{local.get('amount', '?')} {unit}", f"batch {local.get('batch_size', '?')}", f"lr {_compact(local.get('lr', '?'))}"]
        parts += [f"{k.replace('_', ' ')} {_compact(local[k])}" for k in ("momentum", "weight_decay") if k in local]
        lines.append(("local", ", ".join(parts)))
    run_on = f"{config.get('engine', '?')} engine on {config.get('device', '?')}"
    if config.get("eval_every", 1) != 1:
        run_on += f", personalised evaluation every {config['eval_every']} rounds"
    lines.append(("engine", run_on))
    return lines


def _hop_split(row: dict) -> str:
    """``"client->server 250.08 kB, server->client 166.72 kB"``: the non-zero hops of a cumulative row."""
    hops = sorted(((h, int(b)) for h, b in (row.get("bits") or {}).items() if b), key=lambda hb: -hb[1])
    return ", ".join(f"{h} {format_bits(b)}" for h, b in hops)


def shown_summary(rec: RunRecord, status: RunStatus) -> dict:
    """The summary to show: summary.json's for a complete run, else one computed from the metrics.

    A stale summary.json (a run being extended to more rounds) must not mask the newer rounds.
    """
    return rec.summary if status.complete else _summary_from_metrics(rec.config, rec.metrics)


def summary_lines(rec: RunRecord, status: RunStatus) -> list[tuple[str, str]]:
    """The run's headline numbers as (name, value) pairs.

    Parameters
    ----------
    rec : RunRecord
        The loaded run.
    status : RunStatus
        From :func:`run_status`; an incomplete run's numbers come from its metrics only.

    Returns
    -------
    list of (str, str)
    """
    s = shown_summary(rec, status)
    last = rec.metrics[-1]
    n_trained = trained_rounds(rec.metrics)
    lines = [
        ("final accuracy", f"{format_cell(s.get('final_accuracy'))} (round {status.last_round})"),
        (last_k_label(n_trained), format_cell(s.get("final_accuracy_mean5"))),
        ("best accuracy", f"{format_cell(s.get('best_accuracy'))} (round {s.get('best_round', '?')})"),
    ]
    personal = s.get("final_personalized_accuracy")
    if personal is None:  # a stale or partial summary: the last row that has it
        personal = next((m.get("personalized_accuracy") for m in reversed(rec.metrics) if m.get("personalized_accuracy") is not None), None)
    if personal is not None:
        worst = s.get("final_personalized_accuracy_worst10")
        worst_text = f" (worst 10% of clients: {format_cell(worst)})" if worst is not None else ""
        lines.append(("personalised accuracy", format_cell(personal) + worst_text))
    total = _total_bits(last)
    split = _hop_split(last)
    lines.append(("sent", format_bits(total) + (f": {split}" if split else "")))
    wall, spr = s.get("wall_s"), s.get("seconds_per_round")
    lines.append(("wall time", f"{format_cell(wall, 1)} s" + (f" ({format_cell(spr, 3)} s/round)" if spr is not None else "")))
    extra = _extra_metrics(last)
    if extra:
        lines.append((f"round {status.last_round} metrics", extra))
    return lines


def _extra_metrics(row: dict) -> str:
    """A method's own scalar metrics of one row, ``"train_loss 1.4502, participants 4"`` (capped)."""
    items = [
        (k, v) for k, v in row.items()
        if k not in _STANDARD_KEYS and not k.startswith("personalized_") and isinstance(v, int | float) and not isinstance(v, bool)
    ]
    # Per-cluster or per-group series (cluster0_accuracy, ...) after the run-wide ones, which the cap must keep.
    items.sort(key=lambda kv: any(c.isdigit() for c in kv[0]))
    text = ", ".join(f"{k} {format_cell(v)}" for k, v in items[:MAX_EXTRA_METRICS])
    if len(items) > MAX_EXTRA_METRICS:
        text += f", +{len(items) - MAX_EXTRA_METRICS} more in metrics.jsonl"
    return text


def _ordinal(n: int) -> str:
    """``2nd``, ``3rd``, ``11th``, ``21st``."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def select_rows(rounds: list[int], cap: int, best: int | None = None) -> tuple[list[int], str]:
    """Which rows of a per-round table to show: all, or the first and last few, every k-th round and the best.

    Parameters
    ----------
    rounds : list of int
        Round numbers of the metrics rows, ascending.
    cap : int
        Most rows to show (0: all of them).
    best : int, optional
        Index of the best row, kept in the table when the cap leaves room.

    Returns
    -------
    (list of int, str)
        Indices into ``rounds``, ascending, and a note saying what was left out ('' when nothing was).
    """
    n = len(rounds)
    if cap <= 0 or n <= cap:
        return list(range(n)), ""
    if cap == 1:
        return [n - 1], f"showing the last of {n} rounds"
    ends = max(1, min(END_ROWS, cap // 5))
    chosen = set(range(ends)) | set(range(n - ends, n))
    budget = cap - len(chosen) - (1 if best is not None else 0)
    step = 0
    if budget > 0 and n - 2 * ends > 0:
        lo, hi = rounds[ends], rounds[n - ends - 1]
        step = math.ceil((hi - lo + 1) / budget)  # round numbers, not indices: "every 10th round" reads plainly
        chosen |= {i for i in range(ends, n - ends) if rounds[i] % step == 0}
    if best is not None and len(chosen) < cap:
        chosen.add(best)
    parts = [f"first {ends}", f"last {ends}"]
    if step > 1:
        parts.insert(1, f"every {_ordinal(step)} round")
    if best is not None and best in chosen:
        parts.append("the best")
    picked = sorted(chosen)
    return picked, f"showing {len(picked)} of {n} rounds: " + ", ".join(parts[:-1]) + " and " + parts[-1]


def round_table(rec: RunRecord, cap: int = DEFAULT_ROWS, best_round: int | None = None) -> tuple[Table, str]:
    """The per-round table of a run: accuracy, loss, bits this round and in total, seconds.

    Parameters
    ----------
    rec : RunRecord
        The loaded run.
    cap : int
        Most rows (0: every round); see :func:`select_rows`.
    best_round : int, optional
        The round marked best (the summary's ``best_round``, so the two agree); default: the
        first round with the highest accuracy.

    Returns
    -------
    (rich.table.Table, str)
        The table and a line of notes for under it (which rounds are shown, what the marks mean);
        printed apart so that it wraps at the console's width, not the narrow table's.
    """
    m = rec.metrics
    accs = [float(r["accuracy"]) for r in m]
    rounds = [int(r["round"]) for r in m]
    best = rounds.index(best_round) if best_round in rounds else max(range(len(m)), key=lambda i: (accs[i], -i))
    picked, note = select_rows(rounds, cap, best)
    personal = any(r.get("personalized_accuracy") is not None for r in m)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, show_edge=False)
    headers = ["round", "accuracy", "loss", "sent this\nround", "sent\ntotal", "seconds"] + (["personalised\naccuracy"] if personal else [])
    for header in headers:
        table.add_column(header, justify="right", no_wrap=True)
    averaged = False
    for i in picked:
        row = m[i]
        total = _total_bits(row)
        wall = float(row.get("wall_s") or 0.0)
        if i == 0:
            d_bits, d_wall, span = float(total), wall, 1
        else:
            prev = m[i - 1]
            span = max(1, int(row["round"]) - int(prev["round"]))  # > 1 when rows are missing (corrupt lines skipped)
            d_bits, d_wall = (total - _total_bits(prev)) / span, (wall - float(prev.get("wall_s") or 0.0)) / span
        mark = "~" if span > 1 else ""
        averaged |= span > 1
        cells = [
            str(row["round"]),
            format_cell(accs[i]) + (" *" if i == best else "  "),
            format_cell(row.get("loss")),
            mark + format_bits(d_bits),
            format_bits(total),
            f"{mark}{d_wall:.2f}",
        ]
        if personal:
            cells.append(format_cell(row.get("personalized_accuracy")))
        table.add_row(*cells)
    notes = ["* best accuracy", "round 0 = the initial evaluation (seconds: the setup)"]
    if averaged:
        notes.append("~ = averaged over rounds missing from metrics.jsonl")
    if note:
        notes.insert(0, note)
    return table, "; ".join(notes)


def _compare_dirs(run_dir: Path) -> list[Path]:
    """Compare folders holding this run: ``<run>/compare``, or ``<parent>/compare`` (the CLI's default) if it lists this run."""
    found = []
    inside = run_dir / "compare"
    if (inside / "compare.csv").is_file() or (inside / "compare.md").is_file():
        found.append(inside)
    sibling = run_dir.parent / "compare"
    csv_path = sibling / "compare.csv"
    if csv_path.is_file():
        try:
            with csv_path.open(newline="", encoding="utf-8") as fh:
                listed = [r.get("run_dir") or "" for r in csv.DictReader(fh)]
        except (OSError, UnicodeDecodeError, csv.Error):
            listed = []
        here = run_dir.resolve()
        # compare.csv keeps the paths as given: an absolute one must match, a relative one by its name
        if any(Path(p).resolve() == here if Path(p).is_absolute() else Path(p).name == run_dir.name for p in listed if p):
            found.append(sibling)
    return found


def artefacts(rec: RunRecord) -> list[tuple[str, str]]:
    """The files a run left besides its JSON records, as (what, path and note) pairs.

    Parameters
    ----------
    rec : RunRecord
        The loaded run.

    Returns
    -------
    list of (str, str)
    """
    d = rec.run_dir
    out = [("plot", str(p)) for p in sorted((d / "plots").glob("*.png"))]
    clustering = d / "clustering.json"
    if clustering.is_file():
        note = ""
        try:
            doc = json.loads(clustering.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            doc = None
        if isinstance(doc, dict):
            n = doc.get("clusters")
            n = len(n) if isinstance(n, list) else n
            bits = [f"round {doc['round']}" if isinstance(doc.get("round"), int) else "", f"{n} clusters" if isinstance(n, int) else ""]
            note = ", ".join(b for b in bits if b)
        out.append(("clustering", str(clustering) + (f" ({note})" if note else "")))
    if (d / "checkpoint").is_dir():
        out.append(("checkpoint", str(d / "checkpoint")))
    if (d / "error.txt").is_file():
        out.append(("error", str(d / "error.txt")))
    for cmp in _compare_dirs(d):
        for name in ("compare.md", "compare.csv", "accuracy_vs_round.png", "accuracy_vs_bits.png"):
            if (cmp / name).is_file():
                out.append(("compare", str(cmp / name)))
    return out


def _pairs(pairs: list[tuple[str, str]]) -> Table:
    """A borderless two-column grid: bold names, escaped values."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    for name, value in pairs:
        grid.add_row(escape(name), escape(value))
    return grid


def show_run(run_dir: Path, console: Console, rounds: int | None = None) -> None:
    """Print one run folder: key config, status, summary, a per-round table and the artefacts' paths.

    Parameters
    ----------
    run_dir : Path
        A folder written by ``fldistill run --out`` (complete, interrupted or still running).
    console : rich.console.Console
        Where to print.
    rounds : int, optional
        Most rows of the per-round table (default :data:`DEFAULT_ROWS`; 0 shows every round).
        A longer run shows its first and last rounds, every k-th round and the best.

    Raises
    ------
    ConfigError
        ``run_dir`` is missing, a file, or not a run folder (see :func:`check_run_dir`), or
        ``rounds`` is negative.
    DataError
        ``config.json`` or ``summary.json`` is corrupt, or no line of ``metrics.jsonl`` is valid
        (a corrupt line among valid ones is skipped, and said so).
    """
    if rounds is not None and rounds < 0:
        raise ConfigError(f"rounds must be >= 0 (0 shows every round), got {rounds}")
    rec = load_run(check_run_dir(Path(run_dir)), skip_corrupt=True)
    status = run_status(rec)
    colour = "green" if status.complete else ("red" if status.text.startswith("failed") else "yellow")
    console.print(f"[bold]run[/] {escape(str(rec.run_dir))}")
    console.print(f"[bold]status[/] [{colour}]{escape(status.text)}[/]")
    if not status.complete and (rec.run_dir / "checkpoint").is_dir():
        # soft_wrap: a command to copy stays on one line
        console.print(f"continue with: fldistill run --resume --out {escape(str(rec.run_dir))}", soft_wrap=True)
    if rec.skipped_lines:
        lines = ", ".join(map(str, rec.skipped_lines[:5])) + (", ..." if len(rec.skipped_lines) > 5 else "")
        n = len(rec.skipped_lines)
        console.print(f"[yellow]skipped {n} corrupt line{'s' if n > 1 else ''} of metrics.jsonl (line {lines})[/]")
    console.print()
    console.print(_pairs(config_lines(rec.config, rec.summary)))
    console.print()
    console.print(_pairs(summary_lines(rec, status)))
    console.print()
    best_round = shown_summary(rec, status).get("best_round")
    table, notes = round_table(rec, DEFAULT_ROWS if rounds is None else rounds, best_round if isinstance(best_round, int) else None)
    console.print(table)
    console.print(f"[dim]{escape(notes)}[/]")
    files = artefacts(rec)
    if files:
        console.print()
        width = max(len(what) for what, _ in files)
        for what, path in files:  # one unwrapped line each, so paths can be copied whole
            console.print(f"[bold]{escape(what.ljust(width))}[/]  {escape(path)}", soft_wrap=True)
