"""Loading run folders and comparing runs (tables, CSV, overlay plots)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from fldistill.errors import DataError

# Fraction of the reference accuracy used as the default target (HFLDD-style "80% of centralized").
TARGET_FRACTION = 0.8

# Tolerance when comparing accuracy to the target (0.8 * 0.9 is 0.7200000000000001 in floats).
TARGET_TOL = 1e-9

# Column order of compare.csv (and of the rows returned by compare_runs).
CSV_COLUMNS = [
    "label",
    "method",
    "dataset",
    "partition",
    "seed",
    "status",
    "final_accuracy",
    "final_accuracy_mean5",
    "best_accuracy",
    "best_round",
    "total_bits",
    "total_MB",
    "target",
    "rounds_to_target",
    "bits_to_target",
    "wall_s",
    "seconds_per_round",
    "run_dir",
]

# The summary's "final accuracy" mean covers the last MEAN_K trained rounds, or all of them when
# fewer were trained (summary.json keeps the key name final_accuracy_mean5 either way).
MEAN_K = 5

# Personalised-evaluation columns, appended (to the CSV and the tables) only when some run
# logged personalised metrics, so older comparisons stay exactly as they were.
PERSONAL_COLUMNS = ["final_personalized_accuracy", "final_personalized_accuracy_worst10"]


@dataclass
class RunRecord:
    """One run folder, loaded.

    Attributes
    ----------
    run_dir : Path
        The run folder.
    config : dict
        Contents of ``config.json`` (empty when the file is absent).
    metrics : list of dict
        Rows of ``metrics.jsonl`` sorted by round (last row wins for a repeated round).
    summary : dict
        Contents of ``summary.json``, completed from the metrics; computed with
        ``status="incomplete"`` when the file is absent (interrupted run).
    label : str
        ``"<method> <partition>"``; :func:`compare_runs` disambiguates equal labels.
    skipped_lines : list of int
        Line numbers of corrupt ``metrics.jsonl`` lines that were skipped (only with
        ``load_run(..., skip_corrupt=True)``; otherwise such a line raises).
    """

    run_dir: Path
    config: dict
    metrics: list[dict]
    summary: dict
    label: str
    skipped_lines: list[int] = field(default_factory=list)


def trained_rounds(metrics: list[dict]) -> int:
    """Number of trained rounds recorded (rows with ``round >= 1``; round 0 is the initial evaluation)."""
    return sum(1 for m in metrics if int(m["round"]) >= 1)


def last_k(n_trained: int) -> int:
    """How many rounds ``final_accuracy_mean5`` averages: ``min(5, n_trained)``, 1 (round 0) when none was trained."""
    return min(MEAN_K, n_trained) if n_trained > 0 else 1


def last_k_label(n_trained: int) -> str:
    """What ``final_accuracy_mean5`` is, in words, for a run with ``n_trained`` trained rounds.

    Parameters
    ----------
    n_trained : int
        Trained rounds (``summary["rounds"]`` of a finished run, or :func:`trained_rounds`).

    Returns
    -------
    str
        ``"mean of last 5 rounds"``, ``"mean of last 3 rounds"`` for a 3-round run,
        ``"mean of last 1 round"``, or ``"round 0 only (no round trained)"``.
    """
    if n_trained <= 0:
        return "round 0 only (no round trained)"
    k = last_k(n_trained)
    return f"mean of last {k} round{'s' if k != 1 else ''}"


def format_bits(bits: int | float | None) -> str:
    """Format a bit count as human-readable bytes (SI units).

    Parameters
    ----------
    bits : int or None
        Number of bits; ``None`` gives ``"-"``.

    Returns
    -------
    str
        E.g. ``"1.23 MB"`` for 9.84e6 bits (bytes = bits / 8, 1 MB = 1e6 bytes).
    """
    if bits is None or (isinstance(bits, float) and not math.isfinite(bits)):
        return "-"
    n_bytes = float(bits) / 8.0
    if abs(n_bytes) < 1e3:
        return f"{n_bytes:.0f} B"
    for unit, scale in (("kB", 1e3), ("MB", 1e6), ("GB", 1e9)):
        if abs(n_bytes) < scale * 1e3:
            return f"{n_bytes / scale:.2f} {unit}"
    return f"{n_bytes / 1e12:.2f} TB"


def _read_json(path: Path) -> dict:
    """Read a JSON object file, raising DataError with a one-line message."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read ({exc}); check the file permissions") from exc
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); "
            "delete or fix the file (summary.json is recomputed from metrics.jsonl when absent)"
        ) from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, found {type(data).__name__}; fix or delete the file")
    return data


def _read_metrics(path: Path, skipped: list[int] | None = None) -> list[dict]:
    """Read metrics.jsonl: one JSON object per line, each with ``round`` and ``accuracy``.

    A corrupt line raises :class:`DataError`, or, when ``skipped`` is a list, has its line
    number appended to it and is left out (a viewer of a run being written, or killed
    mid-line, still shows the rest).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read ({exc}); check the file permissions") from exc
    by_round: dict[int, dict] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = _parse_metrics_line(path, lineno, line)
        except DataError:
            if skipped is None:
                raise
            skipped.append(lineno)
            continue
        by_round[row["round"]] = row  # a resumed run may repeat a round: keep the latest
    if not by_round:
        if skipped:
            raise DataError(f"{path}: no valid metrics line ({len(skipped)} corrupt skipped); fix the file or re-run")
        raise DataError(f"{path}: no metrics recorded; the run stopped before round 0, re-run it")
    return [by_round[r] for r in sorted(by_round)]


def _parse_metrics_line(path: Path, lineno: int, line: str) -> dict:
    """One metrics.jsonl row with an integer ``round``, or a one-line :class:`DataError`."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} line {lineno}: not valid JSON ({exc.msg}); fix or delete that line") from exc
    if not isinstance(row, dict) or "round" not in row or "accuracy" not in row:
        raise DataError(f"{path} line {lineno}: expected an object with 'round' and 'accuracy'; fix or delete that line")
    try:
        row["round"] = int(row["round"])
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path} line {lineno}: 'round' must be an integer; fix that line") from exc
    return row


def _total_bits(row: dict) -> int:
    """Cumulative total bits of a metrics row (sum of hops when bits_total is absent)."""
    if row.get("bits_total") is not None:
        return int(row["bits_total"])
    return int(sum((row.get("bits") or {}).values()))


def _summary_from_metrics(config: dict, metrics: list[dict]) -> dict:
    """Compute the summary fields of a run from its metrics (used for interrupted runs)."""
    trained = [m for m in metrics if m["round"] >= 1] or metrics
    accs = [float(m["accuracy"]) for m in metrics]
    best_i = max(range(len(accs)), key=lambda i: (accs[i], -i))  # first round reaching the max
    last = metrics[-1]
    wall = float(last.get("wall_s", 0.0) or 0.0)
    last_round = int(last["round"])
    return {
        "method": config.get("method", "?"),
        "dataset": config.get("dataset", "?"),
        "partition": config.get("partition", "?"),
        "clients": config.get("clients"),
        "rounds": config.get("rounds"),
        "final_accuracy": float(last["accuracy"]),
        "final_accuracy_mean5": sum(float(m["accuracy"]) for m in trained[-MEAN_K:]) / len(trained[-MEAN_K:]),
        "best_accuracy": accs[best_i],
        "best_round": int(metrics[best_i]["round"]),
        "total_bits": _total_bits(last),
        "bits": dict(last.get("bits") or {}),
        "wall_s": wall,
        "seconds_per_round": wall / last_round if last_round > 0 else None,
        "seed": config.get("seed"),
        "status": "incomplete",
        **_personal_from_metrics(metrics),
    }


def _personal_from_metrics(metrics: list[dict]) -> dict:
    """The final personalised metrics: those of the last row that has them (empty if none does)."""
    for row in reversed(metrics):
        if row.get("personalized_accuracy") is not None:
            return {f"final_{k}": row.get(k) for k in ("personalized_accuracy", "personalized_accuracy_worst10")}
    return {}


def load_run(run_dir: Path, skip_corrupt: bool = False) -> RunRecord:
    """Load a run folder written by the engine.

    Parameters
    ----------
    run_dir : Path
        Folder with ``metrics.jsonl`` and, optionally, ``config.json`` and ``summary.json``.
    skip_corrupt : bool
        Leave out corrupt ``metrics.jsonl`` lines (listed in ``RunRecord.skipped_lines``)
        instead of raising.

    Returns
    -------
    RunRecord
        The run; its summary is computed from the metrics (status ``"incomplete"``)
        when ``summary.json`` is absent.

    Raises
    ------
    DataError
        Missing folder or ``metrics.jsonl``, a corrupt JSON line (unless ``skip_corrupt``) or file.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: run folder not found; pass the folder the run wrote (it holds metrics.jsonl)")
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.is_file():
        raise DataError(f"{metrics_path}: not found; this is not a run folder, or the run never started")
    skipped: list[int] = []
    metrics = _read_metrics(metrics_path, skipped if skip_corrupt else None)
    config = _read_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else {}
    computed = _summary_from_metrics(config, metrics)
    if (run_dir / "summary.json").is_file():
        summary = _read_json(run_dir / "summary.json")
        for key, value in computed.items():  # fill fields an older/partial summary lacks
            if summary.get(key) is None and key != "status":
                summary[key] = value
        summary.setdefault("status", "complete")
    else:
        summary = computed
    return RunRecord(run_dir=run_dir, config=config, metrics=metrics, summary=summary, label=base_label(summary), skipped_lines=skipped)


def base_label(summary: dict) -> str:
    """A run's label before disambiguation: ``"<method> <partition>"`` (``?`` for what the summary lacks)."""
    return f"{summary.get('method', '?')} {summary.get('partition', '?')}"


def metric_series(metrics: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(rounds, values) of a metrics key, skipping rows without a finite number for it.

    Parameters
    ----------
    metrics : list of dict
        Metrics rows, in round order.
    key : str
        Metric name, e.g. ``"accuracy"`` or ``"personalized_accuracy"``.

    Returns
    -------
    tuple of list
        Rounds and the values logged at them.
    """
    xs, ys = [], []
    for row in metrics:
        v = row.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(int(row["round"]))
            ys.append(float(v))
    return xs, ys


def rounds_to_target(metrics: list[dict], target: float) -> int | None:
    """First round whose accuracy reaches ``target``.

    Parameters
    ----------
    metrics : list of dict
        Metrics rows (any order).
    target : float
        Accuracy threshold (same scale as the metrics, usually [0, 1]); reached when
        ``accuracy >= target - 1e-9`` (so float round-off in the target does not matter).

    Returns
    -------
    int or None
        The round, or ``None`` when the target is never reached.
    """
    for row in sorted(metrics, key=lambda m: int(m["round"])):
        acc = row.get("accuracy")
        if acc is not None and float(acc) >= target - TARGET_TOL:
            return int(row["round"])
    return None


def bits_to_target(metrics: list[dict], target: float) -> int | None:
    """Cumulative total bits communicated when the target accuracy is first reached.

    Parameters
    ----------
    metrics : list of dict
        Metrics rows (any order).
    target : float
        Accuracy threshold.

    Returns
    -------
    int or None
        ``bits_total`` at :func:`rounds_to_target`'s round, or ``None`` when never reached.
    """
    rnd = rounds_to_target(metrics, target)
    if rnd is None:
        return None
    row = next(m for m in metrics if int(m["round"]) == rnd)
    return _total_bits(row)


def unique_labels(labels: list[str], suffixes: Sequence[Callable[[int], str]]) -> list[str]:
    """Make equal labels unique: ``"<label> (<suffix>)"`` with the first suffix that tells them apart, else ``(#i)``.

    Parameters
    ----------
    labels : list of str
        Labels, some possibly equal.
    suffixes : sequence of callable
        Candidate suffixes, tried in order; each maps an item's index in ``labels`` to a string.
        A candidate is used for a set of equal labels only if it makes all of them distinct.

    Returns
    -------
    list of str
        The labels, with unique ones left as they were.
    """
    out = list(labels)
    same: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        same.setdefault(label, []).append(i)
    for base, idx in same.items():
        if len(idx) == 1:
            continue
        for suffix in suffixes:
            cand = [f"{base} ({suffix(i)})" for i in idx]
            if len(set(cand)) == len(cand):
                break
        else:
            cand = [f"{base} (#{j + 1})" for j in range(len(idx))]
        for i, new in zip(idx, cand):
            out[i] = new
    return out


def _disambiguate(records: list[RunRecord]) -> None:
    """Make labels unique: append the seed, else the folder name, else an index."""
    labels = unique_labels(
        [r.label for r in records], [lambda i: f"seed={records[i].summary.get('seed')}", lambda i: records[i].run_dir.name]
    )
    for rec, label in zip(records, labels):
        rec.label = label


def pick_target(candidates: list[tuple[str, str, float]], what: str = "best accuracy", unit: str = "run") -> tuple[float, str]:
    """The default target: 0.8 x the reference accuracy, and a sentence saying how it was chosen.

    Parameters
    ----------
    candidates : list of (label, method, accuracy)
        What the target may be taken from (runs, or groups of runs over seeds).
    what : str
        What ``accuracy`` is, for the sentence (``"best accuracy"``).
    unit : str
        What a candidate is, for the sentence (``"run"``; ``"group"``).

    Returns
    -------
    tuple of (float, str)
        The target (rounded to 10 decimals) and how it was chosen: from the best
        centralized candidate when there is one, else from the best candidate.
    """
    central = [c for c in candidates if str(c[1]).lower() == "centralized"]
    label, _, best = max(central or candidates, key=lambda c: c[2])
    if central:
        how = f"{TARGET_FRACTION:g} x {what} of the centralized {unit} '{label}' ({best:.4f})"
    else:
        how = f"{TARGET_FRACTION:g} x the highest {what} among the {unit}s, '{label}' ({best:.4f}); no centralized run was given"
    return round(TARGET_FRACTION * best, 10), how  # round off float noise (0.7200000000000001)


def _default_target(records: list[RunRecord]) -> tuple[float, str]:
    """Target accuracy and a sentence saying how it was chosen."""
    return pick_target([(r.label, str(r.summary.get("method", "")), float(r.summary["best_accuracy"])) for r in records])


def _row(rec: RunRecord, target: float, target_how: str = "") -> dict[str, Any]:
    """The comparison row of one run (``rounds_trained`` and ``target_how`` are for the tables, not the CSV)."""
    s = rec.summary
    total = int(s["total_bits"])
    return {
        "label": rec.label,
        "method": s.get("method"),
        "dataset": s.get("dataset"),
        "partition": s.get("partition"),
        "seed": s.get("seed"),
        "status": s.get("status"),
        "final_accuracy": float(s["final_accuracy"]),
        "final_accuracy_mean5": float(s["final_accuracy_mean5"]),
        "best_accuracy": float(s["best_accuracy"]),
        "best_round": s.get("best_round"),
        "total_bits": total,
        "total_MB": total / 8e6,
        "target": target,
        "rounds_to_target": rounds_to_target(rec.metrics, target),
        "bits_to_target": bits_to_target(rec.metrics, target),
        "wall_s": float(s.get("wall_s") or 0.0),
        "seconds_per_round": s.get("seconds_per_round"),
        "run_dir": str(rec.run_dir),
        **{k: s.get(k) for k in PERSONAL_COLUMNS},
        "rounds_trained": trained_rounds(rec.metrics),
        "target_how": target_how,
    }


def format_cell(value: Any, digits: int = 4) -> str:
    """Format a table cell: floats to ``digits`` decimals, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


def _row_k(row: dict) -> int:
    """The k of a row's "mean of the last k rounds" (5 for rows built without ``rounds_trained``)."""
    n = row.get("rounds_trained")
    return MEAN_K if n is None else last_k(int(n))


@dataclass
class _MeanColumn:
    """How the tables name the ``final_accuracy_mean5`` column: k is stated, per cell when runs differ."""

    short: str  # terminal header, e.g. "last3"
    header: str  # compare.md header
    legend: str  # one sentence saying what the column is
    per_cell: bool  # runs differ in k: compare.md's cells say their k (the terminal's caption gives the rule)


def _mean_column(rows: list[dict]) -> _MeanColumn:
    """Name the mean column after the rows' k = min(5, rounds trained)."""
    ks = {_row_k(row) for row in rows}
    if len(ks) > 1:
        legend = f"lastk = mean accuracy of the last k rounds, k = min({MEAN_K}, rounds trained)"
        return _MeanColumn("lastk", "final acc (mean of last k)", legend, True)
    k = ks.pop() if ks else MEAN_K
    n = next((int(r["rounds_trained"]) for r in rows if r.get("rounds_trained") is not None), k)
    return _MeanColumn(f"last{k}", f"final acc ({last_k_label(n)})", f"last{k} = {last_k_label(n)}", False)


def _display_cells(row: dict, mean: _MeanColumn | None = None) -> list[str]:
    """Human-readable cells of a row, in the order of :data:`_DISPLAY_HEADERS` (with the row's k when ``mean.per_cell``)."""
    mean_cell = format_cell(row["final_accuracy_mean5"])
    return [
        row["label"],
        format_cell(row["final_accuracy"]),
        f"{mean_cell} ({_row_k(row)})" if mean is not None and mean.per_cell else mean_cell,
        format_cell(row["best_accuracy"]),
        format_bits(row["total_bits"]),
        format_cell(row["rounds_to_target"]),
        format_bits(row["bits_to_target"]),
        format_cell(row["wall_s"], 1),
        format_cell(row["seconds_per_round"], 2),
        format_cell(row.get("status")),
    ]


def _has_personal(rows: list[dict]) -> bool:
    """Whether any row carries personalised metrics (then their columns are shown)."""
    return any(row.get(k) is not None for row in rows for k in PERSONAL_COLUMNS)


def _personal_cells(row: dict) -> list[str]:
    """The cells of :data:`_PERSONAL_HEADERS` ('-' for a run without personalised metrics)."""
    return [format_cell(row.get(k)) for k in PERSONAL_COLUMNS]


# compare.md's headers; MEAN_HEADER is replaced by the column's name with its k (see _mean_column).
MEAN_HEADER = "final acc (mean of last k)"
_DISPLAY_HEADERS = [
    "run",
    "final acc",
    MEAN_HEADER,
    "best acc",
    "total comm.",
    "rounds to target",
    "comm. to target",
    "wall (s)",
    "s / round",
    "status",
]


# Display and terminal headers of PERSONAL_COLUMNS, after the others.
_PERSONAL_HEADERS = {"personalised acc": "pers", "personalised worst 10%": "worst10"}

# The terminal table's columns: a display header -> its short name (MEAN_HEADER's is "last<k>").
# Two-line headers keep the columns narrow.
_TERMINAL_HEADERS = {
    "run": "run",
    MEAN_HEADER: "last5",
    "best acc": "best",
    "total comm.": "sent\ntotal",
    "rounds to target": "rounds to\ntarget",
    "comm. to target": "sent to\ntarget",
    "s / round": "s/rnd",
}

# What the to-target columns mean (the table caption and compare.md say it).
_TO_TARGET_LEGEND = "rounds / sent to target = the first round reaching the target accuracy and the total sent up to it"


def target_sentence(rows: list[dict]) -> str:
    """``"target accuracy 0.7200: <how it was chosen>"`` for comparison rows ('' when they carry no target)."""
    if not rows or rows[0].get("target") is None:
        return ""
    how = rows[0].get("target_how")
    return f"target accuracy {rows[0]['target']:.4f}" + (f": {how}" if how else "")


def render_table(rows: list[dict], title: str = "") -> Table:
    """Build a rich table of comparison rows, for printing with ``rich.console.Console``.

    Parameters
    ----------
    rows : list of dict
        Rows as returned by :func:`compare_runs`.
    title : str
        Table title; the target accuracy (value and how it was chosen) is added under it
        when the rows carry one, and a caption says what the columns are.

    Returns
    -------
    rich.table.Table
    """
    tgt = target_sentence(rows)
    title = "\n".join(t for t in (title, tgt) if t)
    mean = _mean_column(rows)
    caption = f"{mean.legend}; {_TO_TARGET_LEGEND}" if tgt else mean.legend
    # Compact for terminals: 80 columns must stay readable; compare.md/csv keep everything.
    from rich import box

    # collapse_padding: two spaces between columns, not three, so the to-target headers fit.
    table = Table(title=title or None, caption=caption, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    keep = [_DISPLAY_HEADERS.index(h) for h in _TERMINAL_HEADERS]
    personal = _has_personal(rows)
    headers = [mean.short if h == MEAN_HEADER else short for h, short in _TERMINAL_HEADERS.items()]
    headers += list(_PERSONAL_HEADERS.values()) if personal else []
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 else "right", no_wrap=True)
    for row in rows:
        cells = _display_cells(row)  # the caption states k when runs differ: no "(k)" in 80 columns
        table.add_row(*[cells[k] for k in keep], *(_personal_cells(row) if personal else []))
    return table


def _write_markdown(rows: list[dict], path: Path, target_line: str) -> None:
    """Write compare.md: a Markdown table, the target line and what the columns mean."""
    personal = _has_personal(rows)
    mean = _mean_column(rows)
    headers = [mean.header if h == MEAN_HEADER else h for h in _DISPLAY_HEADERS]
    headers += list(_PERSONAL_HEADERS) if personal else []
    legend = "*rounds to target* / *comm. to target*: the first round reaching the target accuracy and the total communicated up to it"
    if mean.per_cell:  # one k for all runs is in the header itself
        legend = f"*{mean.header}*: k = min({MEAN_K}, rounds trained), in brackets; {legend}"
    lines = [
        "# Comparison of runs",
        "",
        target_line,
        "",
        legend + ".",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|",
    ]
    for row in rows:
        cells = [c.replace("|", "\\|") for c in _display_cells(row, mean) + (_personal_cells(row) if personal else [])]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")


def _write_csv(rows: list[dict], path: Path) -> None:
    """Write compare.csv with raw numbers (empty cell for None)."""
    columns = CSV_COLUMNS + (PERSONAL_COLUMNS if _has_personal(rows) else [])
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})


def compare_runs(run_dirs: list[Path], out_dir: Path, target: float | None = None, seed_rows: list[dict] | None = None) -> list[dict]:
    """Compare runs: table, CSV and overlay plots, and statistics over seeds when some runs differ only in seed.

    Parameters
    ----------
    run_dirs : list of Path
        Run folders (complete or interrupted).
    out_dir : Path
        Folder for ``compare.md``, ``compare.csv``, ``accuracy_vs_round.png`` and
        ``accuracy_vs_bits.png`` (created if needed). When some runs differ only in their
        seed (:func:`fldistill.report.seeds.group_runs`), also ``compare_seeds.md``,
        ``compare_seeds.csv`` and ``accuracy_bands.png`` (mean ± std over seeds per group).
    target : float, optional
        Target accuracy. Default: 0.8 x the best accuracy of the centralized run if one
        is given, else 0.8 x the highest best accuracy among the runs (the seed table
        chooses its default the same way over the groups' mean best accuracies).
    seed_rows : list, optional
        When given, the seed-table rows (:func:`fldistill.report.seeds.seed_table`) are
        appended to it; none when no group has 2+ seeds.

    Returns
    -------
    list of dict
        One row per run (keys of :data:`CSV_COLUMNS` and :data:`PERSONAL_COLUMNS`, None
        where a run has no personalised metrics; ``target`` records the target used,
        ``target_how`` how it was chosen, ``rounds_trained`` the k of the mean column).

    Raises
    ------
    DataError
        No run folders, or one of them cannot be loaded.
    ConfigError
        Two runs with the same config have the same seed (it would count twice over seeds).
    """
    from fldistill.report.plots import plot_overlay  # matplotlib only when needed
    from fldistill.report.seeds import group_runs, write_seed_outputs

    if not run_dirs:
        raise DataError("no run folders given; pass one or more folders written by 'fldistill run'")
    records = [load_run(Path(d)) for d in run_dirs]
    groups = group_runs(records)  # before writing anything: a seed given twice is refused
    explicit = target
    _disambiguate(records)
    if target is None:
        target, how = _default_target(records)
    else:
        target = float(target)
        how = "given explicitly"
    target_line = f"Target accuracy: **{target:.4f}** ({how})."
    rows = [_row(rec, target, how) for rec in records]

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_markdown(rows, out_dir / "compare.md", target_line)
    _write_csv(rows, out_dir / "compare.csv")
    plot_overlay(records, out_dir, target=target)
    over_seeds = write_seed_outputs(groups, out_dir, target=explicit)
    if seed_rows is not None:
        seed_rows.extend(over_seeds)
    return rows
