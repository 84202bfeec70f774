"""Tests for fldistill.report.seeds: grouping runs over seeds, statistics, tables, band plots, and compare's use of them."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from fldistill.cli import main
from fldistill.errors import ConfigError
from fldistill.report.compare import CSV_COLUMNS, PERSONAL_COLUMNS, compare_runs, load_run
from fldistill.report.seeds import (
    PERSONAL_SEED_COLUMNS,
    SEED_CSV_COLUMNS,
    SEED_OUTPUTS,
    group_runs,
    plot_seed_curves,
    render_seed_table,
    seed_curve,
    seed_stats,
    seed_table,
    write_seed_csv,
    write_seed_markdown,
)

KB = 8_000  # bits in one kB

# Three seeds of one setting (6 trained rounds) and two of another; round 0 is the initial evaluation.
A_ACC = {
    0: [0.1, 0.3, 0.5, 0.6, 0.7, 0.75, 0.80],
    1: [0.1, 0.35, 0.55, 0.65, 0.72, 0.78, 0.82],
    2: [0.1, 0.2, 0.4, 0.5, 0.6, 0.65, 0.70],
}
A_SPR = {0: 0.5, 1: 0.6, 2: 0.7}  # seconds per round
B_ACC = {
    0: [0.1, 0.4, 0.6, 0.7, 0.8, 0.85, 0.9],
    1: [0.1, 0.45, 0.65, 0.75, 0.82, 0.86, 0.88],
}


def _write_run(
    root: Path,
    name: str,
    acc: list[float],
    seed: int,
    method: str = "fedavg",
    lr: float = 0.15,
    params: dict | None = None,
    partition: str = "iid",
    spr: float = 0.5,
    personal: bool = False,
    config: bool = True,
    summary: bool = True,
    planned: int | None = None,
) -> Path:
    """A run folder shaped like the runner's (config.json, metrics.jsonl, summary.json), written by hand.

    ``planned`` is config.json's rounds (default: those in ``acc``; more for an interrupted run).
    Per round the clients send 1 kB up and the server 1 kB down (cumulative in metrics.jsonl);
    with ``personal`` the personalised accuracy is the global one + 0.05 (worst 10%: - 0.05).
    """
    d = root / name
    (d / "plots").mkdir(parents=True)
    cfg = {
        "clients": 4, "dataset": "digits", "device": "cpu", "engine": "auto", "eval_every": 1,
        "local": {"amount": 2, "batch_size": 32, "lr": lr, "momentum": 0.9, "unit": "epochs", "weight_decay": 0.0},
        "method": method, "model": "auto", "name": name, "params": params or {}, "participation": 1.0,
        "partition": partition, "public": {"size": None, "source": "auto"}, "rounds": planned or len(acc) - 1, "seed": seed,
    }
    if config:
        (d / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    rows = []
    for r, a in enumerate(acc):
        row = {"round": r, "accuracy": a, "loss": 2.5 - a, "bits": {"server->client": r * KB, "client->server": r * KB},
               "bits_total": 2 * r * KB, "wall_s": round(1.0 + spr * r, 4)}
        if personal:
            row["personalized_accuracy"] = a + 0.05
            row["personalized_accuracy_worst10"] = a - 0.05
        rows.append(row)
    (d / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    if summary:
        trained = acc[1:]
        best = max(range(len(trained)), key=lambda i: trained[i])
        s = {"method": method, "dataset": "digits", "partition": partition, "clients": 4, "participation": 1.0,
             "rounds": len(trained), "seed": seed, "model": "digits_cnn", "final_accuracy": trained[-1],
             "final_accuracy_mean5": sum(trained[-5:]) / len(trained[-5:]), "best_accuracy": trained[best],
             "best_round": best + 1, "total_bits": rows[-1]["bits_total"], "total_bytes": rows[-1]["bits_total"] // 8,
             "bits": rows[-1]["bits"], "wall_s": rows[-1]["wall_s"], "setup_s": 1.0, "seconds_per_round": spr,
             "status": "completed"}
        if personal:
            s["final_personalized_accuracy"] = rows[-1]["personalized_accuracy"]
            s["final_personalized_accuracy_worst10"] = rows[-1]["personalized_accuracy_worst10"]
        (d / "summary.json").write_text(json.dumps(s, indent=2))
    return d


@pytest.fixture
def two_settings(tmp_path: Path) -> list[Path]:
    """lr 0.05 (seeds 0, 1, 2, personalised metrics) and lr 0.1 (seeds 0, 1), interleaved as a sweep would list them."""
    a = {s: _write_run(tmp_path, f"a-s{s}", acc, s, lr=0.05, spr=A_SPR[s], personal=True) for s, acc in A_ACC.items()}
    b = {s: _write_run(tmp_path, f"b-s{s}", acc, s, lr=0.1) for s, acc in B_ACC.items()}
    return [a[0], b[0], a[1], b[1], a[2]]


@pytest.fixture
def no_overlay(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip compare's per-run overlay PNGs (these tests read the seed outputs)."""
    import fldistill.report.plots as plots

    monkeypatch.setattr(plots, "plot_overlay", lambda *a, **k: [])


def _load(dirs: list[Path]) -> list:
    return [load_run(d) for d in dirs]


def _text(table: object, width: int = 200) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width).print(table)
    return buf.getvalue()


# ---------------------------------------------------------------- grouping


def test_group_runs_by_seed_two_configs_three_seeds(tmp_path: Path) -> None:
    dirs = []
    for s in (2, 0, 1):  # seeds out of order: a group lists them ascending
        dirs.append(_write_run(tmp_path, f"p-s{s}", A_ACC[s], s, method="fedprox", lr=0.05, params={"mu": 0}))
        dirs.append(_write_run(tmp_path, f"q-s{s}", A_ACC[s], s, method="fedprox", lr=0.1, params={"mu": 0.01}))
    groups = group_runs(_load(dirs))
    assert [g.label for g in groups] == ["local.lr=0.05 params.mu=0", "local.lr=0.1 params.mu=0.01"]
    assert [g.seeds for g in groups] == [[0, 1, 2], [0, 1, 2]]
    assert [[r.run_dir.name for r in g.records] for g in groups] == [["p-s0", "p-s1", "p-s2"], ["q-s0", "q-s1", "q-s2"]]
    assert "seed" not in groups[0].config and "name" not in groups[0].config  # the names differ per run: not a difference
    assert groups[0].config["local"]["lr"] == 0.05 and groups[1].config["params"] == {"mu": 0.01}


def test_group_labels_fall_back_to_method_and_partition(tmp_path: Path) -> None:
    one = [_write_run(tmp_path / "one", f"s{s}", A_ACC[s], s, partition="classes:1") for s in (0, 1)]
    assert [g.label for g in group_runs(_load(one))] == ["fedavg classes:1"]  # one group: what it is

    dirs = [
        _write_run(tmp_path, "fa-s0", A_ACC[0], 0),
        _write_run(tmp_path, "fa-s1", A_ACC[1], 1),
        _write_run(tmp_path, "fp1-s0", A_ACC[0], 0, method="fedprox", params={"mu": 0.01}),
        _write_run(tmp_path, "fp2-s0", A_ACC[0], 0, method="fedprox", params={"mu": 0.1}),
        _write_run(tmp_path, "fa-lr", A_ACC[0], 0, lr=0.05, partition="classes:1"),
    ]
    groups = group_runs(_load(dirs))
    # method differs: named by value; params only where two groups of a method would look alike
    assert [g.label for g in groups] == [
        "fedavg iid local.lr=0.15",
        "fedprox iid local.lr=0.15 params.mu=0.01",
        "fedprox iid local.lr=0.15 params.mu=0.1",
        "fedavg classes:1 local.lr=0.05",
    ]
    assert [len(g.records) for g in groups] == [2, 1, 1, 1]


def test_runs_without_config_are_their_own_groups(tmp_path: Path) -> None:
    a = _write_run(tmp_path, "x", A_ACC[0], 0, config=False)
    b = _write_run(tmp_path, "y", A_ACC[1], 0, config=False)  # same seed, but nothing says they are the same setting
    c = _write_run(tmp_path, "z-s0", A_ACC[0], 0, lr=0.05)
    d = _write_run(tmp_path, "z-s1", A_ACC[1], 1, lr=0.05)
    groups = group_runs(_load([a, b, c, d]))
    assert [len(g.records) for g in groups] == [1, 1, 2]
    assert groups[0].config == {} and groups[0].seeds == [0]
    assert [g.label for g in groups] == ["fedavg iid (x)", "fedavg iid (y)", "fedavg iid (z-s0)"]


def test_duplicate_seed_in_a_group_is_refused(tmp_path: Path, no_overlay: None) -> None:
    a = _write_run(tmp_path, "a-s0", A_ACC[0], 0)
    b = _write_run(tmp_path, "a-s1", A_ACC[1], 1)
    again = tmp_path / "rerun-s0"
    shutil.copytree(a, again)
    with pytest.raises(ConfigError) as err:
        group_runs(_load([a, b, again]))
    msg = str(err.value)
    assert "\n" not in msg and str(a) in msg and str(again) in msg and "seed 0" in msg and "twice" in msg
    # compare refuses before writing anything
    with pytest.raises(ConfigError, match="count twice"):
        compare_runs([a, b, again], tmp_path / "cmp")
    assert not (tmp_path / "cmp").exists()
    # the same folder given twice is the same seed twice
    with pytest.raises(ConfigError, match="seed 1"):
        group_runs(_load([b, b]))
    # a different config with the same seed is another group, not a duplicate
    other = _write_run(tmp_path, "lr-s0", A_ACC[0], 0, lr=0.3)
    assert [len(g.records) for g in group_runs(_load([a, b, other]))] == [2, 1]


# ---------------------------------------------------------------- statistics


def test_seed_stats_known_numbers() -> None:
    mean, std, ci = seed_stats([1, 2, 3])
    assert mean == 2.0 and std == 1.0
    # t_{0.975, 2} in closed form (two degrees of freedom: t = (2p - 1) sqrt(2 / (4p(1 - p)))); tables give 4.3026527299
    t2 = 0.95 * math.sqrt(2 / (4 * 0.975 * 0.025))
    assert ci == pytest.approx(t2 / math.sqrt(3), rel=1e-12) and ci == pytest.approx(4.302652729911275 / math.sqrt(3), rel=1e-9)
    mean, std, ci = seed_stats([0.80, 0.82, 0.79, 0.81])
    assert mean == pytest.approx(0.805)
    assert std == pytest.approx(math.sqrt(0.0005 / 3))  # squared deviations 2.25e-4 + 2.25e-4 + 2.5e-5 + 2.5e-5
    assert ci == pytest.approx(3.182446305284263 * math.sqrt(0.0005 / 3) / 2, rel=1e-12)  # t_{0.975, 3}
    mean, std, ci = seed_stats([0.7])
    assert (mean, std) == (0.7, 0.0) and math.isnan(ci)
    assert seed_stats([0.5, 0.5])[1:] == (0.0, 0.0)
    with pytest.raises(ValueError):
        seed_stats([])


def test_seed_table_values_equal_hand_computed(two_settings: list[Path]) -> None:
    groups = group_runs(_load(two_settings))
    assert [g.label for g in groups] == ["local.lr=0.05", "local.lr=0.1"]
    rows = seed_table(groups, target=0.75)
    a, b = rows
    final = [A_ACC[s][-1] for s in (0, 1, 2)]  # 0.80, 0.82, 0.70
    assert a["n"] == 3 and a["seeds"] == [0, 1, 2] and b["n"] == 2 and b["seeds"] == [0, 1]
    assert a["final_accuracy_mean"] == pytest.approx(statistics.mean(final)) and a["final_accuracy_mean"] == pytest.approx(0.77333333)
    assert a["final_accuracy_std"] == pytest.approx(statistics.stdev(final))
    assert a["final_accuracy_ci95"] == pytest.approx(4.3026527297 * statistics.stdev(final) / math.sqrt(3))
    assert a["last_k"] == 5
    assert a["last_k_mean"] == pytest.approx(statistics.mean(statistics.mean(A_ACC[s][-5:]) for s in (0, 1, 2)))
    assert a["last_k_std"] == pytest.approx(statistics.stdev([statistics.mean(A_ACC[s][-5:]) for s in (0, 1, 2)]))
    assert a["best_accuracy_mean"] == pytest.approx(statistics.mean(max(A_ACC[s][1:]) for s in (0, 1, 2)))
    # 0.75 is first reached at round 5 by seeds 0 and 1; seed 2 never reaches it
    assert a["rounds_to_target_mean"] == 5.0 and a["reached_target"] == 2
    assert b["rounds_to_target_mean"] == pytest.approx((4 + 3) / 2) and b["reached_target"] == 2  # 0.8 at round 4, 0.75 at 3
    assert a["total_bits_mean"] == 2 * 6 * KB and a["total_MB_mean"] == pytest.approx(0.012)
    assert a["seconds_per_round_mean"] == pytest.approx(0.6)
    pers = [A_ACC[s][-1] + 0.05 for s in (0, 1, 2)]
    assert a["final_personalized_accuracy_mean"] == pytest.approx(statistics.mean(pers))
    assert a["final_personalized_accuracy_std"] == pytest.approx(statistics.stdev(pers))
    assert a["final_personalized_accuracy_worst10_mean"] == pytest.approx(statistics.mean(final) - 0.05)
    assert b["final_personalized_accuracy_mean"] is None and b["final_personalized_accuracy_std"] is None
    assert a["target"] == b["target"] == 0.75 and a["target_how"] == "given explicitly"
    assert a["incomplete"] == 0 and a["run_dirs"] == [str(two_settings[i]) for i in (0, 2, 4)]
    assert seed_table(groups, target=0.99)[0]["rounds_to_target_mean"] is None  # none reached


def test_seed_table_default_target(tmp_path: Path, two_settings: list[Path]) -> None:
    groups = group_runs(_load(two_settings))
    # no centralized group: 0.8 x the highest mean best (lr 0.1: (0.9 + 0.88) / 2)
    row = seed_table(groups)[0]
    assert row["target"] == pytest.approx(0.8 * 0.89)
    assert "highest mean best accuracy over seeds among the groups, 'local.lr=0.1' (0.8900)" in row["target_how"]
    central = [_write_run(tmp_path, f"c-s{s}", [0.1, 0.5, 0.6, 0.7, 0.8, 0.85, acc], s, method="centralized") for s, acc in ((0, 0.9), (1, 0.95))]
    rows = seed_table(group_runs(_load(two_settings + central)))
    assert rows[0]["target"] == pytest.approx(0.8 * 0.925)  # the centralized group's mean best, (0.9 + 0.95) / 2
    assert "centralized group 'centralized local.lr=0.15' (0.9250)" in rows[0]["target_how"]
    lr01 = next(r for r in rows if r["label"] == "fedavg local.lr=0.1")
    assert lr01["rounds_to_target_mean"] == 3.5 and lr01["reached_target"] == 2  # 0.74: round 4 (0.8) and round 3 (0.75)


def test_render_markdown_and_csv(tmp_path: Path, two_settings: list[Path]) -> None:
    single = _write_run(tmp_path, "c-s0", A_ACC[0], 0, lr=0.3)
    rows = seed_table(group_runs(_load(two_settings + [single])), target=0.75)
    a = rows[0]
    m, sd, half = a["final_accuracy_mean"], a["final_accuracy_std"], a["final_accuracy_ci95"]
    pm = f"{m:.4f} ± {sd:.4f}"
    ci = f"[{m - half:.4f}, {m + half:.4f}]"
    assert pm == "0.7733 ± 0.0643" and ci == "[0.6136, 0.9330]"
    text = _text(render_seed_table(rows, title="over seeds"))
    assert "over seeds" in text and "target accuracy 0.7500: given explicitly" in text
    assert pm in text and ci in text and "5.0 (2/3)" in text and "3.5 (2/2)" in text and "12.00 kB" in text
    line = next(x for x in text.splitlines() if x.startswith(" local.lr=0.3"))
    assert " 0.8000 " in line and "±" not in line and " - " in line  # one seed: no spread, no interval
    assert "pers" in text and "95% CI" in text and "last5" in text

    write_seed_markdown(rows, tmp_path / "s.md")
    md = (tmp_path / "s.md").read_text()
    assert f"| local.lr=0.05 | 3 | 0, 1, 2 | {pm} | {ci} |" in md
    assert "Target accuracy: **0.7500** (given explicitly)." in md and "personalised acc (mean ± std)" in md
    assert str(two_settings[4]) in md  # the runs of each group are listed

    write_seed_csv(rows, tmp_path / "s.csv")
    with (tmp_path / "s.csv").open() as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == SEED_CSV_COLUMNS + PERSONAL_SEED_COLUMNS
        got = list(reader)
    assert float(got[0]["final_accuracy_mean"]) == pytest.approx(m)
    assert float(got[0]["final_accuracy_std"]) == pytest.approx(sd)
    assert float(got[0]["final_accuracy_ci95"]) == pytest.approx(half)
    assert got[0]["seeds"] == "0 1 2" and got[0]["reached_target"] == "2" and float(got[0]["rounds_to_target_mean"]) == 5.0
    assert got[2]["final_accuracy_ci95"] == "" and float(got[2]["final_accuracy_std"]) == 0.0 and got[2]["n"] == "1"
    assert got[1]["final_personalized_accuracy_mean"] == ""


# ---------------------------------------------------------------- curves


def test_seed_curve_and_plot(tmp_path: Path, two_settings: list[Path]) -> None:
    groups = group_runs(_load(two_settings))
    rounds, mean, std = seed_curve(groups[0])
    assert rounds.tolist() == list(range(7))
    assert mean == pytest.approx(np.mean([A_ACC[s] for s in (0, 1, 2)], axis=0))
    assert std[3] == pytest.approx(statistics.stdev([A_ACC[s][3] for s in (0, 1, 2)]))
    r1, m1, _ = seed_curve(groups[0], "personalized_accuracy", first_round=1)
    assert r1.tolist() == list(range(1, 7)) and m1[0] == pytest.approx(np.mean([A_ACC[s][1] for s in (0, 1, 2)]) + 0.05)
    assert seed_curve(groups[1], "personalized_accuracy")[0].size == 0  # never logged

    # a seed that logged fewer rounds (interrupted): the band covers the rounds every seed logged
    short = _write_run(tmp_path / "short", "b-s2", B_ACC[0][:4], 2, lr=0.1, summary=False, planned=6)
    cut = group_runs(_load(two_settings + [short]))[1]
    assert cut.seeds == [0, 1, 2] and seed_curve(cut)[0].tolist() == [0, 1, 2, 3]
    assert seed_table([cut], target=0.99)[0]["incomplete"] == 1

    path = tmp_path / "plots" / "bands.png"
    plot_seed_curves(groups, path)
    assert path.stat().st_size > 1000
    plot_seed_curves(groups, tmp_path / "pers.png", metric="personalized_accuracy")
    assert (tmp_path / "pers.png").stat().st_size > 1000


# ---------------------------------------------------------------- compare


def test_compare_writes_seed_outputs_only_with_a_group_of_two(tmp_path: Path, two_settings: list[Path], no_overlay: None) -> None:
    out = tmp_path / "cmp"
    seed_rows: list[dict] = []
    rows = compare_runs(two_settings, out, seed_rows=seed_rows)
    # per-run outputs as before: one row per run, the CSV keeps its columns
    assert len(rows) == 5 and rows[0]["label"] == "fedavg iid (a-s0)"
    with (out / "compare.csv").open() as fh:
        assert next(csv.reader(fh)) == CSV_COLUMNS + PERSONAL_COLUMNS
    assert [r["label"] for r in seed_rows] == ["local.lr=0.05", "local.lr=0.1"] and [r["n"] for r in seed_rows] == [3, 2]
    for name in SEED_OUTPUTS:
        assert (out / name).stat().st_size > 200, name
    assert "| local.lr=0.1 | 2 | 0, 1 |" in (out / "compare_seeds.md").read_text()

    # every run its own setting: no seed outputs, and the earlier ones are removed from the folder
    singles = [two_settings[0], two_settings[1], _write_run(tmp_path, "c-s0", A_ACC[0], 0, lr=0.3)]
    seed_rows = []
    assert len(compare_runs(singles, out, seed_rows=seed_rows)) == 3
    assert seed_rows == []
    assert not any((out / name).exists() for name in SEED_OUTPUTS)
    assert (out / "compare.md").is_file()


def test_cli_compare_end_to_end(tmp_path: Path, two_settings: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, two_settings), "--out", str(out), "--target", "0.75"]) == 0
    text = capsys.readouterr().out
    flat = " ".join(text.split())
    assert "runs that differ only in seed are grouped" in flat
    assert text.index("fedavg iid (a-s0)") < text.index("local.lr=0.05")  # the per-run table first
    assert "0.7733 ± 0.0643" in text and "[0.6136, 0.9330]" in text and "5.0 (2/3)" in text
    assert "compare_seeds.md" in flat and "accuracy_bands.png" in flat
    for name in ("compare.md", "compare.csv", "accuracy_vs_round.png", "accuracy_vs_bits.png", *SEED_OUTPUTS):
        assert (out / name).is_file(), name
    with (out / "compare_seeds.csv").open() as fh:
        assert [r["label"] for r in csv.DictReader(fh)] == ["local.lr=0.05", "local.lr=0.1"]

    # one run per setting: the seed table is not printed
    assert main(["compare", str(two_settings[0]), str(two_settings[1]), "--out", str(tmp_path / "cmp2")]) == 0
    text = capsys.readouterr().out
    assert "differ only in seed" not in text and "compare_seeds" not in text
    assert not (tmp_path / "cmp2" / "compare_seeds.md").exists()

    # a seed given twice: one line, exit status 2
    dup = tmp_path / "dup-s0"
    shutil.copytree(two_settings[0], dup)
    assert main(["compare", str(two_settings[0]), str(dup), "--out", str(tmp_path / "cmp3")]) == 2
    err = capsys.readouterr().err
    assert "same config and seed 0" in " ".join(err.split())
