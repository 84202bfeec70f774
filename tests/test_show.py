"""Tests for fldistill.report.show (``fldistill show``) and the compare tables' headers and k labels."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

import fldistill
from fldistill.errors import ConfigError
from fldistill.report.compare import CSV_COLUMNS, compare_runs, last_k_label, render_table
from fldistill.report.show import check_run_dir, select_rows, show_run

KB = 8_000  # bits in one kB (format_bits uses SI bytes)


def _write_run(
    root: Path,
    name: str,
    acc: list[float],
    method: str = "fedavg",
    planned: int | None = None,
    personal: bool = False,
    summary: bool = True,
) -> Path:
    """A run folder shaped like the runner's, written by hand (no training).

    Per round the clients send 1 kB up, the server 2 kB down from round 2 on; bits and
    wall time are cumulative, as in metrics.jsonl; round 0 is the initial evaluation.
    """
    d = root / name
    (d / "plots").mkdir(parents=True)
    (d / "checkpoint").mkdir()
    config = {"method": method, "dataset": "mnist1d", "partition": "iid", "clients": 4, "participation": 1.0,
              "rounds": planned if planned is not None else len(acc) - 1, "seed": 7, "model": "auto",
              "local": {"amount": 2, "batch_size": 32, "lr": 0.15, "momentum": 0.9, "unit": "epochs", "weight_decay": 0.0},
              "params": {"mu": 0.01} if method == "fedprox" else {}, "engine": "auto", "device": "cpu", "eval_every": 1}
    (d / "config.json").write_text(json.dumps(config, indent=2))
    rows = []
    for r, a in enumerate(acc):
        up, down = r * KB, max(0, r - 1) * 2 * KB
        row = {"round": r, "accuracy": a, "loss": round(2.5 - a, 4), "bits": {"server->client": down, "client->server": up},
               "bits_total": up + down, "wall_s": round(0.01 + 0.5 * r, 4)}
        if personal:
            row["personalized_accuracy"] = a + 0.1
            row["personalized_accuracy_worst10"] = a - 0.05
        if r:
            row["train_loss"] = 1.0 / r
        rows.append(row)
    (d / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    if summary:
        trained = acc[1:]
        best = max(range(len(trained)), key=lambda i: trained[i])
        last = rows[-1]
        s = {"method": method, "dataset": "mnist1d", "partition": "iid", "clients": 4, "rounds": len(trained), "seed": 7,
             "model": "mnist1d_cnn", "final_accuracy": trained[-1], "final_accuracy_mean5": sum(trained[-5:]) / len(trained[-5:]),
             "best_accuracy": trained[best], "best_round": best + 1, "total_bits": last["bits_total"], "bits": last["bits"],
             "wall_s": last["wall_s"], "setup_s": 0.01, "seconds_per_round": 0.5, "status": "completed"}
        if personal:
            s["final_personalized_accuracy"] = last["personalized_accuracy"]
            s["final_personalized_accuracy_worst10"] = last["personalized_accuracy_worst10"]
        (d / "summary.json").write_text(json.dumps(s, indent=2))
    return d


def _show(run: Path, rounds: int | None = None) -> str:
    buf = io.StringIO()
    show_run(run, Console(file=buf, width=140), rounds=rounds)
    return buf.getvalue()


def _flat(text: str) -> str:
    """Text with runs of whitespace as one space (rich wraps titles and captions to the table's width)."""
    return " ".join(text.split())


def _table_rows(text: str) -> dict[int, list[str]]:
    """The per-round table's rows by round (lines whose first cell is an integer)."""
    out = {}
    for line in text.splitlines():
        cells = line.split()
        if cells and cells[0].isdigit() and len(cells) >= 6:
            out[int(cells[0])] = cells
    return out


@pytest.fixture
def no_overlay(monkeypatch: pytest.MonkeyPatch) -> None:
    """compare_runs without its overlay PNGs (the tests read numbers and headers only)."""
    import fldistill.report.plots as plots

    monkeypatch.setattr(plots, "plot_overlay", lambda *a, **k: [])


def test_show_complete_run(tmp_path: Path, no_overlay: None) -> None:
    run = _write_run(tmp_path, "fa", [0.1, 0.5, 0.7, 0.6], personal=True)
    (run / "plots" / "learning_curve.png").write_bytes(b"png")
    (run / "clustering.json").write_text(json.dumps({"format": "fldistill.assignment/1", "round": 3, "assignment": [0, 1], "clusters": 2}))
    compare_runs([run], tmp_path / "compare")  # the CLI's default place: a sibling of the run
    text = _show(run)
    assert "complete (3 of 3 rounds)" in text and "incomplete" not in text
    assert "fedavg" in text and "partition iid, 4 clients" in text and "seed 7" in text and "model mnist1d_cnn (auto)" in text
    assert "2 epochs, batch 32, lr 0.15, momentum 0.9" in text
    assert "0.6000 (round 3)" in text  # final
    assert re.search(r"mean of last 3 rounds +0\.6000\s", text) and "last 5" not in text  # (0.5 + 0.7 + 0.6) / 3
    assert "0.7000 (round 2)" in text  # best
    assert "0.7000 (worst 10% of clients: 0.5500)" in text  # personalised, from summary.json
    # 3 kB up + 2 x 2 kB down, largest hop first; wall 1.51 s at 0.5 s/round
    assert "7.00 kB: server->client 4.00 kB, client->server 3.00 kB" in text
    assert "1.5 s (0.500 s/round)" in text and "train_loss 0.3333" in text
    rows = _table_rows(text)
    assert sorted(rows) == [0, 1, 2, 3]
    assert rows[2] == ["2", "0.7000", "*", "1.8000", "3.00", "kB", "4.00", "kB", "0.50", "0.8000"]  # acc, best mark, loss, this round, total, s, personalised
    assert rows[0][1:5] == ["0.1000", "2.4000", "0", "B"]
    assert str(run / "plots" / "learning_curve.png") in text
    assert f"{run / 'clustering.json'} (round 3, 2 clusters)" in text
    assert str(tmp_path / "compare" / "compare.md") in text and str(tmp_path / "compare" / "compare.csv") in text
    assert "--resume" not in text


def test_best_mark_agrees_with_the_summary(tmp_path: Path) -> None:
    """The runner's best is over trained rounds: a higher round-0 accuracy must not get the table's '*'."""
    text = _show(_write_run(tmp_path, "r", [0.9, 0.5, 0.7, 0.6]))
    assert re.search(r"best accuracy +0\.7000 \(round 2\)", text)
    rows = _table_rows(text)
    assert rows[2][2] == "*" and rows[0][2] != "*"


def test_show_compare_folder_of_other_runs_is_not_listed(tmp_path: Path, no_overlay: None) -> None:
    a = _write_run(tmp_path, "a", [0.1, 0.5])
    b = _write_run(tmp_path, "b", [0.1, 0.6])
    compare_runs([b], tmp_path / "compare")
    assert "compare.md" not in _show(a) and "compare.md" in _show(b)


def test_show_incomplete_run(tmp_path: Path) -> None:
    acc = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    run = _write_run(tmp_path, "ifca", acc, method="ifca", personal=True)
    # interrupted after round 4: no summary, later rounds gone, the last line cut short by the kill
    (run / "summary.json").unlink()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:5]) + "\n" + lines[5][:30] + "\n")
    text = _show(run)
    assert "incomplete at round 4 of 7 (no summary.json)" in text and "complete (" not in text
    assert "skipped 1 corrupt line of metrics.jsonl (line 6)" in text
    assert re.search(r"final accuracy +0\.5000 \(round 4\)", text) and re.search(r"best accuracy +0\.5000 \(round 4\)", text)
    assert re.search(r"mean of last 4 rounds +0\.3500\s", text)  # (0.2 + 0.3 + 0.4 + 0.5) / 4
    assert "0.6000 (worst 10% of clients: 0.4500)" in text  # personalised, from the last row
    assert "10.00 kB: server->client 6.00 kB, client->server 4.00 kB" in text
    assert sorted(_table_rows(text)) == [0, 1, 2, 3, 4]
    assert f"continue with: fldistill run --resume --out {run}" in text


def test_show_run_being_extended_is_incomplete(tmp_path: Path) -> None:
    """A resume to more rounds rewrites config.json; the old summary.json must not make it look complete."""
    run = _write_run(tmp_path, "ext", [0.1, 0.2, 0.3, 0.9, 0.4], planned=6)
    stale = json.loads((run / "summary.json").read_text())
    stale.update(final_accuracy=0.3, best_accuracy=0.3, best_round=2)
    (run / "summary.json").write_text(json.dumps(stale))
    text = _show(run)
    assert "incomplete at round 4 of 6 (summary.json is from a shorter run, now extended)" in text
    assert re.search(r"final accuracy +0\.4000 \(round 4\)", text) and re.search(r"best accuracy +0\.9000 \(round 3\)", text)


def test_show_long_run_caps_rows(tmp_path: Path) -> None:
    acc = [0.1 + 0.004 * r for r in range(201)]
    acc[57] = 0.99  # best, off the every-k grid
    run = _write_run(tmp_path, "long", acc)
    text = _show(run)
    rows = _table_rows(text)
    assert len(rows) <= 20
    assert {0, 1, 2, 57, 198, 199, 200} <= set(rows) and rows[57][2] == "*"
    assert "showing 20 of 201 rounds: first 3, every 15th round, last 3 and the best; * best accuracy" in text
    assert all(r % 15 == 0 for r in set(rows) - {0, 1, 2, 57, 198, 199, 200})
    few = _table_rows(_show(run, rounds=5))
    assert len(few) <= 5 and {0, 57, 200} <= set(few)
    assert len(_table_rows(_show(run, rounds=0))) == 201  # 0: every round


@pytest.mark.parametrize("n", [1, 2, 7, 21, 22, 100, 501])
def test_select_rows_never_exceeds_the_cap(n: int) -> None:
    rounds = list(range(n))
    best = n // 3
    for cap in range(1, 30):
        picked, note = select_rows(rounds, cap, best=best)
        assert picked == sorted(set(picked)) and 1 <= len(picked) <= cap
        assert picked[-1] == n - 1 and (cap == 1 or picked[0] == 0)  # both ends always shown
        assert cap < 3 or best in picked
        assert (note == "") == (n <= cap) and (n <= cap) == (picked == rounds)
    assert select_rows(rounds, 0)[0] == rounds


def test_show_bad_paths_raise_one_line_config_errors(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "runs", "r1", [0.1, 0.2])
    empty = tmp_path / "empty"
    empty.mkdir()
    only_config = tmp_path / "cfg"
    only_config.mkdir()
    (only_config / "config.json").write_text("{}")
    cases = [
        (tmp_path / "nope", "does not exist; pass a folder made by `fldistill run --out`"),
        (run / "metrics.jsonl", f"is a file, not a run folder; pass the folder that holds it ({run})"),
        (tmp_path / "notes.txt", "is a file, not a run folder"),
        (empty, "is not a run folder (no config.json or metrics.jsonl); pass a folder made by `fldistill run --out`"),
        (tmp_path / "runs", "is not a run folder but holds run folders (r1); pass one of them"),
        (only_config, "has config.json but no metrics.jsonl"),
    ]
    (tmp_path / "notes.txt").write_text("x")
    for path, needle in cases:
        with pytest.raises(ConfigError) as err:
            show_run(path, Console(file=io.StringIO()))
        assert needle in str(err.value) and "\n" not in str(err.value), (path, str(err.value))
    assert check_run_dir(run) == run
    with pytest.raises(ConfigError, match="rounds must be >= 0"):
        show_run(run, Console(file=io.StringIO()), rounds=-1)


def test_show_imports_neither_torch_nor_numpy(tmp_path: Path) -> None:
    run = _write_run(tmp_path, "fa", [0.1, 0.5, 0.7], personal=True)
    code = (
        "import io, sys\n"
        "from pathlib import Path\n"
        "from rich.console import Console\n"
        "from fldistill.report.show import show_run\n"
        "buf = io.StringIO()\n"
        f"show_run(Path({str(run)!r}), Console(file=buf, width=120))\n"
        "assert 'complete (2 of 2 rounds)' in buf.getvalue(), buf.getvalue()\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'matplotlib') if m in sys.modules)\n"
        "print('heavy:', heavy)\n"
    )
    src = str(Path(fldistill.__file__).resolve().parents[1])
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": src})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "heavy: []"


def test_compare_headers_distinct_and_target_stated(tmp_path: Path, no_overlay: None) -> None:
    central = _write_run(tmp_path, "central", [0.1, 0.5, 0.8, 0.9, 0.9, 0.9, 0.9], method="centralized")
    short = _write_run(tmp_path, "fa", [0.1, 0.5, 0.75, 0.6])
    rows = compare_runs([central, short], tmp_path / "cmp")
    table = render_table(rows, title="cmp")
    headers = [str(c.header) for c in table.columns]
    assert len(set(headers)) == len(headers), headers
    assert "sent\ntotal" in headers and "sent to\ntarget" in headers and "rounds to\ntarget" in headers
    assert "lastk" in headers  # runs trained 6 and 3 rounds: k differs
    buf = io.StringIO()
    Console(file=buf, width=200).print(table)
    text = _flat(buf.getvalue())
    assert "target accuracy 0.7200: 0.8 x best accuracy of the centralized run 'centralized iid' (0.9000)" in text
    assert "k = min(5, rounds trained)" in text and "mean 5" not in text and "last5" not in text
    assert "rounds / sent to target = the first round reaching the target accuracy" in text
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "Target accuracy: **0.7200** (0.8 x best accuracy of the centralized run" in md
    assert "| final acc (mean of last k) |" in md and "k = min(5, rounds trained)" in md
    assert "| fedavg iid | 0.6000 | 0.6167 (3) |" in md and "| centralized iid | 0.9000 | 0.8800 (5) |" in md
    header = next(line for line in md.splitlines() if line.startswith("| run |"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert len(set(cells)) == len(cells), cells
    with (tmp_path / "cmp" / "compare.csv").open() as fh:
        assert next(csv.reader(fh)) == CSV_COLUMNS  # the CSV keeps its column names


def test_compare_k_label_for_three_round_runs(tmp_path: Path, no_overlay: None) -> None:
    a = _write_run(tmp_path, "a", [0.1, 0.2, 0.3, 0.4])
    b = _write_run(tmp_path, "b", [0.1, 0.3, 0.5, 0.7], method="fedprox")
    rows = compare_runs([a, b], tmp_path / "cmp", target=0.5)
    table = render_table(rows)
    assert "last3" in [str(c.header) for c in table.columns]
    buf = io.StringIO()
    Console(file=buf, width=200).print(table)
    text = _flat(buf.getvalue())
    assert "last3 = mean of last 3 rounds" in text and "target accuracy 0.5000: given explicitly" in text
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| final acc (mean of last 3 rounds) |" in md and "mean 5" not in md
    assert "| fedprox iid | 0.7000 | 0.5000 |" in md  # (0.3 + 0.5 + 0.7) / 3, no per-cell k when all agree


def test_last_k_label() -> None:
    assert last_k_label(3) == "mean of last 3 rounds"
    assert last_k_label(5) == last_k_label(200) == "mean of last 5 rounds"
    assert last_k_label(1) == "mean of last 1 round"
    assert last_k_label(0) == "round 0 only (no round trained)"
