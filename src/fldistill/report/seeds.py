"""Results over seeds: runs that differ only in seed, grouped, with mean ± std and a 95% interval.

:func:`group_runs` groups loaded runs whose ``config.json`` agree except ``seed`` and ``name``;
:func:`seed_table` gives one row of statistics per group, which :func:`render_seed_table`,
:func:`write_seed_markdown` and :func:`write_seed_csv` present; :func:`plot_seed_curves`
draws the learning curves with a ±std band. :func:`write_seed_outputs` is what ``compare`` writes.
Matplotlib and scipy are imported only by the functions that need them.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.table import Table

from fldistill.errors import ConfigError
from fldistill.report.compare import (
    MEAN_K,
    RunRecord,
    base_label,
    format_bits,
    last_k,
    last_k_label,
    metric_series,
    pick_target,
    rounds_to_target,
    target_sentence,
    trained_rounds,
    unique_labels,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes

# Config keys that may differ within a group (everything else must agree).
PER_RUN_KEYS = ("seed", "name")

# Keys whose difference makes "<method> <partition>" the label's start (see group_runs).
BASE_KEYS = ("method", "partition")

# What compare writes when some group has 2+ seeds (and removes, if stale, when none has).
SEED_OUTPUTS = ("compare_seeds.md", "compare_seeds.csv", "accuracy_bands.png")

# Column order of compare_seeds.csv (PERSONAL_SEED_COLUMNS follow when some run has personalised metrics).
SEED_CSV_COLUMNS = [
    "label",
    "method",
    "dataset",
    "partition",
    "n",
    "seeds",
    "final_accuracy_mean",
    "final_accuracy_std",
    "final_accuracy_ci95",
    "last_k",
    "last_k_mean",
    "last_k_std",
    "best_accuracy_mean",
    "best_accuracy_std",
    "target",
    "rounds_to_target_mean",
    "reached_target",
    "total_bits_mean",
    "total_MB_mean",
    "seconds_per_round_mean",
    "incomplete",
    "run_dirs",
]
PERSONAL_SEED_COLUMNS = ["final_personalized_accuracy_mean", "final_personalized_accuracy_std", "final_personalized_accuracy_worst10_mean"]

# What the columns mean (the terminal caption and compare_seeds.md say it).
_LEGEND = (
    "mean ± sample std over seeds (the mean alone for one seed); 95% CI = Student-t interval of the mean final accuracy; "
    "rounds to target = mean over the seeds that reach it (reached/n); comm. and s/round = means"
)


@dataclass
class SeedGroup:
    """Runs that differ only in their seed.

    Attributes
    ----------
    label : str
        What tells the group apart from the others (see :func:`group_runs`).
    config : dict
        The shared ``config.json`` without ``seed`` and ``name`` (empty for a run without one).
    records : list of RunRecord
        The runs, in seed order.
    seeds : list of int
        Their seeds, ascending (empty for a run that recorded none).
    """

    label: str
    config: dict
    records: list[RunRecord]
    seeds: list[int]


def _seed_of(rec: RunRecord) -> int | None:
    """The run's seed: from config.json, else from the summary (None when neither has one)."""
    seed = rec.config.get("seed") if rec.config else rec.summary.get("seed")
    return None if seed is None else int(seed)


def _flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested config (``{"local": {"lr": 0.1}}`` -> ``{"local.lr": 0.1}``); empty tables vanish."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


_MISSING = object()


def _differing(flats: list[dict[str, Any]]) -> list[str]:
    """Dotted keys whose values are not the same in all of ``flats`` (a key one lacks counts), sorted."""
    keys = sorted({k for f in flats for k in f})
    return [k for k in keys if len({json.dumps(f.get(k, _MISSING), default=repr, sort_keys=True) for f in flats}) > 1]


def _setting(flat: dict[str, Any], keys: list[str]) -> str:
    """``"local.lr=0.05 params.mu=0"``: the values of ``keys`` ('-' for an absent one, strings unquoted)."""
    parts = []
    for k in keys:
        v = flat.get(k, _MISSING)
        parts.append(f"{k}={'-' if v is _MISSING else v if isinstance(v, str) else json.dumps(v)}")
    return " ".join(parts)


def _group_labels(groups: list[SeedGroup]) -> list[str]:
    """Labels saying what tells each group apart (see :func:`group_runs`)."""
    bases = [base_label(g.records[0].summary) for g in groups]
    flats = {i: _flatten(g.config) for i, g in enumerate(groups) if g.config}
    labels = list(bases)
    diff = _differing(list(flats.values())) if len(flats) > 1 else []
    if diff and not set(diff) & set(BASE_KEYS):
        for i, flat in flats.items():
            labels[i] = _setting(flat, diff)
    elif diff:
        # The differing method / partition, by value ("fedprox classes:1"); method-specific params
        # differ wholesale between methods, so they are named only where groups would look alike.
        lead = [k for k in BASE_KEYS if k in diff]
        shared = [k for k in diff if k not in BASE_KEYS and not k.startswith("params.")]
        for i, flat in flats.items():
            head = " ".join(str(flat.get(k, "?")) for k in lead)
            labels[i] = " ".join(t for t in (head, _setting(flat, shared)) if t)
        alike: dict[str, list[int]] = {}
        for i in flats:
            alike.setdefault(labels[i], []).append(i)
        for idx in (idx for idx in alike.values() if len(idx) > 1):
            within = _differing([flats[i] for i in idx])
            for i in idx:
                labels[i] = " ".join(t for t in (labels[i], _setting(flats[i], within)) if t)
    return unique_labels(labels, [lambda i: groups[i].records[0].run_dir.name])


def group_runs(records: list[RunRecord]) -> list[SeedGroup]:
    """Group runs whose ``config.json`` are identical except ``seed`` and ``name``.

    A group's label names what distinguishes it from the other groups: the dotted config
    keys whose values differ between groups (``"local.lr=0.05 params.mu=0"``). One group is
    labelled ``"<method> <partition>"`` (``"fedavg classes:1"``), as is a run without config.json.
    When the method or the partition differ, the label starts with those that differ, by value
    (``"fedprox"``, ``"fedavg classes:1"``), followed by the other differing keys outside ``params``;
    ``params`` keys are added only where groups would otherwise look alike
    (``"disue params.gls=uniform"``). Labels still equal get the first run's folder name, else an index.

    Parameters
    ----------
    records : list of RunRecord
        Loaded runs (:func:`fldistill.report.compare.load_run`).

    Returns
    -------
    list of SeedGroup
        In order of first appearance; runs in seed order within a group. A run without
        ``config.json``, or without a recorded seed, is a group of its own.

    Raises
    ------
    ConfigError
        Two runs of one group have the same seed (it would count twice).
    """
    by_key: dict[str, list[RunRecord]] = {}
    for rec in records:
        seed = _seed_of(rec)
        if rec.config and seed is not None:
            key = json.dumps({k: v for k, v in rec.config.items() if k not in PER_RUN_KEYS}, sort_keys=True, default=repr)
        else:
            key = f"run:{id(rec)}"  # nothing to match it on: alone
        members = by_key.setdefault(key, [])
        twin = next((r for r in members if _seed_of(r) == seed), None)
        if twin is not None:
            raise ConfigError(
                f"{twin.run_dir} and {rec.run_dir} have the same config and seed {seed}, so that seed would count twice; "
                "pass only one of them"
            )
        members.append(rec)
    groups = []
    for members in by_key.values():
        members.sort(key=lambda r: _seed_of(r) or 0)
        seeds = [s for s in (_seed_of(r) for r in members) if s is not None]
        config = {k: v for k, v in members[0].config.items() if k not in PER_RUN_KEYS}
        groups.append(SeedGroup(label="", config=config, records=members, seeds=seeds))
    for group, label in zip(groups, _group_labels(groups)):
        group.label = label
    return groups


def seed_stats(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean, sample standard deviation and the half-width of the 95% Student-t interval of the mean.

    Parameters
    ----------
    values : sequence of float
        One value per seed.

    Returns
    -------
    tuple of float
        ``(mean, std, ci95)``: ``std`` with ddof=1 (0 for one value) and
        ``ci95 = t_{0.975, n-1} * std / sqrt(n)`` (nan for one value: no interval from one seed).

    Raises
    ------
    ValueError
        ``values`` is empty.
    """
    x = np.asarray(values, dtype=float)
    n = x.size
    if n == 0:
        raise ValueError("seed_stats needs at least one value")
    mean = float(x.mean())
    if n == 1:
        return mean, 0.0, math.nan
    from scipy.stats import t  # scipy only when an interval is computed

    std = float(x.std(ddof=1))
    return mean, std, float(t.ppf(0.975, n - 1) * std / math.sqrt(n))


def _numbers(values: Sequence[Any]) -> list[float]:
    """The finite numbers among ``values`` (None and nan left out)."""
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def _mean_or_none(values: Sequence[Any]) -> float | None:
    """Mean of the finite numbers among ``values``; None when there is none."""
    nums = _numbers(values)
    return math.fsum(nums) / len(nums) if nums else None


def _default_group_target(groups: list[SeedGroup]) -> tuple[float, str]:
    """0.8 x the centralized group's mean best accuracy, else 0.8 x the highest mean best, with how."""
    cands = [
        (g.label, str(g.records[0].summary.get("method", "")), seed_stats([float(r.summary["best_accuracy"]) for r in g.records])[0])
        for g in groups
    ]
    return pick_target(cands, what="mean best accuracy over seeds", unit="group")


def _group_row(group: SeedGroup, target: float, how: str) -> dict[str, Any]:
    """The seed-table row of one group (see :func:`seed_table`)."""
    recs = group.records
    sums = [r.summary for r in recs]
    first = sums[0]
    final_mean, final_std, final_ci = seed_stats([float(s["final_accuracy"]) for s in sums])
    mean5_mean, mean5_std, _ = seed_stats([float(s["final_accuracy_mean5"]) for s in sums])
    best_mean, best_std, _ = seed_stats([float(s["best_accuracy"]) for s in sums])
    ks = {last_k(trained_rounds(r.metrics)) for r in recs}
    reached = _numbers([rounds_to_target(r.metrics, target) for r in recs])
    personal = _numbers([s.get("final_personalized_accuracy") for s in sums])
    pers_mean, pers_std = seed_stats(personal)[:2] if personal else (None, None)
    total = _mean_or_none([s.get("total_bits") for s in sums])
    return {
        "label": group.label,
        "method": first.get("method"),
        "dataset": first.get("dataset"),
        "partition": first.get("partition"),
        "n": len(recs),
        "seeds": list(group.seeds),
        "final_accuracy_mean": final_mean,
        "final_accuracy_std": final_std,
        "final_accuracy_ci95": final_ci,
        "last_k": ks.pop() if len(ks) == 1 else None,  # None: the seeds trained different numbers of rounds
        "last_k_mean": mean5_mean,
        "last_k_std": mean5_std,
        "best_accuracy_mean": best_mean,
        "best_accuracy_std": best_std,
        "target": target,
        "rounds_to_target_mean": math.fsum(reached) / len(reached) if reached else None,
        "reached_target": len(reached),
        "total_bits_mean": total,
        "total_MB_mean": None if total is None else total / 8e6,
        "seconds_per_round_mean": _mean_or_none([s.get("seconds_per_round") for s in sums]),
        "incomplete": sum(1 for s in sums if s.get("status") == "incomplete"),
        "run_dirs": [str(r.run_dir) for r in recs],
        "final_personalized_accuracy_mean": pers_mean,
        "final_personalized_accuracy_std": pers_std,
        "final_personalized_accuracy_worst10_mean": _mean_or_none([s.get("final_personalized_accuracy_worst10") for s in sums]),
        "target_how": how,
    }


def seed_table(groups: list[SeedGroup], target: float | None = None) -> list[dict]:
    """Statistics over seeds, one row per group.

    Parameters
    ----------
    groups : list of SeedGroup
        From :func:`group_runs`.
    target : float, optional
        Target accuracy for rounds-to-target. Default: 0.8 x the mean (over seeds) best
        accuracy of the centralized group if there is one, else 0.8 x the highest mean best.

    Returns
    -------
    list of dict
        Keys of :data:`SEED_CSV_COLUMNS` and :data:`PERSONAL_SEED_COLUMNS` (None where no
        seed has personalised metrics) plus ``target_how`` (how the target was chosen).
        Means are over the seeds; ``rounds_to_target_mean`` over the ``reached_target``
        seeds that reach the target (None when none does); ``last_k`` is the k of
        ``last_k_mean`` (mean of the last min(5, rounds trained) rounds), None when the seeds differ in it.

    Raises
    ------
    ValueError
        No groups.
    """
    if not groups:
        raise ValueError("seed_table needs at least one group")
    if target is None:
        target, how = _default_group_target(groups)
    else:
        target, how = float(target), "given explicitly"
    return [_group_row(g, target, how) for g in groups]


def _pm(mean: float | None, std: float | None, n: int) -> str:
    """``"0.8123 ± 0.0120"``; the mean alone for one seed (no spread to show), '-' without a mean."""
    if mean is None:
        return "-"
    return f"{mean:.4f}" if n < 2 else f"{mean:.4f} ± {std or 0.0:.4f}"


def _ci(row: dict) -> str:
    """``"[0.7825, 0.8421]"``: the 95% interval of the mean final accuracy ('-' for one seed)."""
    half = row["final_accuracy_ci95"]
    if half is None or not math.isfinite(half):
        return "-"
    return f"[{row['final_accuracy_mean'] - half:.4f}, {row['final_accuracy_mean'] + half:.4f}]"


def _to_target(row: dict) -> str:
    """``"12.3 (2/3)"``: mean rounds to target over the seeds reaching it, and how many did."""
    mean = row["rounds_to_target_mean"]
    return f"{'-' if mean is None else f'{mean:.1f}'} ({row['reached_target']}/{row['n']})"


def _k_names(rows: list[dict]) -> tuple[str, str]:
    """(short, long) name of the last-k column: ``("last3", "mean of last 3 rounds")`` when all rows agree."""
    ks = {row["last_k"] for row in rows}
    if len(ks) == 1 and None not in ks:
        k = ks.pop()
        return f"last{k}", last_k_label(k)
    return "lastk", f"mean of last k rounds, k = min({MEAN_K}, rounds trained)"


def _has_personal(rows: list[dict]) -> bool:
    """Whether some group has personalised metrics (then their columns are shown)."""
    return any(row.get("final_personalized_accuracy_mean") is not None for row in rows)


def _label_cell(row: dict) -> str:
    """The group's label, with how many of its runs are incomplete when some are."""
    return row["label"] + (f" ({row['incomplete']} incomplete)" if row.get("incomplete") else "")


def render_seed_table(rows: list[dict], title: str = "") -> Table:
    """Build a rich table of seed-table rows, for printing with ``rich.console.Console``.

    Parameters
    ----------
    rows : list of dict
        Rows as returned by :func:`seed_table`.
    title : str
        Table title; the target accuracy (value and how it was chosen) is added under it,
        and a caption says what the columns are.

    Returns
    -------
    rich.table.Table
        Cells such as ``0.8123 ± 0.0120`` (mean ± std) and ``[0.7825, 0.8421]`` (95% CI).
    """
    from rich import box

    k_short, k_long = _k_names(rows)
    title = "\n".join(t for t in (title, target_sentence(rows)) if t)
    caption = f"{_LEGEND}; {k_short} = {k_long}; best accuracy, s/round and the seeds are in the Markdown and CSV tables"
    table = Table(title=title or None, caption=caption, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    personal = _has_personal(rows)
    # Compact for terminals: 120 columns hold every column on one line (best accuracy, s/round and
    # the seeds are in the Markdown and CSV); narrower, cells wrap at their spaces ("0.8123 ±" over "0.0120").
    headers = ["group", "n", "final acc", "95% CI", k_short, "rounds to\ntarget", "sent\ntotal"]
    headers += ["pers"] if personal else []
    table.add_column(headers[0], overflow="fold")
    for header in headers[1:]:
        table.add_column(header, justify="right", no_wrap=header == "n")
    for row in rows:
        cells = [
            _label_cell(row),
            str(row["n"]),
            _pm(row["final_accuracy_mean"], row["final_accuracy_std"], row["n"]),
            _ci(row),
            _pm(row["last_k_mean"], row["last_k_std"], row["n"]),
            _to_target(row),
            format_bits(row["total_bits_mean"]),
        ]
        if personal:
            cells.append(_pm(row["final_personalized_accuracy_mean"], row["final_personalized_accuracy_std"], row["n"]))
        table.add_row(*cells)
    return table


def write_seed_markdown(rows: list[dict], path: Path) -> None:
    """Write the seed table as Markdown: target, legend, table, and the run folders of each group.

    Parameters
    ----------
    rows : list of dict
        Rows as returned by :func:`seed_table`.
    path : Path
        File to write (e.g. ``compare_seeds.md``).
    """
    k_short, k_long = _k_names(rows)
    personal = _has_personal(rows)
    headers = [
        "group",
        "n",
        "seeds",
        "final acc (mean ± std)",
        "final acc 95% CI",
        f"final acc ({k_long}, mean ± std)",
        "best acc (mean ± std)",
        "rounds to target (reached/n)",
        "total comm. (mean)",
        "s / round (mean)",
    ]
    headers += ["personalised acc (mean ± std)", "personalised worst 10% (mean)"] if personal else []
    tgt = f"Target accuracy: **{rows[0]['target']:.4f}** ({rows[0]['target_how']})." if rows else ""
    lines = [
        "# Results over seeds",
        "",
        "Runs whose config.json differ only in seed (and name) are grouped.",
        "",
        tgt,
        "",
        _LEGEND[0].upper() + _LEGEND[1:] + ".",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---", "---:", "---"] + ["---:"] * (len(headers) - 3)) + "|",
    ]
    for row in rows:
        cells = [
            _label_cell(row),
            str(row["n"]),
            ", ".join(str(s) for s in row["seeds"]) or "-",
            _pm(row["final_accuracy_mean"], row["final_accuracy_std"], row["n"]),
            _ci(row),
            _pm(row["last_k_mean"], row["last_k_std"], row["n"]),
            _pm(row["best_accuracy_mean"], row["best_accuracy_std"], row["n"]),
            _to_target(row),
            format_bits(row["total_bits_mean"]),
            "-" if row["seconds_per_round_mean"] is None else f"{row['seconds_per_round_mean']:.2f}",
        ]
        if personal:
            worst = row["final_personalized_accuracy_worst10_mean"]
            cells.append(_pm(row["final_personalized_accuracy_mean"], row["final_personalized_accuracy_std"], row["n"]))
            cells.append("-" if worst is None else f"{worst:.4f}")
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", "Runs per group:", ""]
    lines += [f"- {row['label']}: " + ", ".join(row["run_dirs"]) for row in rows]
    lines.append("")
    Path(path).write_text("\n".join(lines), encoding="utf-8")


def _csv_cell(value: Any) -> Any:
    """A CSV cell: empty for None and nan, lists space-separated (seeds) or ';'-separated (folders)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, list):
        return (";" if any(isinstance(v, str) for v in value) else " ").join(str(v) for v in value)
    return value


def write_seed_csv(rows: list[dict], path: Path) -> None:
    """Write the seed table as CSV: raw numbers, mean / std / ci95 in separate columns.

    Parameters
    ----------
    rows : list of dict
        Rows as returned by :func:`seed_table`.
    path : Path
        File to write (e.g. ``compare_seeds.csv``); columns :data:`SEED_CSV_COLUMNS`, then
        :data:`PERSONAL_SEED_COLUMNS` when some group has personalised metrics. Empty cells
        stand for "none" (no seed reached the target, one seed has no interval).
    """
    columns = SEED_CSV_COLUMNS + (PERSONAL_SEED_COLUMNS if _has_personal(rows) else [])
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_cell(row.get(k)) for k in columns})


def seed_curve(group: SeedGroup, metric: str = "accuracy", first_round: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Learning curve of a group: rounds, mean and sample std over seeds of ``metric``.

    Parameters
    ----------
    group : SeedGroup
        The runs.
    metric : str
        A metrics.jsonl key (``"accuracy"``, ``"personalized_accuracy"``, ...).
    first_round : int
        Leave out earlier rounds (1: no initial evaluation).

    Returns
    -------
    tuple of np.ndarray
        Rounds that every seed logged (empty when one seed never logged the metric), the mean
        and the std (ddof=1; zeros for one seed) at them.
    """
    series = [dict(zip(*metric_series(r.metrics, metric))) for r in group.records]
    rounds = sorted(r for r in set.intersection(*(set(s) for s in series)) if r >= first_round) if series else []
    vals = np.array([[s[r] for r in rounds] for s in series], dtype=float).reshape(len(series), len(rounds))
    std = vals.std(axis=0, ddof=1) if len(series) > 1 else np.zeros(len(rounds))
    return np.array(rounds, dtype=int), vals.mean(axis=0) if series else np.zeros(0), std


def draw_seed_curves(ax: Axes, groups: list[SeedGroup], metric: str = "accuracy", first_round: int = 0) -> int:
    """Draw each group's mean curve with a ±std band on ``ax`` (legend labels ``"<label> (n=3)"``).

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Where to draw.
    groups : list of SeedGroup
        The groups; one whose seeds share no round with ``metric`` is left out.
    metric : str
        A metrics.jsonl key.
    first_round : int
        Leave out earlier rounds.

    Returns
    -------
    int
        How many groups were drawn.
    """
    drawn = 0
    for group in groups:
        rounds, mean, std = seed_curve(group, metric, first_round)
        if rounds.size == 0:
            continue
        (line,) = ax.plot(rounds, mean, label=f"{group.label} (n={len(group.records)})", lw=1.2)
        ax.fill_between(rounds, mean - std, mean + std, color=line.get_color(), alpha=0.15, lw=0)
        drawn += 1
    return drawn


def plot_seed_curves(groups: list[SeedGroup], path: Path, metric: str = "accuracy") -> None:
    """Plot the learning curve of each group: mean over seeds with a ±std band, on one axis.

    Parameters
    ----------
    groups : list of SeedGroup
        The groups (from :func:`group_runs`).
    path : Path
        PNG file to write (parent folders are created).
    metric : str
        A metrics.jsonl key; the band covers the rounds every seed of a group logged.
    """
    from matplotlib.ticker import MaxNLocator

    from fldistill.report.plots import _save, plt  # Agg backend, set there

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    if not draw_seed_curves(ax, groups, metric):
        ax.text(0.5, 0.5, f"no {metric} logged by every seed of a group", transform=ax.transAxes, ha="center")
    ns = sorted({len(g.records) for g in groups})
    per = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"
    ax.set_title(f"{metric}: mean ± std over seeds ({per} seed{'s' if ns[-1] != 1 else ''} per group)")
    ax.set_xlabel("round")
    ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    _save(fig, Path(path))


def write_seed_outputs(groups: list[SeedGroup], out_dir: Path, target: float | None = None) -> list[dict]:
    """What ``compare`` adds over seeds: ``compare_seeds.md``, ``compare_seeds.csv`` and ``accuracy_bands.png``.

    Parameters
    ----------
    groups : list of SeedGroup
        The compared runs, grouped (:func:`group_runs`).
    out_dir : Path
        The comparison folder (created if needed).
    target : float, optional
        Target accuracy; default as :func:`seed_table` chooses it over the groups.

    Returns
    -------
    list of dict
        The seed-table rows, or ``[]`` when no group has 2+ seeds: then nothing is written,
        and such files left in ``out_dir`` by an earlier comparison are removed (they would
        not describe these runs).
    """
    out_dir = Path(out_dir)
    if all(len(g.records) < 2 for g in groups):
        for name in SEED_OUTPUTS:
            (out_dir / name).unlink(missing_ok=True)
        return []
    return write_seed_files(groups, out_dir, "compare_seeds", target)


def write_seed_files(groups: list[SeedGroup], out_dir: Path, stem: str, target: float | None = None) -> list[dict]:
    """Write ``<stem>.md``, ``<stem>.csv`` and ``accuracy_bands.png`` of the groups into ``out_dir``; returns the rows.

    Shared by ``compare`` (``compare_seeds``) and ``sweep`` (``sweep``).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = seed_table(groups, target=target)
    write_seed_markdown(rows, out_dir / f"{stem}.md")
    write_seed_csv(rows, out_dir / f"{stem}.csv")
    plot_seed_curves(groups, out_dir / "accuracy_bands.png")
    return rows
