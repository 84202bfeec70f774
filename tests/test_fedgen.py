"""FedGen: reduction to FedAvg, the client loss, the ledger, generator learning, resume, engines."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fldistill.engine.training import ModuleNet, make_objective
from fldistill.methods.fedgen import regulariser_weight
from fldistill.models import build_model
from fldistill.models.generator import LatentGenerator
from fldistill.runner import Runner

SMALL = {"gen_steps": 10, "gen_batch": 16, "noise_dim": 8, "gen_hidden": 16}


def _metrics(run_dir: Path) -> list[dict]:
    recs = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in recs:
        r.pop("wall_s")
    return recs


@pytest.fixture
def fedgen_cfg(make_cfg):
    def cfg(**over):
        base = {
            "method": "fedgen",
            "partition": "dirichlet:0.5",
            "clients": 10,
            "participation": 0.4,
            "rounds": 3,
            "params": dict(SMALL),
            "local": {"unit": "epochs"},  # as the FedAvg runs compared against (FedGen's default: steps)
        }
        base.update(over)
        return make_cfg(**base)

    return cfg


def test_generator_parameter_count_matches_the_spec() -> None:
    """methods.md: the cifar config (hidden 512, latent 32, noise 64) has 55,840 parameters."""
    g = LatentGenerator((32,), 10, noise_dim=64, hidden=512)
    assert sum(p.numel() for p in g.parameters()) == 55_840


def test_regulariser_schedule() -> None:
    """Off in round 1 (the code's ``regularization = glob_iter > 0``), then init * 0.98^(t-1), floored."""
    assert regulariser_weight(10.0, 0.98, 1) == 0.0
    assert regulariser_weight(10.0, 0.98, 2) == pytest.approx(9.8)
    assert regulariser_weight(10.0, 0.98, 3) == pytest.approx(10 * 0.98**2)
    assert regulariser_weight(10.0, 0.98, 2000) == 1e-4  # the code's floor
    assert regulariser_weight(0.0, 0.98, 5) == 0.0  # init 0 is off


def test_local_defaults_are_the_codes() -> None:
    """Unset local fields take FedGen's mnist code settings: 20 SGD steps of 32 at lr 0.01, no momentum."""
    from fldistill.config import parse_config
    from fldistill.runner import resolve_defaults

    local = resolve_defaults(parse_config({"method": "fedgen"})).local
    assert (local.unit, local.amount, local.lr, local.momentum, local.batch_size) == ("steps", 20, 0.01, 0.0, 32)


def test_client_loss_is_fedgens_formula() -> None:
    """The objective's loss on one batch equals FedGen's client loss written out directly,
    with the KL term on generated latents of the real batch's labels."""
    torch.manual_seed(0)
    model = build_model("digits_cnn", (1, 8, 8), 10)
    gen = LatentGenerator(model.feature_shape, 10, noise_dim=8, hidden=16)
    with torch.no_grad():  # non-trivial BN running statistics
        gen.train()
        gen(torch.rand(64, 8), torch.randint(0, 10, (64,)))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    tensors = {"gen." + k: v for k, v in gen.state_dict().items()}
    args = {"alpha_g": 3.0, "beta_g": 2.0, "gen_ratio": 0.5, "gen_batch": 6, "noise_dim": 8, "gen_hidden": 16}
    obj = make_objective("fedgen", args, state, model, tensors, torch.Generator().manual_seed(7))
    x, y = torch.randn(12, 1, 8, 8), torch.randint(0, 10, (12,))
    inp = obj.step_inputs(len(y))
    got = obj.loss(ModuleNet(model), x, y, inp)
    # the same draws, in the objective's order: y_hat, eps_hat, eps
    g = torch.Generator().manual_seed(7)
    y_hat = torch.randint(0, 10, (6,), generator=g)
    eps_hat, eps = torch.rand(6, 8, generator=g), torch.rand(12, 8, generator=g)
    gen.eval()
    with torch.no_grad():
        h_hat, h_same = gen(eps_hat, y_hat), gen(eps, y)
    assert torch.equal(inp["gen_y"], y_hat)
    s = model(x)
    want = (
        F.cross_entropy(s, y)
        + 0.5 * 3.0 * F.cross_entropy(model.classifier(h_hat), y_hat)
        + 2.0 * F.kl_div(F.log_softmax(s, 1), F.softmax(model.classifier(h_same), 1), reduction="batchmean")
    )
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_fedgen_without_regulariser_is_fedavg(tmp_path: Path, fedgen_cfg, make_cfg) -> None:
    """alpha_g = beta_g = 0: FedAvg's numbers under the same sampling (terms computed, weighted 0)."""
    Runner(fedgen_cfg(params={**SMALL, "alpha_g": 0.0, "beta_g": 0.0}), tmp_path / "g", quiet=True).run()
    Runner(make_cfg(partition="dirichlet:0.5", clients=10, participation=0.4, rounds=3), tmp_path / "a", quiet=True).run()
    mg, ma = _metrics(tmp_path / "g"), _metrics(tmp_path / "a")
    assert [(r["accuracy"], r["loss"]) for r in mg] == [(r["accuracy"], r["loss"]) for r in ma]
    assert [r.get("train_loss") for r in mg] == [r.get("train_loss") for r in ma]
    assert all(r["alpha_g"] == 0.0 and r["beta_g"] == 0.0 for r in mg[1:])
    # with the regulariser on, round 1 is still FedAvg (untrained generator, weight 0), later rounds are not
    Runner(fedgen_cfg(), tmp_path / "on", quiet=True).run()
    mo = _metrics(tmp_path / "on")
    assert (mo[1]["loss"], mo[1]["train_loss"]) == (ma[1]["loss"], ma[1]["train_loss"])
    assert mo[-1]["loss"] != ma[-1]["loss"] and mo[2]["train_loss"] != ma[2]["train_loss"]
    assert [r["alpha_g"] for r in mo[1:]] == pytest.approx([0.0, 9.8, 10 * 0.98**2])
    assert [r["beta_g"] for r in mo[1:]] == pytest.approx([0.0, 9.8, 10 * 0.98**2])


def test_fedgen_ledger_closed_form(tmp_path: Path, fedgen_cfg) -> None:
    """Down: model + generator from round 2 (round 1: both seeded initial ones, free); up: model + C counts."""
    cfg = fedgen_cfg()
    assert cfg.ledger.init_model_free and cfg.ledger.b1 == 32
    s = Runner(cfg, tmp_path / "g", quiet=True).run()
    method = Runner(cfg, tmp_path / "probe", quiet=True).build()
    w = sum(v.numel() for v in method.ctx.model.state_dict().values())
    g = sum(v.numel() for v in method.generator.state_dict().values())
    k, t, b1, c = 4, 3, 32, 10  # 40% of 10 clients, 3 rounds, 10 classes
    assert s["bits"]["server->client"] == k * (t - 1) * (w + g) * b1
    assert s["bits"]["client->server"] == k * t * (w + c) * b1
    # without the free seed, round 1 is priced too
    s2 = Runner(fedgen_cfg(ledger={"init_model_free": False}), tmp_path / "paid", quiet=True).run()
    assert s2["bits"]["server->client"] == k * t * (w + g) * b1


def test_fedgen_generator_learns_the_heads(tmp_path: Path, fedgen_cfg) -> None:
    """More generator steps: the participants' heads classify generated latents better."""
    gen = {"gen_batch": 32, "noise_dim": 8, "gen_hidden": 32, "gen_lr": 3e-3}
    fid = {}
    for steps in (5, 150):
        Runner(fedgen_cfg(rounds=2, params={**gen, "gen_steps": steps}), tmp_path / str(steps), quiet=True).run()
        m = _metrics(tmp_path / str(steps))
        fid[steps] = m[-1]["gen_fidelity"]
        assert all(math.isfinite(r["gen_div"]) and 0 < r["gen_div"] <= 1 for r in m[1:])
    assert fid[150] < fid[5] and fid[150] < 0.5 * math.log(10)


def test_fedgen_resume_equals_uninterrupted(fedgen_cfg, resume_check) -> None:
    resume_check(fedgen_cfg(rounds=4), cut_at=3)


def test_fedgen_vectorised_equals_sequential(tmp_path: Path, fedgen_cfg) -> None:
    recs, runs = {}, {}
    for eng in ("sequential", "vectorised"):
        # FedGen's own kind of local work (steps, no momentum), shortened
        local = {"unit": "steps", "amount": 6, "batch_size": 16, "momentum": 0.0}
        r = Runner(fedgen_cfg(engine=eng, local=local), tmp_path / eng, quiet=True)
        r.run()
        recs[eng], runs[eng] = _metrics(tmp_path / eng), r.comm.client_runs
    assert runs["sequential"]["batched"] == 0 and runs["vectorised"]["sequential"] == 0
    seq, vec = recs["sequential"], recs["vectorised"]
    for a, b in zip(seq, vec):
        assert b["bits"] == a["bits"]
        for key in ("loss", "train_loss", "gen_fidelity", "gen_div"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-5), (a["round"], key)
