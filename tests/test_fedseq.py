"""FedSeq: Eq. (19) exactly, one client per cluster equals FedAvg, resume."""

from __future__ import annotations

import json
from pathlib import Path

from fldistill.runner import Runner


def _metrics(d: Path) -> list[dict]:
    recs = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    for r in recs:
        r.pop("wall_s")
    return recs


def test_fedseq_ledger_equals_eq19(tmp_path: Path, make_cfg) -> None:
    o, j, t = 4, 5, 3
    cfg = make_cfg(method="fedseq", clients=o * j, rounds=t, params={"clusters": "random", "n_clusters": o})
    r = Runner(cfg, tmp_path / "r", quiet=True)
    s = r.run()
    w = sum(v.numel() for v in r.model.state_dict().values())
    assert s["total_bits"] == o * w * 32 * ((2 * t - 1) + t * j)  # Eq. (19)
    assert s["bits"]["client->client"] == o * w * 32 * t * j
    assert s["bits"]["client->server"] == o * w * 32 * t


def test_fedseq_one_client_per_cluster_equals_fedavg(tmp_path: Path, make_cfg) -> None:
    n = 10
    Runner(make_cfg(clients=n, rounds=3), tmp_path / "avg", quiet=True).run()
    Runner(make_cfg(method="fedseq", clients=n, rounds=3, params={"clusters": "random", "n_clusters": n}), tmp_path / "seq", quiet=True).run()
    a, s = _metrics(tmp_path / "avg"), _metrics(tmp_path / "seq")
    keys = ("round", "accuracy", "loss", "bits", "bits_total", "train_loss")
    assert [{k: r.get(k) for k in keys} for r in a] == [{k: r.get(k) for k in keys} for r in s]


def test_fedseq_hfldd_clusters_and_resume(make_cfg, resume_check) -> None:
    cfg = make_cfg(method="fedseq", partition="classes:1", clients=20, rounds=3, public={"size": 50},
                   params={"pretrain_epochs": 2, "pretrain_lr": 0.05})
    _, s = resume_check(cfg, cut_at=2)
    assert sorted(len(c) for c in s["clusters"]) == [10, 10]
