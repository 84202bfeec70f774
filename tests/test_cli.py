"""The command line end to end, and each bad input gives one line and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fldistill.cli import main

TINY = ["--dataset", "digits", "--partition", "classes:2", "--clients", "10", "--rounds", "2", "--quiet"]


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fldistill.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_run_compare_list_end_to_end(tmp_path: Path) -> None:
    cfg = tmp_path / "exp.toml"
    cfg.write_text('method = "fedprox"\nrounds = 2\n[local]\namount = 1\nlr = 0.05\n[params]\nmu = 0.1\n')
    assert main(["run", "--config", str(cfg), *TINY, "--out", str(tmp_path / "prox")]) == 0
    assert main(["run", "--method", "centralized", *TINY, "--out", str(tmp_path / "cen"), "--set", "local.amount=1"]) == 0
    saved = json.loads((tmp_path / "prox" / "config.json").read_text())
    assert saved["method"] == "fedprox" and saved["params"] == {"mu": 0.1} and saved["clients"] == 10
    assert main(["compare", str(tmp_path / "prox"), str(tmp_path / "cen"), "--out", str(tmp_path / "cmp")]) == 0
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "fedprox" in md and "centralized" in md
    assert (tmp_path / "cmp" / "accuracy_vs_bits.png").stat().st_size > 0
    for what in ("methods", "datasets", "models"):
        assert main(["list", what]) == 0


def test_list_models_shows_counts(capsys) -> None:
    main(["list", "models"])
    out = capsys.readouterr().out
    assert "mnist_cnn" in out and "44,426" in out


BAD = [
    (["run", "--method", "nope"], "unknown method"),
    (["run", "--dataset", "imagenet"], "unknown dataset"),
    (["run", "--set", "local.learning_rate=0.1"], "unknown config key"),
    (["run", "--set", "colour=red"], "unknown config key"),
    (["run", "--partition", "classes:11"], "classes:1 .. classes:10"),
    (["run", "--clients", "0"], "clients"),
    (["run", "--method", "fedprox", "--set", "params.nu=1"], "no parameter 'nu'"),
    (["run", "--dataset", "mnist"], "--data-dir"),
]


@pytest.mark.parametrize("args,needle", BAD)
def test_bad_input_one_line_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    r = _cli([*args, "--out", str(tmp_path / "r"), "--quiet"], tmp_path)
    assert r.returncode == 2, r.stderr
    msg = r.stderr.strip()
    assert "Traceback" not in msg
    assert len(msg.splitlines()) == 1, msg
    assert needle in msg
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_bad_data_folder_and_corrupt_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _cli(["run", "--dataset", "mnist", "--data-dir", str(empty), "--quiet", "--out", str(tmp_path / "r")], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "train-images-idx3-ubyte" in r.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (bad / name).write_bytes(b"\x00\x00\x08\x03garbage")
    r = _cli(["run", "--dataset", "mnist", "--data-dir", str(bad), "--quiet", "--out", str(tmp_path / "r2")], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_missing_config_file_and_existing_run_folder(tmp_path: Path) -> None:
    r = _cli(["run", "--config", str(tmp_path / "nope.toml")], tmp_path)
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert main(["run", *TINY, "--out", str(tmp_path / "r")]) == 0
    r = _cli(["run", *TINY, "--out", str(tmp_path / "r")], tmp_path)
    assert r.returncode == 2 and "--resume" in r.stderr


def test_resume_refuses_a_changed_science_and_only_extends_rounds(tmp_path: Path) -> None:
    """A resume keeps its config: another lr or method is refused by name; more rounds continue the run."""
    out = tmp_path / "r"
    assert main(["run", *TINY, "--set", "local.lr=0.05", "--out", str(out)]) == 0
    before = (out / "metrics.jsonl").read_text()
    for change, key in ((["--set", "local.lr=0.5"], "local.lr"), (["--method", "kdia"], "method"), (["--seed", "7"], "seed")):
        r = _cli(["run", "--resume", "--out", str(out), "--quiet", *change], tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert key in r.stderr and "only a larger rounds" in r.stderr, r.stderr
    r = _cli(["run", "--resume", "--out", str(out), "--quiet", "--rounds", "1"], tmp_path)
    assert r.returncode == 2 and "rounds can only grow" in r.stderr
    assert (out / "metrics.jsonl").read_text() == before  # nothing was touched
    # the same command again, or a bare resume, is no change; more rounds extend the run
    assert main(["run", "--resume", *TINY, "--set", "local.lr=0.05", "--out", str(out)]) == 0
    assert main(["run", "--resume", "--out", str(out), "--rounds", "4", "--quiet"]) == 0
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in recs] == [0, 1, 2, 3, 4] and json.loads((out / "config.json").read_text())["rounds"] == 4
    # ... and equal an uninterrupted 4-round run
    assert main(["run", *[a if a != "2" else "4" for a in TINY], "--set", "local.lr=0.05", "--out", str(tmp_path / "full")]) == 0
    full = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["accuracy"], r["loss"], r["bits"]) for r in recs] == [(r["accuracy"], r["loss"], r["bits"]) for r in full]


def test_path_arguments_of_the_wrong_kind_are_one_line_errors(tmp_path: Path, capsys) -> None:
    """--out, --config, --data-dir and compare --out: a file for a folder (or the reverse) is caught before any work."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [
        (["run", *TINY, "--out", str(afile)], "is a file, not a folder"),
        (["run", *TINY, "--out", str(afile / "sub")], "is a file, so the folder cannot be created"),
        (["run", "--config", str(tmp_path)], "is a folder, not a file"),
        (["run", "--dataset", "mnist", "--data-dir", str(afile), "--quiet", "--out", str(tmp_path / "m")], "is a file, not a folder"),
        (["run", "--dataset", "mnist", "--data-dir", str(tmp_path / "none"), "--quiet", "--out", str(tmp_path / "m2")], "does not exist"),
        (["compare", str(tmp_path), "--out", str(afile)], "is a file, not a folder"),
    ]
    for args, msg in cases:
        capsys.readouterr()
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1 and "Traceback" not in err, (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # no half-written run folder
