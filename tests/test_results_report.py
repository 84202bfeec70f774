"""docs/results.md is rebuilt from the committed runs by one command, and its numbers are right."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _report():
    spec = importlib.util.spec_from_file_location("results_report", ROOT / "benchmarks" / "results_report.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["results_report"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _fake_run(d: Path, seed: int, curve: list[float], bits_per_round: int, method: str) -> None:
    d.mkdir(parents=True)
    recs = [{"round": 0, "accuracy": 0.1, "bits_total": 0}]
    recs += [{"round": t, "accuracy": a, "bits_total": t * bits_per_round} for t, a in enumerate(curve, 1)]
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    last5 = curve[-5:]
    summary = {"method": method, "seed": seed, "final_accuracy_mean5": sum(last5) / len(last5), "best_accuracy": max(curve),
               "total_bits": len(curve) * bits_per_round, "seconds_per_round": 0.5, "rounds": len(curve)}
    (d / "summary.json").write_text(json.dumps(summary))


def test_the_committed_report_is_up_to_date() -> None:
    """`python benchmarks/results_report.py --check`: docs/results.md equals what the committed runs give."""
    rep = _report()
    assert rep.main(["--check"]) == 0


def test_seed_tables_and_inline_values_are_computed_from_the_runs(tmp_path: Path) -> None:
    base = tmp_path / "suite" / "iid"
    # centralized best 1.0 in both seeds -> target 0.8; fedavg reaches it at rounds 3 and 5
    for s in (0, 1):
        _fake_run(base / f"centralized-s{s}", s, [0.9, 1.0, 1.0, 1.0, 1.0], 0, "centralized")
    _fake_run(base / "fedavg-s0", 0, [0.2, 0.5, 0.8, 0.8, 0.8], 100, "fedavg")
    _fake_run(base / "fedavg-s1", 1, [0.2, 0.5, 0.6, 0.7, 0.9], 100, "fedavg")
    (base / "compare").mkdir()  # folders without summary.json are not runs
    text = _report().render("x {{acc suite/iid/fedavg}} y\n<!-- table: seeds suite -->\n", tmp_path)
    # last-5 means 0.62 and 0.58 -> 0.6000 ± 0.0283
    assert "x 0.6000 ± 0.0283 y" in text
    row = next(line for line in text.splitlines() if line.startswith("| iid | fedavg |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "2" and cells[3] == "0.6000 ± 0.0283"
    assert cells[6] == "4 ± 1 (2/2)"  # rounds 3 and 5
    assert cells[7] == "0.000 MB"  # 300 and 500 bits to the target: 400 bits = 5e-5 MB
    assert "target 0.8 x centralized mean best = 0.8000" in text
    with pytest.raises(SystemExit, match="no finished runs"):
        _report().render("{{acc suite/iid/moon}}", tmp_path)
