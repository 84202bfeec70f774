"""Semantics of the engine: exact ledger, FedProx(mu=0) == FedAvg, resume, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fldistill.errors import TrainingDiverged
from fldistill.models import build_model
from fldistill.runner import Runner


def _metrics(run_dir: Path, drop_wall: bool = True) -> list[dict]:
    recs = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    if drop_wall:
        for r in recs:
            r.pop("wall_s")
    return recs


def _n_params(cfg) -> int:
    from fldistill.data.registry import dataset_info
    from fldistill.runner import resolve_model_name

    info = dataset_info(cfg.dataset)
    m = build_model(resolve_model_name(cfg), info.input_shape, info.n_classes)
    return sum(v.numel() for v in m.state_dict().values())


def test_fedavg_ledger_equals_eq3(tmp_path: Path, make_cfg) -> None:
    cfg = make_cfg(rounds=3, clients=10)
    s = Runner(cfg, tmp_path / "r", quiet=True).run()
    w = _n_params(cfg)
    n, t, b1 = 10, 3, 32
    assert s["total_bits"] == n * (2 * t - 1) * w * b1  # HFLDD Eq. (3)
    assert s["bits"]["server->client"] == n * (t - 1) * w * b1
    assert s["bits"]["client->server"] == n * t * w * b1


def test_ledger_charges_initial_model_when_configured(tmp_path: Path, make_cfg) -> None:
    cfg = make_cfg(rounds=2, clients=10, ledger={"init_model_free": False, "b1": 16})
    s = Runner(cfg, tmp_path / "r", quiet=True).run()
    assert s["total_bits"] == 10 * 2 * 2 * _n_params(cfg) * 16


def test_partial_participation_ledger_and_shared_sampling(tmp_path: Path, make_cfg) -> None:
    cfg = make_cfg(rounds=4, clients=10, participation=0.3)
    s = Runner(cfg, tmp_path / "a", quiet=True).run()
    w = _n_params(cfg)
    # 3 clients per round; only round 1's download is the free seed
    assert s["bits"]["client->server"] == 4 * 3 * w * 32
    assert s["bits"]["server->client"] == 3 * 3 * w * 32
    # every method sees the same clients in the same round

    runner = Runner(make_cfg(method="fedprox", rounds=4, clients=10, participation=0.3), tmp_path / "b", quiet=True)
    m1, m2 = runner.build(), Runner(cfg, tmp_path / "c", quiet=True).build()
    assert [m1.sample_clients(t) for t in range(1, 5)] == [m2.sample_clients(t) for t in range(1, 5)]
    assert len(set(map(tuple, (m1.sample_clients(t) for t in range(1, 5))))) > 1


def test_fedprox_mu0_equals_fedavg(tmp_path: Path, make_cfg) -> None:
    Runner(make_cfg(), tmp_path / "avg", quiet=True).run()
    Runner(make_cfg(method="fedprox", params={"mu": 0.0}), tmp_path / "prox", quiet=True).run()
    a, p = _metrics(tmp_path / "avg"), _metrics(tmp_path / "prox")
    assert a == p
    # and the proximal term does act when mu > 0
    Runner(make_cfg(method="fedprox", params={"mu": 1.0}), tmp_path / "prox1", quiet=True).run()
    assert _metrics(tmp_path / "prox1")[-1]["loss"] != a[-1]["loss"]


def test_same_seed_same_metrics_other_seed_differs(tmp_path: Path, make_cfg) -> None:
    Runner(make_cfg(), tmp_path / "a", quiet=True).run()
    Runner(make_cfg(), tmp_path / "b", quiet=True).run()
    Runner(make_cfg(seed=2), tmp_path / "c", quiet=True).run()
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")
    assert _metrics(tmp_path / "a") != _metrics(tmp_path / "c")


@pytest.mark.parametrize("method", ["fedavg", "centralized"])
def test_resume_equals_uninterrupted(make_cfg, resume_check, method: str) -> None:
    resume_check(make_cfg(method=method, rounds=4, participation=0.5), cut_at=3)


def test_run_folder_contents(tmp_path: Path, make_cfg) -> None:
    out = tmp_path / "r"
    Runner(make_cfg(), out, quiet=True).run()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == "fedavg" and cfg["local"]["lr"] == 0.05
    recs = _metrics(out, drop_wall=False)
    assert [r["round"] for r in recs] == [0, 1, 2, 3]
    for r in recs:
        assert {"round", "accuracy", "loss", "bits", "wall_s"} <= set(r)
        assert set(r["bits"]) >= {"client->server", "server->client"}
    s = json.loads((out / "summary.json").read_text())
    for k in ("method", "final_accuracy", "best_accuracy", "rounds", "total_bits", "wall_s"):
        assert k in s
    assert (out / "checkpoint" / "state.safetensors").is_file()
    assert {p.name for p in (out / "plots").glob("*.png")} >= {"learning_curve.png", "accuracy_vs_bits.png", "label_distribution.png"}


def test_divergence_stops_with_clear_message(tmp_path: Path, make_cfg) -> None:
    cfg = make_cfg(local={"lr": 1e6, "momentum": 0.0})
    with pytest.raises(TrainingDiverged, match="lower local.lr"):
        Runner(cfg, tmp_path / "r", quiet=True).run()


def test_fedavg_learns_on_iid_digits(tmp_path: Path, make_cfg) -> None:
    s = Runner(make_cfg(partition="iid", rounds=5, local={"amount": 2}), tmp_path / "r", quiet=True).run()
    assert s["final_accuracy"] > 0.85


def test_local_steps_mode_counts_steps(make_cfg) -> None:
    from fldistill.config import LocalConfig
    from fldistill.engine.training import batch_schedule, num_local_steps

    g = torch.Generator().manual_seed(0)
    lc = LocalConfig(unit="steps", amount=7, batch_size=4)
    batches = list(batch_schedule(10, lc, g))
    assert len(batches) == 7 == num_local_steps(10, lc)
    assert all(len(b) == 4 for b in batches)
    le = LocalConfig(unit="epochs", amount=2, batch_size=4)
    assert len(list(batch_schedule(10, le, g))) == num_local_steps(10, le) == 6


def test_kill_minus_9_leaves_a_resumable_run(tmp_path: Path, make_cfg) -> None:
    """A real SIGKILL mid-run, then --resume: same metrics as an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["--dataset", "digits", "--partition", "classes:2", "--clients", "10", "--rounds", "12", "--seed", "4",
            "--set", "local.amount=2", "--quiet"]
    full = tmp_path / "full"
    subprocess.run([sys.executable, "-m", "fldistill.cli", "run", *args, "--out", str(full)], check=True, capture_output=True)
    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "fldistill.cli", "run", *args, "--out", str(cut)])
    deadline = time.time() + 120
    while time.time() < deadline:
        m = cut / "metrics.jsonl"
        if m.exists() and len(m.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len((cut / "metrics.jsonl").read_text().splitlines())
    assert done < 13, "the run finished before it could be killed"
    subprocess.run([sys.executable, "-m", "fldistill.cli", "run", "--out", str(cut), "--resume", "--quiet"], check=True, capture_output=True)
    assert _metrics(cut) == _metrics(full)
