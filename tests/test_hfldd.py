"""HFLDD end to end on a tiny federation: Eq. (18) exactly, clustering, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fldistill.cluster import load_clustering
from fldistill.runner import Runner

HP = {"k": 10, "pretrain_epochs": 2, "pretrain_lr": 0.05, "pretrain_momentum": 0.9, "distiller": "random", "distill_size": 20}


def _cfg(make_cfg, **over):
    base = dict(method="hfldd", partition="classes:1", clients=20, rounds=2, params=dict(HP), public={"size": 50})
    base.update(over)
    return make_cfg(**base)


def test_hfldd_ledger_equals_eq18(tmp_path: Path, make_cfg) -> None:
    cfg = _cfg(make_cfg)
    runner = Runner(cfg, tmp_path / "r", quiet=True)
    s = runner.run()
    fed, ledger = runner.fed, runner.ledger
    heads = s["heads"]
    n, g, nc, t = fed.n_clients, 50, fed.n_classes, cfg.rounds
    b1, b2, lb = cfg.ledger.b1, cfg.ledger.b2, cfg.ledger.label_bits
    d = int(np.prod(fed.input_shape))
    w = sum(v.numel() for v in runner.model.state_dict().values())
    members = [c for c in range(n) if c not in heads]
    distilled = {c: min(HP["distill_size"], len(fed.client_train[c])) for c in members}
    eq18 = n * g * nc * b1 + sum(k * (d * b2 + lb) for k in distilled.values()) + len(heads) * w * (2 * t - 1) * b1
    assert s["total_bits"] == eq18
    assert ledger.by_phase["soft_labels"]["client->server"] == n * g * nc * b1
    assert ledger.by_phase["distill"]["client->client"] == sum(k * (d * b2 + lb) for k in distilled.values())
    assert "server->client" not in ledger.by_phase["distill"] or ledger.by_phase["distill"]["server->client"] == 0


def test_hfldd_clustering_pure_and_saved(tmp_path: Path, make_cfg) -> None:
    out = tmp_path / "r"
    s = Runner(_cfg(make_cfg, rounds=1), out, quiet=True).run()
    cl = load_clustering(out / "clustering.json")
    assert cl["purity"] == 1.0
    # C=1, 20 clients, 10 classes: 10 homogeneous clusters of 2 -> 2 heterogeneous of 10
    assert sorted(len(c) for c in cl["heterogeneous"]) == [10, 10]
    assert all(c["n_classes_covered"] == 10 for c in cl["coverage"])
    assert (out / "plots" / "topology.png").stat().st_size > 0
    rec0 = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert rec0["purity"] == 1.0 and rec0["n_hetero_clusters"] == 2
    assert s["hfldd"]["purity"] == 1.0


def test_hfldd_beats_fedavg_at_one_class(tmp_path: Path, make_cfg) -> None:
    h = Runner(_cfg(make_cfg, rounds=4, params=dict(HP, distiller="none")), tmp_path / "h", quiet=True).run()
    f = Runner(make_cfg(partition="classes:1", clients=20, rounds=4), tmp_path / "f", quiet=True).run()
    assert h["final_accuracy"] > f["final_accuracy"] + 0.2


def test_hfldd_resume_equals_uninterrupted(make_cfg, resume_check) -> None:
    resume_check(_cfg(make_cfg, rounds=3), cut_at=2)


def test_default_k_is_ten_capped_at_half_the_clients(tmp_path: Path, make_cfg) -> None:
    """params.k null: K = min(10, N // 2), so K-Means never leaves (nearly) every client alone."""
    from fldistill.cluster.knowledge import default_k

    assert [default_k(n) for n in (1, 3, 10, 19, 20, 100, 1000)] == [1, 1, 5, 9, 10, 10, 10]
    params = {k: v for k, v in HP.items() if k != "k"}
    Runner(_cfg(make_cfg, clients=8, params=params), tmp_path / "r", quiet=True).run()
    c = json.loads((tmp_path / "r" / "clustering.json").read_text())
    assert c["k"] == 4 and len(set(c["homogeneous"])) == 4, c
