"""Lost clients (a Flower node that dies or times out), simulated in-process.

A transport that drops some clients' replies stands in for FlowerComm; the methods must
finish the run with the replies that came, and HFLDD must follow ``on_lost_head``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fldistill.engine.comm import InProcessComm
from fldistill.runner import Runner

HP = {"k": 2, "pretrain_epochs": 1, "pretrain_lr": 0.05, "distiller": "random", "distill_size": 20}


class Dropping(InProcessComm):
    """InProcessComm whose clients in ``dead`` stop answering from the ``train`` round ``after``."""

    dead: set[int] = set()
    after = 1

    def __init__(self, *a, **kw) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*a, **kw)
        self.train_calls = 0
        self.missing: list[int] = []

    def _execute(self, task_name, requests, progress):  # type: ignore[no-untyped-def]
        if task_name == "train":
            self.train_calls += 1
        if self.train_calls > self.after:  # the dead clients' requests are sent (and priced) but never answered
            lost = sorted(set(requests) & self.dead)
            self.missing += lost
            requests = {c: r for c, r in requests.items() if c not in self.dead}
        return super()._execute(task_name, requests, progress)

    def round_report(self) -> dict:
        out, self.missing = {"missing": sorted(set(self.missing))}, []
        return out


def _records(d: Path) -> list[dict]:
    return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]


def test_fedavg_round_completes_without_a_lost_client(tmp_path: Path, make_cfg, monkeypatch) -> None:
    monkeypatch.setattr(Dropping, "dead", {3})
    s = Runner(make_cfg(clients=4, rounds=3), tmp_path / "r", quiet=True, comm_factory=Dropping).run()
    recs = _records(tmp_path / "r")
    assert [r["missing"] for r in recs] == [[], [], [3], [3]]
    assert s["status"] == "completed" and s["final_accuracy"] > 0.1


@pytest.mark.parametrize("policy", ["skip", "reassign"])
def test_hfldd_lost_head(tmp_path: Path, make_cfg, monkeypatch, policy: str) -> None:
    # k=3 homogeneous clusters -> heterogeneous clusters of 3: a head and two members
    cfg = make_cfg(
        method="hfldd", clients=6, rounds=3, params={**HP, "k": 3, "on_lost_head": policy}, public={"size": 50}, engine="sequential"
    )
    ref = Runner(cfg, tmp_path / "ref", quiet=True)
    ref.run()
    head = json.loads((tmp_path / "ref" / "summary.json").read_text())["heads"][0]
    monkeypatch.setattr(Dropping, "dead", {head})
    r = Runner(cfg, tmp_path / policy, quiet=True, comm_factory=Dropping)
    s = r.run()
    recs = _records(tmp_path / policy)
    assert recs[2]["missing"] == [head] and recs[2]["lost_heads"] == 1
    if policy == "skip":  # the head stays and keeps being missed
        assert s["heads"][0] == head and recs[3]["lost_heads"] == 1
        assert r.ledger.by_phase["distill"] == ref.ledger.by_phase["distill"]
    else:  # a live member took over and received the members' data again
        assert s["heads"][0] != head and recs[3]["lost_heads"] == 0
        assert r.ledger.by_phase["distill"]["client->client"] > ref.ledger.by_phase["distill"]["client->client"]
    assert s["status"] == "completed"
