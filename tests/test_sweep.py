"""`fldistill sweep`: a grid times seeds, each an ordinary run; resumable; workers split the cores; aggregated over seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fldistill.cli import main
from fldistill.errors import ConfigError
from fldistill.sweep import parse_grid, parse_seeds, plan, point_label, worker_env

TINY = ["--method", "fedavg", "--dataset", "digits", "--partition", "classes:2", "--clients", "4", "--rounds", "2", "--quiet"]


def _records(run: Path) -> list[tuple[float, float, dict]]:
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["accuracy"], r["loss"], r["bits"]) for r in recs]


def test_grid_and_seed_parsing() -> None:
    assert parse_grid(["local.lr=0.05,0.1", "params.mode=[\"a,b\", \"c\"]", "engine=sequential"]) == {
        "local.lr": [0.05, 0.1],
        "params.mode": ["a,b", "c"],
        "engine": ["sequential"],
    }
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds("3-5") == [3, 4, 5]
    for bad, needle in (("local.lr", "KEY=V1,V2"), ("seed=1,2", "--seeds"), ("local.lr=0.1,0.1", "twice")):
        with pytest.raises(ConfigError, match=needle):
            parse_grid([bad])
    for bad in ("a", "1,1", "-1"):
        with pytest.raises(ConfigError):
            parse_seeds(bad)
    assert point_label((("local.lr", 0.05), ("params.mu", 0))) == "local.lr-0.05_params.mu-0"


def test_every_point_is_checked_before_any_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sweep point local.lr--1/s0: invalid value for 'local.lr'"):
        plan({"method": "fedavg"}, {"local.lr": [0.1, -1]}, [0], tmp_path / "sw")
    assert not (tmp_path / "sw").exists()


def test_workers_split_the_cores() -> None:
    env = worker_env(3)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"


def test_sweep_runs_are_ordinary_runs_resumable_and_aggregated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sw"
    # one run of the sweep was interrupted after round 1 (a 1-round run extends like a resume)
    assert main(["run", *TINY, "--set", "local.lr=0.1", "--seed", "1", "--out", str(out / "local.lr-0.1" / "s1"), "--rounds", "1"]) == 0
    args = ["sweep", *TINY, "--grid", "local.lr=0.05,0.1", "--seeds", "0,1", "--workers", "2", "--out", str(out)]
    assert main(args) == 0
    runs = sorted(p.parent.name + "/" + p.name for p in out.glob("*/s*") if (p / "summary.json").exists())
    assert runs == ["local.lr-0.05/s0", "local.lr-0.05/s1", "local.lr-0.1/s0", "local.lr-0.1/s1"]
    # each equals the same command as a plain run, the resumed one included
    for lr, seed in (("0.05", "0"), ("0.1", "1")):
        plain = tmp_path / f"plain-{lr}-{seed}"
        assert main(["run", *TINY, "--set", f"local.lr={lr}", "--seed", seed, "--out", str(plain)]) == 0
        assert _records(out / f"local.lr-{lr}" / f"s{seed}") == _records(plain)
        assert json.loads((plain / "config.json").read_text()) == json.loads((out / f"local.lr-{lr}" / f"s{seed}" / "config.json").read_text())
    assert (out / "sweep.md").read_text().count("±") >= 2 and (out / "accuracy_bands.png").stat().st_size > 0
    # run again: nothing is rerun
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/s*/metrics.jsonl")}
    capsys.readouterr()
    assert main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/s*/metrics.jsonl")} == before
    assert "4 finished earlier" in capsys.readouterr().err
    # another call into the same folder (a new grid point, a new seed) adds to the manifest:
    # the aggregate covers every finished run of the folder, not only this call's
    assert main(["sweep", *TINY, "--grid", "local.lr=0.2", "--seeds", "0", "--out", str(out)]) == 0
    table = (out / "sweep.csv").read_text()
    assert all(f"local.lr-{lr}" in table for lr in ("0.05", "0.1", "0.2"))
    assert len(json.loads((out / "sweep.json").read_text())["runs"]) == 5
    # another base config in the same folder is refused by key
    capsys.readouterr()
    assert main(["sweep", *TINY, "--set", "local.momentum=0.5", "--grid", "local.lr=0.05", "--out", str(out)]) == 2
    assert "another base config (local.momentum" in capsys.readouterr().err


def test_a_failing_run_is_reported_and_the_others_finish(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sw"
    # lr 1e4 diverges (the runner stops it); lr 0.05 finishes
    args = ["sweep", *TINY, "--grid", "local.lr=0.05,10000", "--seeds", "0", "--workers", "2", "--out", str(out)]
    assert main(args) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "failed: local.lr-10000/s0: error:" in err and "lower local.lr" in err
    assert (out / "local.lr-0.05" / "s0" / "summary.json").exists()


def test_the_validation_split_is_carved_from_the_clients_training_data() -> None:
    """Without it the federation is the one built before; with it no client trains on its validation samples."""
    import numpy as np

    from fldistill.config import parse_config
    from fldistill.runner import federation_for

    f0 = federation_for(parse_config({"dataset": "digits", "clients": 4}))
    f1 = federation_for(parse_config({"dataset": "digits", "clients": 4, "validation_fraction": 0.25}))
    assert f0.client_val is None and f1.client_val is not None
    for c in range(4):
        assert np.array_equal(f0.client_test[c], f1.client_test[c])
        assert np.array_equal(np.sort(np.concatenate([f1.client_train[c], f1.client_val[c]])), f0.client_train[c])
        assert len(f1.client_val[c]) == len(f0.client_train[c]) // 4 and not set(f1.client_val[c]) & set(f1.client_train[c])


def test_tune_scores_on_validation_and_writes_a_runnable_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tu"
    assert main(["tune", *TINY, "--grid", "local.lr=0.0001,0.1", "--workers", "2", "--out", str(out)]) == 0
    recs = [json.loads(x) for x in (out / "local.lr-0.1" / "s0" / "metrics.jsonl").read_text().splitlines()]
    assert all("val_accuracy" in r for r in recs)
    assert json.loads((out / "local.lr-0.1" / "s0" / "config.json").read_text())["validation_fraction"] == 0.1
    tuned = json.loads((out / "tuned.json").read_text())
    assert tuned["local"]["lr"] == 0.1 and "validation_fraction" not in tuned and "seed" not in tuned
    assert "chosen: local.lr=0.1" in capsys.readouterr().out
    assert main(["run", "--config", str(out / "tuned.json"), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["local"]["lr"] == 0.1 and saved["validation_fraction"] == 0.0
