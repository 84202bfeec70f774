"""KDIA: the teacher weights of methods.md §1.3, reductions to FedAvg, ledger, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fldistill.methods.kdia import kl_term, teacher_weights
from fldistill.models import build_model
from fldistill.models.generator import FeatureGenerator
from fldistill.runner import Runner


def _metrics(run_dir: Path) -> list[dict]:
    recs = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in recs:
        r.pop("wall_s")
    return recs


def test_teacher_weights_worked_example() -> None:
    """The three-round table of methods.md §1.3 (N=4, n=[100..400], 2 clients per round)."""
    n = np.array([100, 200, 300, 400])
    cnt, last = np.zeros(4, dtype=int), np.full(4, -1)
    rounds = [[0, 1], [1, 2], [2, 3]]
    expected = [[0.4425, 0.5575, 0, 0], [0.1913, 0.4237, 0.3850, 0], [0.1016, 0.2250, 0.3594, 0.3140]]
    students = [{0: 0.333, 1: 0.667}, {1: 0.4, 2: 0.6}, {2: 0.429, 3: 0.571}]
    for t, (s_t, want, stud) in enumerate(zip(rounds, expected, students)):
        cnt[s_t] += 1
        last[s_t] = t
        w = teacher_weights(n, cnt, last, t)
        np.testing.assert_allclose(w, want, atol=6e-5)
        assert w.sum() == pytest.approx(1.0)
        p = n[s_t] / n[s_t].sum()
        np.testing.assert_allclose(p, [stud[k] for k in s_t], atol=5e-4)


def test_kl_directions_match_the_code_and_the_figure() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    tau = 2.0
    # The code: kl_div(log_softmax(t/τ), softmax(s/τ), batchmean) = KL(student ‖ teacher).
    code = F.kl_div(F.log_softmax(t / tau, 1), F.softmax(s / tau, 1), reduction="batchmean")
    fig = F.kl_div(F.log_softmax(s / tau, 1), F.softmax(t / tau, 1), reduction="batchmean")
    assert kl_term(s, t, tau, "reverse").item() == pytest.approx(code.item(), rel=1e-5)
    assert kl_term(s, t, tau, "forward").item() == pytest.approx(fig.item(), rel=1e-5)
    assert abs(code.item() - fig.item()) > 1e-3


def test_generator_parameter_counts_and_shapes() -> None:
    """The code's generator: 890,724 parameters for 10 classes, 1,084,944 for 100."""
    for c, want in ((10, 890_724), (100, 1_084_944)):
        model = build_model("kdia_cnn", (3, 32, 32), c)
        g = FeatureGenerator(model.feature_shape, c)
        assert sum(p.numel() for p in g.parameters()) == want
        out = g.eval()(torch.randn(4, 100), torch.arange(4))
        assert out.shape == (4, 16, 5, 5) and (out >= 0).all()
        assert model.classifier(out).shape == (4, c)
    flat = FeatureGenerator((125,), 10)
    assert flat(torch.randn(3, 100), torch.arange(3)).shape == (3, 125)


@pytest.fixture
def kdia_cfg(make_cfg):
    def cfg(**over):
        base = {
            "method": "kdia",
            "partition": "dirichlet:0.5",
            "clients": 10,
            "participation": 0.4,
            "rounds": 3,
            "params": {"gen_epochs": 2, "gen_iters": 5, "gen_batch": 16, "noise_dim": 8, "gen_hidden": 16},
            "local": {"weight_decay": 0.0},  # as the FedAvg runs compared against
        }
        base.update(over)
        return make_cfg(**base)

    return cfg


def test_kdia_without_kd_and_generator_student_is_fedavg(tmp_path: Path, kdia_cfg, make_cfg) -> None:
    """λ_kd = λ_gen = 0: the student is FedAvg under the same client sampling (terms computed, weighted 0)."""
    k = kdia_cfg(params={"lambda_kd": 0.0, "lambda_gen": 0.0, "gen_epochs": 1, "gen_iters": 3, "gen_batch": 8, "noise_dim": 8, "gen_hidden": 16})
    Runner(k, tmp_path / "k", quiet=True).run()
    a = make_cfg(partition="dirichlet:0.5", clients=10, participation=0.4, rounds=3)
    Runner(a, tmp_path / "a", quiet=True).run()
    mk, ma = _metrics(tmp_path / "k"), _metrics(tmp_path / "a")
    assert [(r["student_accuracy"], r["student_loss"]) for r in mk] == [(r["accuracy"], r["loss"]) for r in ma]
    assert [r.get("train_loss") for r in mk] == [r.get("train_loss") for r in ma]
    # ... and the teacher, an average over every client seen so far, is a different model
    assert mk[-1]["teacher_loss"] != mk[-1]["student_loss"]
    # with the terms on, the student moves away from FedAvg
    Runner(kdia_cfg(), tmp_path / "on", quiet=True).run()
    assert _metrics(tmp_path / "on")[-1]["student_loss"] != ma[-1]["loss"]


def test_kdia_ledger_downlink_carries_model_teacher_generator(tmp_path: Path, kdia_cfg) -> None:
    cfg = kdia_cfg()
    s = Runner(cfg, tmp_path / "k", quiet=True).run()
    method = Runner(cfg, tmp_path / "probe", quiet=True).build()
    w = sum(v.numel() for v in method.ctx.model.state_dict().values())
    g = sum(v.numel() for v in method.generator.state_dict().values())
    k, t, b1 = 4, 3, 32  # 40% of 10 clients, 3 rounds
    # round 1: student, teacher and generator are all the seeded initial ones (free)
    assert s["bits"]["server->client"] == k * (t - 1) * (2 * w + g) * b1
    assert s["bits"]["client->server"] == k * t * w * b1
    assert s["bank_bytes"] == 10 * w * 4
    m = _metrics(tmp_path / "k")
    seen = set()
    for t in (1, 2, 3):  # the teacher averages every client seen so far, no other
        seen |= set(method.sample_clients(t))
        assert m[t]["teacher_clients"] == len(seen)
    for rec in m[1:]:
        assert math.isfinite(rec["gen_ce"]) and rec["gen_d"] > 0


def test_kdia_generator_learns_the_heads(tmp_path: Path, kdia_cfg) -> None:
    """More generator training: the participants' heads classify generated features better."""
    gen = {"gen_iters": 25, "gen_batch": 32, "noise_dim": 8, "gen_hidden": 32}
    ce = {}
    for epochs in (1, 6):
        Runner(kdia_cfg(rounds=2, params={**gen, "gen_epochs": epochs}), tmp_path / str(epochs), quiet=True).run()
        ce[epochs] = _metrics(tmp_path / str(epochs))[-1]["gen_ce"]
    assert ce[6] < ce[1] and ce[6] < 0.75 * math.log(10)


def test_kdia_resume_equals_uninterrupted(kdia_cfg, resume_check) -> None:
    resume_check(kdia_cfg(rounds=4), cut_at=3)


def test_kdia_lost_client_gains_no_teacher_weight(tmp_path: Path, kdia_cfg, monkeypatch) -> None:
    """A client whose reply never comes keeps weight 0 and its counts; the round completes."""
    from fldistill.engine.comm import InProcessComm

    method = Runner(kdia_cfg(), tmp_path / "k", quiet=True).build()
    lost = method.sample_clients(1)[0]
    orig = InProcessComm.call

    def drop(self, task_name, requests, **kw):
        out = orig(self, task_name, requests, **kw)
        out.pop(lost, None)
        return out

    monkeypatch.setattr(InProcessComm, "call", drop)
    extra = method.round(1)
    assert extra["participants"] == len(method.sample_clients(1)) - 1
    assert method.cnt[lost] == 0 and method.last[lost] == -1
    w = teacher_weights(method.sizes, method.cnt, method.last, 0)
    assert w[lost] == 0 and extra["teacher_clients"] == len(method.sample_clients(1)) - 1
