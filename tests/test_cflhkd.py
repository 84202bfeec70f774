"""CFLHKD (reconstructed): reduction to FedAvg, the two-level ledger in closed form, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fldistill.runner import Runner


def _science(d: Path) -> list[dict]:
    recs = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k in ("round", "accuracy", "loss", "train_loss")} for r in recs]


@pytest.mark.parametrize("engine", ["sequential", "vectorised"])
def test_one_cluster_one_edge_round_no_kd_is_fedavg(tmp_path: Path, make_cfg, engine: str) -> None:
    cfg = dict(clients=8, rounds=3, participation=0.5, engine=engine)
    Runner(make_cfg(**cfg), tmp_path / "fedavg", quiet=True).run()
    hp = {"k": 1, "edge_rounds": 1, "lam": 0.0, "warmup_rounds": 0}
    r = Runner(make_cfg(method="cflhkd", params=hp, **cfg), tmp_path / "h", quiet=True)
    s = r.run()
    assert _science(tmp_path / "h") == _science(tmp_path / "fedavg")
    assert s["bits"]["server->client"] == 0 and s["bits"]["edge->client"] > 0  # the same traffic, on edge hops


@pytest.mark.parametrize("engine", ["sequential", "vectorised"])
def test_ledger_equals_closed_form(tmp_path: Path, make_cfg, engine: str) -> None:
    n, t, k, re, warm = 8, 3, 2, 2, 1
    hp = {"k": k, "edge_rounds": re, "lam": 0.5, "warmup_rounds": warm}
    r = Runner(make_cfg(method="cflhkd", clients=n, rounds=t, params=hp, engine=engine, ledger={"init_model_free": False}),
               tmp_path / "r", quiet=True)
    s = r.run()
    w = sum(v.numel() for v in r.model.state_dict().values()) * 32
    c = t - warm  # cloud rounds
    want = {
        "train": {"server->client": warm * n * w, "client->server": warm * n * w},  # warm-up FedAvg
        "clustering": {"server->client": n * w, "client->server": n * w},  # every client's update, once
        # per cloud round: each edge gets w_g + the other k-1 models; clients get R_e models plus a
        # k-model teacher pack once; edges send their model up
        "cloud": {"cloud->edge": c * k * k * w, "edge->cloud": c * k * w},
        "edge": {"edge->client": c * (re + k) * n * w, "client->edge": c * re * n * w},
    }
    assert r.ledger.by_phase == want
    assert len(s["clusters"]) == k and sorted(sum(s["clusters"], [])) == list(range(n))
    assert "reconstructed CFLHKD" in s["reconstructed"]


def test_resume_equals_uninterrupted(make_cfg, resume_check) -> None:
    hp = {"k": 2, "edge_rounds": 2, "warmup_rounds": 1, "recluster_every": 2, "variant": "b", "distill_steps": 5}
    resume_check(make_cfg(method="cflhkd", clients=8, rounds=5, params=hp, public={"size": 40}), cut_at=3)


def test_planted_groups_are_recovered(tmp_path: Path, make_cfg) -> None:
    """Four label-swap groups: the clustering of update cosines finds them, and the edge
    models serve their clients far better than the one cloud model can."""
    cfg = make_cfg(method="cflhkd", dataset="mnist1d", partition="iid", clients=24, rounds=5, groups="4:labelswap",
                   params={"k": 4, "warmup_rounds": 2}, local={"amount": 2, "lr": 0.15})
    s = Runner(cfg, tmp_path / "r", quiet=True).run()
    assert s["final_purity"] == 1.0 and s["final_ari"] == 1.0
    assert s["final_personalized_accuracy"] > s["final_accuracy"] + 0.2
    doc = json.loads((tmp_path / "r" / "clustering.json").read_text())
    assert doc["clusters"] == 4 and doc["by_round"][0]["round"] == 3  # clustered before the first cloud round


def test_edges_restarting_from_the_global_model_is_hierarchical_fedavg(tmp_path: Path, make_cfg) -> None:
    """edge_init=global, one edge round, no KD: the cloud model is FedAvg over all clients,
    up to the rounding of averaging in two levels (edges by samples, cloud by cluster sizes)."""
    cfg = dict(clients=8, rounds=3)
    Runner(make_cfg(**cfg), tmp_path / "fedavg", quiet=True).run()
    hp = {"k": 2, "edge_rounds": 1, "lam": 0.0, "warmup_rounds": 0, "edge_init": "global"}
    Runner(make_cfg(method="cflhkd", params=hp, **cfg), tmp_path / "h", quiet=True).run()
    for a, b in zip(_science(tmp_path / "fedavg")[1:], _science(tmp_path / "h")[1:]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and abs(a["accuracy"] - b["accuracy"]) <= 0.01
    hp["edge_init"] = "keep"  # edges that keep their own models drift apart: not FedAvg any more
    Runner(make_cfg(method="cflhkd", params=hp, **cfg), tmp_path / "k", quiet=True).run()
    assert _science(tmp_path / "k")[-1]["loss"] != pytest.approx(_science(tmp_path / "fedavg")[-1]["loss"], rel=1e-4)
