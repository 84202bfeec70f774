"""Resume on Flower: a ServerApp that dies mid-run continues from its last checkpoint.

Every run here is configured for 3 rounds and really interrupted after round 1 was
checkpointed (an exception inside the ServerApp on the simulation runtime, SIGKILL of the
``flwr-serverapp`` process on a real deployment); the resumed run must end as an
uninterrupted one: accuracy per round within float tolerance, bits per round and the
summary ledger identical, the same HFLDD clustering. HFLDD is the case that matters: its
heads train every round on the members' distilled data, which sits in the heads' inboxes
on the nodes and is lost with the Flower run, so the server must send it again (counted
as ``resume_bits``, outside the ledger).

The reference is the in-process runner (tests/test_flower.py shows Flower runs equal it).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flwr")

from fldistill.errors import ConfigError  # noqa: E402
from fldistill.flower.local import LocalDeployment  # noqa: E402
from fldistill.flower.sim import run_flower_simulation  # noqa: E402
from fldistill.methods import get_method  # noqa: E402
from fldistill.runner import CHECKPOINT, Runner  # noqa: E402
from test_flower import stop_leaving_nothing  # noqa: E402  (tests/ is on the path)

pytestmark = pytest.mark.slow

HP = {"k": 2, "pretrain_epochs": 1, "pretrain_lr": 0.05, "distiller": "random", "distill_size": 20}


def _cfg(make_cfg, method: str, **over: Any):
    # Flower nodes run one client each: the in-process reference is the sequential engine.
    if method == "hfldd":
        over = {"params": dict(HP), "public": {"size": 50}, **over}
    return make_cfg(**{"method": method, "clients": 4, "rounds": 3, "engine": "sequential", **over})


def _records(d: Path) -> list[dict]:
    return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]


def _checkpoint_round(d: Path) -> int | None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(d / CHECKPOINT), "pt") as f:
            return int(json.loads(f.metadata()["fldistill"])["round"])
    except (OSError, SafetensorError, KeyError):
        return None


class ServerAppDied(Exception):
    """Raised inside the ServerApp to end it mid-run."""


def _assert_same_run(ref: Path, got: Path) -> None:
    """Per round: accuracy within 1e-5, loss within float rounding, bits per hop identical; same ledger and clustering."""
    a, b = _records(ref), _records(got)
    assert [r["round"] for r in b] == [r["round"] for r in a] == [0, 1, 2, 3]
    for ra, rb in zip(a, b):
        assert rb["accuracy"] == pytest.approx(ra["accuracy"], abs=1e-5), f"round {ra['round']}"
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4), f"round {ra['round']}"
        assert rb["bits"] == ra["bits"] and rb["bits_total"] == ra["bits_total"]
        assert rb["missing"] == []
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (ref, got))
    assert sb["status"] == "completed" and sb["rounds"] == 3
    assert sb["bits"] == sa["bits"] and sb["bits_by_phase"] == sa["bits_by_phase"] and sb["total_bits"] == sa["total_bits"]
    assert sb["final_accuracy"] == pytest.approx(sa["final_accuracy"], abs=1e-5)
    assert sb.get("heads") == sa.get("heads")
    if (ref / "clustering.json").exists():
        ca, cb = (json.loads((d / "clustering.json").read_text()) for d in (ref, got))
        for key in ("clusters", "heads", "homogeneous", "k"):
            assert cb.get(key) == ca.get(key), key


def _assert_resent_inboxes(s: dict, recs: list[dict], method: str, resumed_at: int) -> None:
    """The resumed run's extra traffic: the heads' inboxes once more, outside the ledger."""
    fl = s["flower"]
    d2d = s["bits"]["client->client"]
    # the relay (second leg of every member -> head transfer) as in an uninterrupted run
    assert fl["relay_bits"] == d2d
    if method == "hfldd":
        assert d2d > 0
        # every member's distilled data was in a head's inbox at the checkpoint: all of it again, once
        assert fl["resume_bits"] == d2d and fl["resume_messages"] == fl["relay_messages"] > 0
        by_round = {r["round"]: r["resume_bits"] for r in recs}
        assert all(by_round[t] == 0 for t in by_round if t <= resumed_at) and by_round[resumed_at + 1] == d2d
    else:
        assert d2d == 0 and fl["resume_bits"] == 0 and fl["resume_messages"] == 0
    assert fl["resumed_after"] == [resumed_at]
    assert fl["missing_by_round"] == [[]] * 4  # the rounds before the resume are kept too


@pytest.mark.parametrize("method", ["fedavg", "hfldd"])
def test_simulation_resume_matches_uninterrupted(tmp_path: Path, make_cfg, monkeypatch, method: str) -> None:
    """Simulation runtime: the ServerApp dies in round 2 of 3; the resumed run equals an uninterrupted one."""
    cfg = _cfg(make_cfg, method)
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    Runner(cfg, ref, quiet=True).run()
    cls = get_method(method)
    orig = cls.round

    def dies_in_round_2(self, t: int) -> dict:
        if t == 2:
            raise ServerAppDied("killed in round 2")
        return orig(self, t)

    monkeypatch.setattr(cls, "round", dies_in_round_2)
    with pytest.raises(ServerAppDied):  # the simulation runtime re-raises the ServerApp's exception
        run_flower_simulation(cfg, cut)
    assert (cut / "error.txt").read_text() == "ServerAppDied: killed in round 2\n"
    assert [r["round"] for r in _records(cut)] == [0, 1] and _checkpoint_round(cut) == 1
    monkeypatch.setattr(cls, "round", orig)

    s = run_flower_simulation(cfg, cut, resume=True)
    _assert_same_run(ref, cut)
    _assert_resent_inboxes(s, _records(cut), method, resumed_at=1)
    assert not (cut / "error.txt").exists()  # the failure resumed from is superseded


def test_flower_resume_refuses_a_changed_config(tmp_path: Path, make_cfg) -> None:
    """Every Flower entry point refuses to resume with another config, in the runner's one line, before starting anything."""
    from fldistill.cli import main

    out = tmp_path / "run"
    Runner(_cfg(make_cfg, "fedavg", rounds=1), out, quiet=True).run()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    changed = _cfg(make_cfg, "fedavg", local={"lr": 0.1})
    with pytest.raises(ConfigError) as sim_err:
        run_flower_simulation(changed, out, resume=True)
    msg = str(sim_err.value)
    assert "--resume would change the run in" in msg and "local.lr: 0.05 -> 0.1" in msg and "\n" not in msg
    assert "rounds:" not in msg  # a larger rounds is the one allowed change
    dep = LocalDeployment(4, tmp_path / "never-started")  # not started: a refusal must come before `flwr run`
    with pytest.raises(ConfigError, match="local.lr: 0.05 -> 0.1"):
        dep.submit(changed, out, resume=True)
    assert main(["flower", "local", "--resume", "--out", str(out), "--set", "local.lr=0.1"]) == 2
    assert main(["flower", "app", "--resume", "--out", str(out), "--app-dir", str(tmp_path / "app"), "--seed", "7"]) == 2
    assert not (tmp_path / "app").exists() and not (tmp_path / "never-started").exists()
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # the run folder is untouched
    # the allowed change: a resumed app may run more rounds, and says it resumes
    import tomllib

    assert main(["flower", "app", "--resume", "--out", str(out), "--app-dir", str(tmp_path / "app"), "--rounds", "3"]) == 0
    conf = tomllib.loads((tmp_path / "app" / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert conf["resume"] is True and json.loads(conf["fldistill-config"])["rounds"] == 3


def test_a_checkpoint_with_node_stores_is_not_resumed_on_flower(tmp_path: Path, make_cfg) -> None:
    """A client store lives only on its node: a checkpoint taken while one existed is refused, naming the clients."""
    from fldistill.errors import DataError
    from fldistill.flower.comm import FlowerComm
    from fldistill.ledger import Ledger

    def comm() -> FlowerComm:  # restoring a checkpoint needs no grid, nodes or data
        return FlowerComm(None, {}, Ledger(32, 32, 8), None, None, None, 0, timeout_s=1.0)  # type: ignore[arg-type]

    running = comm()
    running._track(2, {"inbox": [], "store": ["c_i"]})  # what client 2's node replies when its task kept a store
    tensors, meta = running.state_dict()
    with pytest.raises(DataError, match=r"client\(s\) \[2\] kept state in their store \(\['c_i'\]\)"):
        comm().load_state_dict(tensors, meta)
    running.node_stores.clear()  # without a store the same checkpoint restores
    comm().load_state_dict(*running.state_dict())


@pytest.fixture
def deployment(tmp_path: Path):
    """SuperLink + 4 SuperNodes as processes (no TLS: resume does not depend on it); every process gone after."""
    dep = LocalDeployment(4, tmp_path / "deploy")
    try:
        dep.start()
        yield dep
    finally:
        assert stop_leaving_nothing(dep), "no Flower process to check"


@pytest.mark.deployment
def test_deployment_resume_after_the_serverapp_is_killed(deployment: LocalDeployment, tmp_path: Path, make_cfg) -> None:
    """Deployment runtime: SIGKILL the ServerApp process of an HFLDD run after round 1; resubmitted with resume, it ends as uninterrupted.

    The SuperNodes stay up, but the resubmission is a new Flower run: its nodes start
    with empty context.state, so the heads train on the re-sent inboxes.
    """
    dep = deployment
    cfg = _cfg(make_cfg, "hfldd", flower={"timeout_s": 120})
    ref, out = tmp_path / "ref", tmp_path / "hfldd"
    Runner(cfg, ref, quiet=True).run()
    killed: list[int] = []

    def kill_the_serverapp() -> None:
        deadline = time.monotonic() + 1200
        while time.monotonic() < deadline:
            if (_checkpoint_round(out) or 0) >= 1:
                for pid in dep.serverapp_pids():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=kill_the_serverapp, daemon=True)
    watcher.start()
    with pytest.raises(RuntimeError, match="ServerApp died"):
        dep.submit(cfg, out, timeout_s=1200)  # generous: a loaded 2-core machine runs a deployment slowly
    watcher.join(timeout=5)
    assert killed, "no ServerApp was killed"
    cut_at = _checkpoint_round(out)
    assert cut_at is not None and 1 <= cut_at < 3, "the kill must interrupt the run before its last round"
    assert not (out / "summary.json").exists()

    s = dep.submit(cfg, out, timeout_s=1200, resume=True)
    _assert_same_run(ref, out)
    _assert_resent_inboxes(s, _records(out), "hfldd", resumed_at=cut_at)
