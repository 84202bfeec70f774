"""DisUE (reconstructed) and FedFTG: reductions to FedAvg, encrypted similarity, ledger, resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from fldistill.cluster import cosine_matrix
from fldistill.cluster.encrypt import _orthogonal, client_secret, encrypt
from fldistill.runner import Runner

SMALL = {"iterations": 2, "batch": 16, "student_steps": 2, "noise_dim": 8, "gen_width": 8}


def _records(d: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]


def _science(recs: list[dict[str, Any]], keys: tuple[str, ...] = ("accuracy", "loss", "train_loss")) -> list[tuple]:
    return [tuple(r.get(k) for k in keys) for r in recs]


def test_orthogonal_encryption_preserves_cosines_and_jl_approximates_them() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 5000, generator=g)
    u = torch.cat([base[i] + 0.5 * torch.randn(4, 5000, generator=g) for i in range(3)])  # 3 planted groups
    secret = client_secret(7)
    e = torch.stack([encrypt(v, "orthogonal", secret) for v in u])
    torch.testing.assert_close(cosine_matrix(e), cosine_matrix(u), rtol=0, atol=1e-6)
    assert not torch.allclose(e, u) and float(e.norm(dim=1)[0] / u.norm(dim=1)[0]) != pytest.approx(1.0)
    j = torch.stack([encrypt(v, "jl", secret, 2048) for v in u])
    assert j.shape == (12, 2048)
    assert float((cosine_matrix(j) - cosine_matrix(u)).abs().max()) < 0.1


@pytest.fixture
def disue_cfg(make_cfg):
    def cfg(**over: Any):
        params = {**SMALL, "groups": 3, **over.pop("params", {})}
        base = dict(method="disue", partition="dirichlet-client:0.3", clients=10, participation=0.5, rounds=3, params=params)
        return make_cfg(**{**base, **over})

    return cfg


def test_disue_one_group_without_distillation_is_fedavg(tmp_path: Path, disue_cfg, make_cfg) -> None:
    """M = 1 and no distillation: θ_U is the average of the round's clients, FedAvg exactly."""
    Runner(disue_cfg(params={"groups": 1, "iterations": 0}), tmp_path / "d", quiet=True).run()
    Runner(make_cfg(partition="dirichlet-client:0.3", clients=10, participation=0.5, rounds=3), tmp_path / "a", quiet=True).run()
    assert _science(_records(tmp_path / "d")) == _science(_records(tmp_path / "a"))
    # distilling the one expert into a copy of itself is a fixed point (zero gradient) ...
    Runner(disue_cfg(params={"groups": 1}), tmp_path / "fix", quiet=True).run()
    fix = _records(tmp_path / "fix")
    assert [r["loss"] for r in fix] == pytest.approx([r["loss"] for r in _records(tmp_path / "a")], rel=1e-6)
    assert fix[-1]["gen_hard"] == pytest.approx(0.0, abs=1e-6)
    # ... while a student starting from the previous universal expert moves
    Runner(disue_cfg(params={"groups": 1, "student_init": "universal"}), tmp_path / "on", quiet=True).run()
    assert _records(tmp_path / "on")[-1]["loss"] != _records(tmp_path / "a")[-1]["loss"]


def test_fedftg_without_distillation_weight_is_fedavg(tmp_path: Path, make_cfg) -> None:
    base = dict(partition="dirichlet-client:0.3", clients=10, participation=0.5, rounds=3)
    Runner(make_cfg(method="fedftg", params={**SMALL, "distill_weight": 0.0}, **base), tmp_path / "f", quiet=True).run()
    Runner(make_cfg(**base), tmp_path / "a", quiet=True).run()
    f, a = _records(tmp_path / "f"), _records(tmp_path / "a")
    assert _science(f) == _science(a)
    assert all(r["gen_fidelity"] > 0 for r in f[1:])  # the generator did train
    Runner(make_cfg(method="fedftg", params=SMALL, **base), tmp_path / "on", quiet=True).run()
    on = _records(tmp_path / "on")
    assert on[-1]["loss"] != a[-1]["loss"] and on[-1]["avg_loss"] != on[-1]["loss"]


def test_encrypted_clustering_equals_plain_clustering(tmp_path: Path, disue_cfg) -> None:
    """Orthogonal encryption: the same groups every round, hence the same run; JL is still a run."""
    runs = {}
    for scheme in ("none", "orthogonal"):
        r = Runner(disue_cfg(params={"encrypt": scheme}, rounds=4), tmp_path / scheme, quiet=True)
        r.run()
        runs[scheme] = r
    a, b = runs["none"].method, runs["orthogonal"].method
    assert a.group.tolist() == b.group.tolist() and (a.group >= 0).sum() >= 6
    keys = ("accuracy", "loss", "personalized_accuracy", "groups")
    assert _science(_records(tmp_path / "none"), keys) == _science(_records(tmp_path / "orthogonal"), keys)
    seen = a.updates.present_rows()
    ea, eb = a.updates.matrix()[seen], b.updates.matrix()[seen]
    assert not torch.allclose(ea, eb)  # the server holds other vectors...
    torch.testing.assert_close(cosine_matrix(eb), cosine_matrix(ea), rtol=0, atol=1e-6)  # ...with the same cosines
    s = Runner(disue_cfg(params={"encrypt": "jl", "jl_dim": 64}), tmp_path / "jl", quiet=True).run()
    assert s["status"] == "completed"
    doc = json.loads((tmp_path / "jl" / "clustering.json").read_text())
    assert len(doc["assignment"]) == 10 and set(doc["assignment"]) <= {-1, 0, 1, 2}


def _walk(obj: Any, seen: set[int], depth: int = 0):
    """Every object reachable from ``obj`` through attributes, containers and banks."""
    if id(obj) in seen or depth > 12:
        return
    seen.add(id(obj))
    yield obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(k, seen, depth + 1)
            yield from _walk(v, seen, depth + 1)
    elif isinstance(obj, (list, tuple, set)):
        for v in obj:
            yield from _walk(v, seen, depth + 1)
    elif hasattr(obj, "__dict__") and not isinstance(obj, (type, torch.Tensor)) and type(obj).__module__.startswith("fldistill"):
        yield from _walk(vars(obj), seen, depth + 1)


def test_the_server_never_holds_the_secret(tmp_path: Path, disue_cfg) -> None:
    cfg = disue_cfg()
    r = Runner(cfg, tmp_path / "d", quiet=True)
    r.run()
    method = r.method
    secret = client_secret(cfg.seed)
    d = method.updates.layout.widths[torch.float32]
    perm, signs, _ = _orthogonal(secret, d)
    tensors, meta = method.state_dict()
    server_side = [method.__dict__[k] for k in method.__dict__ if k not in ("ctx", "comm", "fed")]  # the engine is not the server
    for obj in _walk([server_side, tensors, meta], set()):
        assert not (isinstance(obj, int) and obj == secret)
        if isinstance(obj, torch.Tensor) and obj.numel() == d:
            assert not torch.equal(obj.reshape(-1).long(), perm) and not torch.equal(obj.reshape(-1), signs)
    assert "secret" not in json.dumps(meta)


def test_disue_ledger_is_the_closed_form(tmp_path: Path, disue_cfg) -> None:
    """Down: θ_U per client (round 1 free); up: ω_i, C counts and the encrypted update."""
    for scheme, extra in (("orthogonal", None), ("jl", 64), ("none", 0)):
        params: dict[str, Any] = {"encrypt": scheme, "jl_dim": 64}
        r = Runner(disue_cfg(params=params), tmp_path / scheme, quiet=True)
        s = r.run()
        w = sum(v.numel() for v in r.method.ctx.init_state.values())
        wf = sum(v.numel() for v in r.method.ctx.init_state.values() if v.is_floating_point())
        k, t, c = 5, 3, 10
        enc = wf if extra is None else extra
        assert s["bits"]["server->client"] == k * (t - 1) * w * 32
        assert s["bits"]["client->server"] == k * t * (w + c + enc) * 32


def test_disue_recovers_planted_groups(tmp_path: Path, make_cfg) -> None:
    """Four label-permutation groups: the bank's cosine clustering finds them exactly."""
    cfg = make_cfg(
        method="disue", dataset="mnist1d", partition="iid", groups="4:labelswap", clients=16, participation=1.0, rounds=3,
        params={**SMALL, "groups": 4}, local={"amount": 2, "lr": 0.15, "batch_size": 32, "momentum": 0.9}, seed=0,
    )  # fmt: skip
    s = Runner(cfg, tmp_path / "d", quiet=True).run()
    assert s["final_purity"] == 1.0 and s["final_ari"] == 1.0
    # the experts serve their groups: personalised accuracy beats the one universal model
    assert s["final_personalized_accuracy"] > s["final_accuracy"]


def test_disue_options_run_and_groups_keep_their_identity(tmp_path: Path, disue_cfg) -> None:
    r = Runner(disue_cfg(params={"gls": "balanced", "gwf": "uniform", "counts": "all", "student_init": "universal"}, rounds=4),
               tmp_path / "o", quiet=True)
    s = r.run()
    assert s["status"] == "completed"
    states, assign = r.method.personal_models()
    assert len(states) == 4 and assign.shape == (10,) and assign.max() <= 3
    recs = _records(tmp_path / "o")
    assert all(rec["teachers"] >= 1 and rec["distill_s"] > 0 for rec in recs[1:])


def test_disue_resume_equals_uninterrupted(disue_cfg, resume_check) -> None:
    resume_check(disue_cfg(rounds=4), cut_at=3)


def test_disue_batched_equals_sequential(tmp_path: Path, disue_cfg) -> None:
    seq = Runner(disue_cfg(engine="sequential", dataset="mnist1d"), tmp_path / "s", quiet=True)
    seq.run()
    vec = Runner(disue_cfg(engine="vectorised", dataset="mnist1d"), tmp_path / "v", quiet=True)
    vec.run()
    assert vec.comm.client_runs["batched"] > 0
    assert seq.method.group.tolist() == vec.method.group.tolist()
    for x, y in zip(_records(tmp_path / "s"), _records(tmp_path / "v")):
        assert x["bits"] == y["bits"] and x["accuracy"] == pytest.approx(y["accuracy"], abs=0.01)
    # float rounding of the batched matmuls compounds over rounds: compare what the clustering sees
    seen = seq.method.updates.present_rows()
    s_cos, v_cos = (cosine_matrix(r.method.updates.matrix()[seen].double()) for r in (seq, vec))
    torch.testing.assert_close(s_cos, v_cos, rtol=0, atol=0.02)
