"""DynaFed: FedAvg before round L, FedAvg's communication, synthesis, resume, and DSA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fldistill.augment import DSA, IMAGE_GROUPS, SIGNAL_GROUPS, augment
from fldistill.errors import ConfigError
from fldistill.runner import Runner

# A synthesis that takes a fraction of a second on digits.
FAST = {"iterations": 5, "syn_steps": 2, "ipc": 2, "finetune_epochs": 2}


def _metrics(run_dir: Path) -> list[dict]:
    recs = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in recs:
        r.pop("wall_s")
        r.pop("synthesis_s", None)  # a duration, like wall_s
    return recs


def _common(a: list[dict], b: list[dict]) -> tuple[list[dict], list[dict]]:
    """``b`` restricted to the keys of ``a`` (DynaFed logs extra metrics)."""
    return a, [{k: r[k] for k in ra if k in r} for ra, r in zip(a, b)]


# -- 1. before round L DynaFed is FedAvg --------------------------------------------------


def test_before_L_weighted_equals_fedavg(tmp_path: Path, make_cfg) -> None:
    Runner(make_cfg(rounds=3), tmp_path / "avg", quiet=True).run()
    Runner(make_cfg(method="dynafed", rounds=3, params={"L": 10, "unweighted": False}), tmp_path / "dyn", quiet=True).run()
    a, d = _metrics(tmp_path / "avg"), _metrics(tmp_path / "dyn")
    assert len(a) == len(d) == 4
    assert [r.get("synthesised", 0) for r in d] == [0, 0, 0, 0]
    assert a == _common(a, d)[1]


def test_before_L_unweighted_differs_only_by_weights(tmp_path: Path, make_cfg, monkeypatch) -> None:
    from fldistill.engine.training import weighted_average
    from fldistill.methods.fedavg import FedAvg

    Runner(make_cfg(rounds=3), tmp_path / "avg", quiet=True).run()
    Runner(make_cfg(method="dynafed", rounds=3, params={"L": 10}), tmp_path / "dyn", quiet=True).run()
    a, d = _metrics(tmp_path / "avg"), _metrics(tmp_path / "dyn")
    assert a[1:] != _common(a, d)[1][1:]  # classes:2 clients have unequal sizes

    def equal_weights(replies, prefix="model"):
        ids = sorted(replies)
        return weighted_average([replies[c].get_state(prefix) for c in ids], [1.0] * len(ids))

    monkeypatch.setattr(FedAvg, "average", staticmethod(equal_weights))
    Runner(make_cfg(rounds=3), tmp_path / "avg_eq", quiet=True).run()
    e = _metrics(tmp_path / "avg_eq")
    assert e == _common(e, d)[1]


def test_average_weights_controlled(tmp_path: Path, make_cfg) -> None:
    from fldistill.ledger import Kind, Payload

    replies = {
        0: Payload(meta={"n": 1.0}).put_state("model", {"w": torch.tensor([0.0])}, Kind.PARAM),
        1: Payload(meta={"n": 3.0}).put_state("model", {"w": torch.tensor([4.0])}, Kind.PARAM),
    }
    m_eq = Runner(make_cfg(method="dynafed", params={"L": 10}), tmp_path / "a", quiet=True).build()
    m_w = Runner(make_cfg(method="dynafed", params={"L": 10, "unweighted": False}), tmp_path / "b", quiet=True).build()
    assert m_eq.average(replies)["w"].item() == pytest.approx(2.0)
    assert m_w.average(replies)["w"].item() == pytest.approx(3.0)
    # equal client sizes: both readings agree
    for r in replies.values():
        r.meta["n"] = 5.0
    assert torch.equal(m_eq.average(replies)["w"], m_w.average(replies)["w"])


# -- 2. communication is FedAvg's ---------------------------------------------------------


def test_communication_equals_fedavg(tmp_path: Path, make_cfg) -> None:
    common = {"rounds": 4, "participation": 0.5}
    sa = Runner(make_cfg(**common), tmp_path / "avg", quiet=True).run()
    sd = Runner(
        make_cfg(method="dynafed", **common, params={"L": 2, "expert_epochs": 1, **FAST}), tmp_path / "dyn", quiet=True
    ).run()
    assert sd["synthesised"] is True
    for key in ("total_bits", "bits", "bits_by_phase"):
        assert sa[key] == sd[key]
    a, d = _metrics(tmp_path / "avg"), _metrics(tmp_path / "dyn")
    assert [(r["bits"], r["bits_total"]) for r in a] == [(r["bits"], r["bits_total"]) for r in d]
    assert [r.get("synthesised") for r in d[1:]] == [0, 1, 1, 1]
    syn = d[2]
    assert syn["synthesis_iterations"] == 5 and 0 < syn["synthesis_loss"] < 10
    assert "synthesis_loss" not in d[3] and all(r["finetune_loss"] > 0 for r in d[2:])


# -- 3. the synthetic set, the fine-tune, determinism ---------------------------------------


def _synthesised(tmp_path: Path, make_cfg, name: str, seed: int = 1):
    cfg = make_cfg(method="dynafed", seed=seed, params={"L": 3, "expert_epochs": 2, **FAST})
    m = Runner(cfg, tmp_path / name, quiet=True).build()
    for t in (1, 2):
        out = m.round(t)
        assert out["synthesised"] == 0 and len(m.traj) == t + 1
    out = m.round(3)
    assert out["synthesised"] == 1 and m.synthesised and len(m.traj) == 0
    return m, out


def test_synthetic_set_shapes_finetune_and_determinism(tmp_path: Path, make_cfg) -> None:
    m, out = _synthesised(tmp_path, make_cfg, "a")
    n = 10 * FAST["ipc"]
    assert m.syn_x.shape == (n, 1, 8, 8) and m.syn_y.shape == (n, 10) and m.syn_lr.shape == ()
    assert torch.isfinite(m.syn_x).all() and torch.isfinite(m.syn_y).all() and float(m.syn_lr) > 0
    assert not torch.equal(m.syn_y, torch.zeros_like(m.syn_y))  # the labels were learnt
    assert out["syn_lr"] == pytest.approx(float(m.syn_lr)) and out["finetune_loss"] > 0
    # the fine-tune moves the global model
    before = {k: v.clone() for k, v in m.global_state.items()}
    loss = m.finetune(99)
    assert loss > 0 and any(not torch.equal(before[k], m.global_state[k]) for k in before)
    # same seed -> same synthetic set; other seed -> another one
    m2, _ = _synthesised(tmp_path, make_cfg, "b")
    assert torch.equal(m.syn_x, m2.syn_x) and torch.equal(m.syn_y, m2.syn_y) and torch.equal(m.syn_lr, m2.syn_lr)
    m3, _ = _synthesised(tmp_path, make_cfg, "c", seed=2)
    assert not torch.equal(m.syn_x, m3.syn_x)


def test_params_preset_and_validation(make_cfg, tmp_path: Path) -> None:
    from fldistill.methods.dynafed import DynaFedParams

    p = DynaFedParams()
    assert (p.preset, p.iterations, p.syn_steps) == ("cpu", 300, 10)
    assert (p.L, p.ipc, p.expert_epochs, p.lr_img, p.finetune_epochs) == (25, 15, 3, 0.05, 20)
    p = DynaFedParams(preset="paper")
    assert (p.iterations, p.syn_steps) == (3000, 20)
    p = DynaFedParams(preset="paper", syn_steps=7)
    assert (p.iterations, p.syn_steps) == (3000, 7)
    with pytest.raises(ConfigError, match="expert_epochs"):
        Runner(make_cfg(method="dynafed", params={"L": 3}), tmp_path / "x", quiet=True)
    with pytest.raises(ConfigError, match="no parameter"):
        Runner(make_cfg(method="dynafed", params={"bogus": 1}), tmp_path / "y", quiet=True)


# -- 4. resume across the synthesis round -----------------------------------------------


@pytest.mark.parametrize("cut", [3, 4])
def test_resume_equals_uninterrupted(make_cfg, resume_check, cut: int) -> None:
    cfg = make_cfg(method="dynafed", rounds=5, participation=0.5, params={"L": 3, "expert_epochs": 2, **FAST})
    full, _ = resume_check(cfg, cut_at=cut)
    assert full[3]["synthesised"] == 1


# -- 5. DSA -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(6, 1, 8, 8), (6, 3, 32, 32), (6, 40), (6, 1, 40)])
def test_dsa_siamese_shapes_and_gradients(shape: tuple[int, ...]) -> None:
    groups = IMAGE_GROUPS if len(shape) == 4 else SIGNAL_GROUPS
    a, b = torch.randn(shape), torch.randn(shape)

    def g(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    for strategy in [*groups, "_".join(groups)]:
        for mode in ("single", "multiple"):
            dsa = DSA(shape[1:], strategy, mode)
            x = a.clone().requires_grad_(True)
            y = dsa(x, g(7))
            assert y.shape == x.shape
            y.pow(2).sum().backward()
            assert x.grad is not None and x.grad.abs().sum() > 0, strategy
            # Siamese: the same seed applies the same transform to two different tensors.
            # Every transform is affine in x for fixed random parameters, so
            # T(a) + T(b) - T(0) == T(a + b) holds exactly when the parameters are shared.
            assert torch.equal(dsa(a, g(3)), dsa(a, g(3)))
            lhs = dsa(a, g(3)) + dsa(b, g(3)) - dsa(torch.zeros(shape), g(3))
            assert torch.allclose(lhs, dsa(a + b, g(3)), atol=1e-4), (strategy, mode)
    full = DSA(shape[1:], "_".join(groups), "multiple")
    lhs = full(a, g(3)) + full(b, g(3)) - full(torch.zeros(shape), g(3))
    assert not torch.allclose(lhs, full(a + b, g(4)), atol=1e-4)  # other seed, other transform


def test_dsa_seeds_none_and_errors() -> None:
    x = torch.randn(8, 3, 32, 32)
    assert torch.equal(augment(x, 5), augment(x, 5))
    assert not torch.equal(augment(x, 5, mode="multiple"), augment(x, 6, mode="multiple"))
    assert torch.equal(augment(x, 5, "none"), x)
    assert DSA((40,)).strategy == "scale_shift_noise_stretch" and DSA((1, 8, 8)).kind == "image"
    with pytest.raises(ConfigError, match="valid"):
        DSA((40,), "rotate")
    with pytest.raises(ConfigError):
        DSA((2, 3, 4, 5))
