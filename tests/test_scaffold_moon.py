"""SCAFFOLD and MOON: reductions to FedAvg, exact ledgers, resume."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from fldistill.runner import Runner


def _metrics(run_dir: Path) -> list[dict]:
    recs = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in recs:
        r.pop("wall_s")
    return recs


def _core(recs: list[dict]) -> list[tuple]:
    return [(r["round"], r["accuracy"], r["loss"], r["train_loss"] if r["round"] else None) for r in recs]


@pytest.fixture
def make_cfg(make_cfg):
    # These reductions to FedAvg are exact (==), so both sides must take the same float
    # path: SCAFFOLD's task has no batched twin, so pin the sequential engine here (engine
    # equivalence itself is tested, within tolerance, in test_vectorised.py).
    return lambda **over: make_cfg(**{"engine": "sequential", **over})


@pytest.fixture
def fedavg_run(tmp_path: Path, make_cfg):
    cfg = make_cfg(rounds=3, clients=10)
    s = Runner(cfg, tmp_path / "avg", quiet=True).run()
    return s, _metrics(tmp_path / "avg")


def _n_params(tmp_path: Path, cfg) -> int:
    m = Runner(cfg, tmp_path / "probe", quiet=True).build().ctx.model
    assert sum(p.numel() for p in m.parameters()) == sum(v.numel() for v in m.state_dict().values())
    return sum(p.numel() for p in m.parameters())


def test_scaffold_without_correction_is_fedavg(tmp_path: Path, make_cfg, fedavg_run) -> None:
    s_avg, m_avg = fedavg_run
    s = Runner(make_cfg(method="scaffold", params={"correction": False}), tmp_path / "s", quiet=True).run()
    assert _metrics(tmp_path / "s") == m_avg
    assert s["total_bits"] == s_avg["total_bits"] and s["bits"] == s_avg["bits"]


def test_scaffold_ledger_and_effect(tmp_path: Path, make_cfg, fedavg_run) -> None:
    s_avg, m_avg = fedavg_run
    cfg = make_cfg(method="scaffold")
    s = Runner(cfg, tmp_path / "s", quiet=True).run()
    w, n, t, b1 = _n_params(tmp_path, cfg), 10, 3, 32
    # down: model (free in round 1) + c every round; up: model + delta c_i every round
    assert s["bits"]["server->client"] == n * ((t - 1) + t) * w * b1
    assert s["bits"]["client->server"] == n * (t + t) * w * b1
    assert s["total_bits"] == 2 * s_avg["total_bits"] + n * w * b1
    m = _metrics(tmp_path / "s")
    # round 1 has c = c_i = 0: the correction term is there but exactly zero
    assert _core(m)[:2] == _core(m_avg)[:2]
    # afterwards the control variates act
    assert m[-1]["loss"] != m_avg[-1]["loss"] and m[-1]["c_norm"] > 0


def test_scaffold_plain_steps_option_runs(tmp_path: Path, make_cfg, fedavg_run) -> None:
    _, m_avg = fedavg_run
    Runner(make_cfg(method="scaffold", params={"steps": "plain"}), tmp_path / "p", quiet=True).run()
    Runner(make_cfg(method="scaffold"), tmp_path / "m", quiet=True).run()
    assert _metrics(tmp_path / "p")[-1]["loss"] != _metrics(tmp_path / "m")[-1]["loss"]


def test_scaffold_option2_exact_with_plain_sgd(make_cfg) -> None:
    """With momentum 0, c_i+ = mean of the uncorrected gradients along the path: check on a linear model."""
    import torch

    from fldistill.methods.scaffold import effective_steps

    assert effective_steps(7, 0.0) == 7
    assert effective_steps(1, 0.9) == pytest.approx(1.0)
    assert effective_steps(3, 0.5) == pytest.approx(1 + 1.5 + 1.75)
    # with a constant direction d, K momentum steps move lr * effective_steps * d
    p = torch.zeros(3, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    d = torch.tensor([1.0, -2.0, 0.5])
    for _ in range(6):
        opt.zero_grad()
        (p * d).sum().backward()
        opt.step()
    assert torch.allclose(-p.detach(), 0.1 * effective_steps(6, 0.9) * d, atol=1e-6)


def test_moon_mu0_is_fedavg_and_ledger(tmp_path: Path, make_cfg, fedavg_run) -> None:
    s_avg, m_avg = fedavg_run
    s0 = Runner(make_cfg(method="moon", params={"mu": 0.0}), tmp_path / "m0", quiet=True).run()
    assert _metrics(tmp_path / "m0") == m_avg
    s = Runner(make_cfg(method="moon"), tmp_path / "m5", quiet=True).run()
    m = _metrics(tmp_path / "m5")
    assert m[-1]["loss"] != m_avg[-1]["loss"] and m[1]["train_loss"] != m_avg[1]["train_loss"]
    for r in (s0, s):
        assert r["total_bits"] == s_avg["total_bits"] and r["bits"] == s_avg["bits"]


def test_moon_contrastive_loss_values() -> None:
    """l_con is log 2 when global and previous models agree, and falls as z nears z_glob."""
    import math

    import torch

    from fldistill.engine.training import ModuleNet, get_state, make_objective
    from fldistill.models import build_model

    torch.manual_seed(0)
    model = build_model("digits_cnn", (64,), 10)
    x, y = torch.randn(16, 64), torch.randint(0, 10, (16,))
    st = get_state(model)
    with torch.no_grad():
        ce = float(torch.nn.functional.cross_entropy(model(x), y))
    obj = make_objective("moon", {"mu": 1.0, "temperature": 0.5}, st, model, {})
    assert float(obj.loss(ModuleNet(model), x, y, obj.inputs).detach()) == pytest.approx(ce + math.log(2), rel=1e-5)
    prev = {f"prev.{k}": torch.randn_like(v) for k, v in st.items() if k.startswith("features.")}
    obj = make_objective("moon", {"mu": 1.0, "temperature": 0.5}, st, model, prev)
    assert float(obj.loss(ModuleNet(model), x, y, obj.inputs).detach()) < ce + math.log(2)


@pytest.mark.parametrize("method", ["scaffold", "moon"])
def test_resume_equals_uninterrupted(make_cfg, resume_check, method: str) -> None:
    resume_check(make_cfg(method=method, rounds=4, participation=0.5), cut_at=3)


def test_scaffold_option1_variate_is_the_local_gradient_at_the_global_model(tmp_path: Path, make_cfg) -> None:
    """Option I: after round 1 every c_i is the full-data CE gradient of client i at the initial model, and c their mean."""
    import torch
    import torch.nn.functional as F

    r = Runner(make_cfg(method="scaffold", rounds=1, params={"variate": "I"}), tmp_path / "o1", quiet=True)
    r.run()
    m = r.method
    model = copy.deepcopy(m.ctx.model)
    model.load_state_dict(m.ctx.init_state)
    model.eval()
    grads = []
    for cid in range(m.fed.n_clients):
        x, y = m.fed.client_data(cid, "train")
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        g = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
        grads.append(g)
        ci = m.client_c(cid)
        for k in g:
            assert torch.allclose(ci[k], g[k], atol=1e-5), (cid, k)
    for k in grads[0]:
        assert torch.allclose(m.c[k], torch.stack([g[k] for g in grads]).mean(0), atol=1e-5)
    # and it is a different algorithm from option II on the same run
    Runner(make_cfg(method="scaffold", rounds=2, params={"variate": "I"}), tmp_path / "a", quiet=True).run()
    Runner(make_cfg(method="scaffold", rounds=2), tmp_path / "b", quiet=True).run()
    assert _metrics(tmp_path / "a")[-1]["loss"] != _metrics(tmp_path / "b")[-1]["loss"]
