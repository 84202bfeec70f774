"""`fldistill flower ...`: the app carries the resolved config; bad input fails before anything starts."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from fldistill.cli import main


def test_flower_app_embeds_the_resolved_config(tmp_path: Path) -> None:
    pytest.importorskip("flwr")
    rc = main(["flower", "app", "--dataset", "digits", "--clients", "4", "--rounds", "2", "--seed", "3",
               "--set", "flower.timeout_s=20", "--out", str(tmp_path / "run"), "--app-dir", str(tmp_path / "app")])
    assert rc == 0
    conf = tomllib.loads((tmp_path / "app" / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    cfg = json.loads(conf["config"]["fldistill-config"])
    assert (cfg["clients"], cfg["rounds"], cfg["seed"], cfg["flower"]["timeout_s"]) == (4, 2, 3, 20.0)
    assert cfg["local"]["lr"] == 0.15  # FedAvg's tuned default, resolved for every node
    assert conf["config"]["out"] == str((tmp_path / "run").resolve())
    assert conf["components"]["clientapp"] == "fldistill.flower.deploy:client_app"


def test_flower_commands_fail_fast_on_bad_config(tmp_path: Path, capsys) -> None:
    assert main(["flower", "local", "--method", "nope", "--out", str(tmp_path / "r")]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_core_never_imports_flwr() -> None:
    import subprocess
    import sys

    code = (
        "import sys, fldistill.cli, fldistill.runner; fldistill.cli.make_parser(); "
        "from fldistill.methods import all_methods; all_methods(); "
        "sys.exit(int(any(m.split('.')[0] == 'flwr' for m in sys.modules)))"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_missing_flower_says_how_to_install(monkeypatch, capsys) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "flwr", None)  # import flwr now raises ImportError
    assert main(["flower", "sim", "--dataset", "digits"]) == 2
    assert 'pip install "fldistill[flower]"' in capsys.readouterr().err
