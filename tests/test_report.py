"""Tests for fldistill.report: run loading, targets, comparison outputs and plots."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from fldistill.errors import DataError
from fldistill.report import (
    bits_to_target,
    compare_runs,
    format_bits,
    load_run,
    plot_label_heatmap,
    plot_run,
    render_table,
    rounds_to_target,
)


def _write_run(
    root: Path,
    name: str,
    method: str,
    acc: list[float],
    bits_total: list[int],
    partition: str = "classes:1",
    summary: bool = True,
    seed: int = 0,
    extra: dict[str, list[float]] | None = None,
) -> Path:
    """Write a synthetic run folder; bits split evenly between up- and downlink."""
    d = root / name
    d.mkdir(parents=True)
    config = {"method": method, "dataset": "mnist1d", "partition": partition,
              "clients": 10, "rounds": len(acc) - 1, "seed": seed}
    (d / "config.json").write_text(json.dumps(config))
    with (d / "metrics.jsonl").open("w") as fh:
        for r, (a, b) in enumerate(zip(acc, bits_total)):
            row = {"round": r, "accuracy": a, "loss": 2.0 - a,
                   "bits": {"client->server": b // 2, "server->client": b - b // 2, "client->client": 0},
                   "bits_total": b, "wall_s": 1.5 * r}
            for k, vals in (extra or {}).items():
                row[k] = vals[r]
            fh.write(json.dumps(row) + "\n")
    if summary:
        best = max(range(len(acc)), key=lambda i: (acc[i], -i))
        T = len(acc) - 1
        (d / "summary.json").write_text(json.dumps({
            **config, "final_accuracy": acc[-1], "final_accuracy_mean5": float(np.mean(acc[-5:])),
            "best_accuracy": acc[best], "best_round": best, "total_bits": bits_total[-1],
            "bits": {"client->server": bits_total[-1] // 2}, "wall_s": 1.5 * T,
            "seconds_per_round": 1.5, "status": "complete",
        }))
    return d


CENTRAL_ACC = [0.1, 0.5, 0.7, 0.85, 0.9, 0.9]
FEDAVG_ACC = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.72, 0.75, 0.8]
FEDAVG_BITS = [r * 2_000_000 for r in range(11)]
HFLDD_ACC = [0.1, 0.6, 0.75, 0.74]
HFLDD_BITS = [1_000, 100_000, 10_000_000, 1_000_000_000]


@pytest.fixture
def no_overlay(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip the overlay PNGs in tests that only check numbers (keeps the suite fast)."""
    import fldistill.report.plots as plots

    monkeypatch.setattr(plots, "plot_overlay", lambda *a, **k: [])


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    central = _write_run(tmp_path, "central", "centralized", CENTRAL_ACC, [0] * 6, partition="iid")
    fedavg = _write_run(tmp_path, "fedavg", "fedavg", FEDAVG_ACC, FEDAVG_BITS,
                        extra={"teacher_accuracy": [a + 0.05 for a in FEDAVG_ACC]})
    hfldd = _write_run(tmp_path, "hfldd", "hfldd", HFLDD_ACC, HFLDD_BITS, summary=False)
    return [central, fedavg, hfldd]


def test_rounds_and_bits_to_target(runs: list[Path]) -> None:
    m = load_run(runs[1]).metrics
    assert rounds_to_target(m, 0.72) == 8
    assert bits_to_target(m, 0.72) == 16_000_000
    assert rounds_to_target(m, 0.1) == 0
    assert bits_to_target(m, 0.1) == 0
    assert rounds_to_target(m, 0.81) is None
    assert bits_to_target(m, 0.81) is None
    # order of rows does not matter
    assert rounds_to_target(list(reversed(m)), 0.65) == 6


def test_incomplete_run_summary(runs: list[Path]) -> None:
    rec = load_run(runs[2])
    s = rec.summary
    assert s["status"] == "incomplete"
    assert s["method"] == "hfldd" and s["partition"] == "classes:1"
    assert s["final_accuracy"] == 0.74
    assert s["best_accuracy"] == 0.75 and s["best_round"] == 2
    assert s["final_accuracy_mean5"] == pytest.approx(np.mean([0.6, 0.75, 0.74]))
    assert s["total_bits"] == 1_000_000_000
    assert s["wall_s"] == 4.5 and s["seconds_per_round"] == pytest.approx(1.5)
    assert rec.label == "hfldd classes:1"
    assert load_run(runs[1]).summary["status"] == "complete"


def test_compare_default_target_is_80pct_of_centralized(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    rows = compare_runs(runs, out)
    assert [r["label"] for r in rows] == ["centralized iid", "fedavg classes:1", "hfldd classes:1"]
    assert all(r["target"] == pytest.approx(0.72) for r in rows)
    by = {r["method"]: r for r in rows}
    assert by["fedavg"]["rounds_to_target"] == 8 and by["fedavg"]["bits_to_target"] == 16_000_000
    assert by["hfldd"]["rounds_to_target"] == 2 and by["hfldd"]["bits_to_target"] == 10_000_000
    assert by["centralized"]["rounds_to_target"] == 3 and by["centralized"]["bits_to_target"] == 0
    assert by["hfldd"]["status"] == "incomplete"

    md = (out / "compare.md").read_text()
    assert "0.7200" in md and "centralized" in md
    assert "| fedavg classes:1 |" in md and "2.50 MB" in md  # 20e6 bits total
    assert md.count("\n|") >= 5  # header, separator, 3 rows

    with (out / "compare.csv").open() as fh:
        csv_rows = {r["method"]: r for r in csv.DictReader(fh)}
    f = csv_rows["fedavg"]
    assert float(f["final_accuracy"]) == pytest.approx(0.8)
    assert float(f["best_accuracy"]) == pytest.approx(0.8)
    assert float(f["final_accuracy_mean5"]) == pytest.approx(np.mean(FEDAVG_ACC[-5:]))
    assert int(f["total_bits"]) == 20_000_000 and float(f["total_MB"]) == pytest.approx(2.5)
    assert int(f["rounds_to_target"]) == 8 and int(f["bits_to_target"]) == 16_000_000
    assert float(f["target"]) == pytest.approx(0.72)
    assert float(f["seconds_per_round"]) == pytest.approx(1.5)
    assert int(csv_rows["hfldd"]["bits_to_target"]) == 10_000_000

    for name in ("accuracy_vs_round.png", "accuracy_vs_bits.png"):
        assert (out / name).stat().st_size > 1000


def test_compare_target_without_centralized_and_explicit(runs: list[Path], tmp_path: Path, no_overlay: None) -> None:
    rows = compare_runs(runs[1:], tmp_path / "a")
    assert rows[0]["target"] == pytest.approx(0.8 * 0.8)
    assert "no centralized run" in (tmp_path / "a" / "compare.md").read_text()
    rows = compare_runs(runs[1:], tmp_path / "b", target=0.75)
    assert [r["rounds_to_target"] for r in rows] == [9, 2]
    # never reached -> empty CSV cell
    compare_runs(runs[1:], tmp_path / "c", target=0.99)
    with (tmp_path / "c" / "compare.csv").open() as fh:
        assert all(r["rounds_to_target"] == "" for r in csv.DictReader(fh))


def test_equal_labels_are_disambiguated(tmp_path: Path, no_overlay: None) -> None:
    a = _write_run(tmp_path, "s1", "fedavg", FEDAVG_ACC, FEDAVG_BITS, seed=1)
    b = _write_run(tmp_path, "s2", "fedavg", FEDAVG_ACC, FEDAVG_BITS, seed=2)
    rows = compare_runs([a, b], tmp_path / "out")
    assert [r["label"] for r in rows] == ["fedavg classes:1 (seed=1)", "fedavg classes:1 (seed=2)"]


def test_plot_run(runs: list[Path]) -> None:
    for run in runs:  # zero bits, linear bits, log bits + incomplete
        paths = plot_run(run)
        assert [p.name for p in paths] == ["learning_curve.png", "accuracy_vs_bits.png"]
        assert all(p.parent == run / "plots" and p.stat().st_size > 1000 for p in paths)


def test_render_table_and_format_bits(runs: list[Path], tmp_path: Path, no_overlay: None) -> None:
    rows = compare_runs(runs, tmp_path / "out")
    buf = io.StringIO()
    Console(file=buf, width=200).print(render_table(rows, title="cmp"))
    text = buf.getvalue()
    assert "fedavg classes:1" in text and "2.50 MB" in text and "cmp" in text
    assert format_bits(9_840_000) == "1.23 MB"
    assert format_bits(8_000) == "1.00 kB"
    assert format_bits(80) == "10 B"
    assert format_bits(8 * 10**9) == "1.00 GB"
    assert format_bits(None) == "-"


def test_corrupt_or_missing_files_raise_data_error(runs: list[Path], tmp_path: Path) -> None:
    with (runs[1] / "metrics.jsonl").open("a") as fh:
        fh.write('{"round": 11, "accur\n')
    with pytest.raises(DataError, match=r"metrics\.jsonl line 12"):
        load_run(runs[1])
    with pytest.raises(DataError, match="metrics.jsonl"):
        compare_runs([runs[0], runs[1]], tmp_path / "out")
    with pytest.raises(DataError, match="not found"):
        load_run(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="metrics.jsonl"):
        load_run(empty)
    (runs[0] / "summary.json").write_text("{oops")
    with pytest.raises(DataError, match="summary.json"):
        load_run(runs[0])


@pytest.mark.parametrize("n_clients", [100, 1000])
def test_label_heatmap(tmp_path: Path, n_clients: int) -> None:
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 50, size=(n_clients, 10))
    path = plot_label_heatmap(counts, tmp_path / "sub" / f"h{n_clients}.png", title="labels")
    assert path.exists() and path.stat().st_size > 1000


def test_label_heatmap_small_and_bad_shape(tmp_path: Path) -> None:
    assert plot_label_heatmap(np.eye(5) * 10, tmp_path / "small.png").stat().st_size > 1000
    with pytest.raises(ValueError):
        plot_label_heatmap(np.zeros(5), tmp_path / "bad.png")
