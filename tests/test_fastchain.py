"""The vectorised engine's hand-batched kernels equal the modules they stand in for."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, grad_and_value, vmap

import fldistill.engine.vectorised as V
from fldistill.config import LocalConfig
from fldistill.engine import fastchain
from fldistill.engine.fastchain import ce_grad, plan_for, run_chain, split_plan
from fldistill.engine.training import make_objective
from fldistill.models import build_model
from fldistill.models.base import AddChannel


def _stack(module: nn.Module, C: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        n: v.detach().unsqueeze(0).repeat(C, *[1] * v.dim()) + 0.1 * torch.randn(C, *v.shape, generator=g)
        for n, v in module.named_parameters()
    }


def test_plans_cover_the_simple_models_and_refuse_the_rest() -> None:
    assert split_plan(build_model("mnist1d_cnn", (40,), 10)) is not None
    assert split_plan(build_model("mlp", (64,), 10)) is not None
    assert plan_for(nn.Sequential(nn.Conv1d(4, 4, 3, groups=2))) is None
    assert plan_for(nn.Sequential(nn.Conv1d(4, 4, 3, dilation=2))) is None
    assert plan_for(nn.Sequential(nn.Conv1d(4, 4, 3, padding=1, padding_mode="circular"))) is None
    assert plan_for(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))) is None
    assert plan_for(nn.Sequential(nn.Linear(4, 4), nn.Tanh())) is None
    assert plan_for(nn.Sequential(nn.Flatten(2))) is None


GEOMETRIES = list(itertools.product([1, 3, 5], [1, 2, 3], [0, 1, 2], [7, 12], [1, 3]))


@pytest.mark.parametrize("k, s, p, L, cin", GEOMETRIES)
def test_chain_values_and_gradients_equal_the_module_under_vmap(k: int, s: int, p: int, L: int, cin: int) -> None:
    """Every conv geometry (kernel, stride, padding, length, channels): outputs, parameter
    gradients and the input gradient agree with functional_call of the module."""
    if L + 2 * p < k:
        pytest.skip("kernel longer than the padded input")
    lo = (L + 2 * p - k) // s + 1
    second = nn.Conv1d(4, 3, 3, stride=s, padding=p) if lo + 2 * p >= 3 else nn.Identity()
    torch.manual_seed(k * 100 + s * 10 + p)
    seq = nn.Sequential(nn.Conv1d(cin, 4, k, stride=s, padding=p), nn.ReLU(), second, nn.ReLU(), nn.Flatten(), nn.LazyLinear(5))
    seq(torch.zeros(1, cin, L))  # materialise the lazy layer
    seq = nn.Sequential(*seq)  # LazyLinear has become Linear
    plan = plan_for(seq)
    assert plan is not None
    C, B = 3, 4
    P = _stack(seq, C, seed=k + s + p)
    x = torch.randn(C, B, cin, L)

    def ref(P: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(seq, P, (x,))

    def fast(P: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return run_chain(plan, x, P)

    torch.testing.assert_close(vmap(fast)(P, x), vmap(ref)(P, x), rtol=1e-5, atol=1e-5)
    gr = vmap(grad(lambda P, x: (ref(P, x) ** 2).sum(), argnums=(0, 1)))(P, x)
    gf = vmap(grad(lambda P, x: (fast(P, x) ** 2).sum(), argnums=(0, 1)))(P, x)
    for n in P:
        torch.testing.assert_close(gf[0][n], gr[0][n], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gf[1], gr[1], rtol=1e-4, atol=1e-5)


def test_chain_without_vmap_is_the_module_with_autograd() -> None:
    model = build_model("mnist1d_cnn", (40,), 10)
    plan = split_plan(model)
    assert plan is not None
    x = torch.randn(6, 40, requires_grad=True)
    feats = dict(model.features.named_parameters())
    h = run_chain(plan.features, x, feats)
    torch.testing.assert_close(h, model.features(x))
    h.square().sum().backward()
    g_fast = [p.grad.clone() for p in model.features.parameters()] + [x.grad.clone()]
    model.zero_grad()
    x.grad = None
    model.features(x).square().sum().backward()
    g_ref = [p.grad for p in model.features.parameters()] + [x.grad]
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_addchannel_accepts_both_signal_layouts() -> None:
    seq = nn.Sequential(AddChannel(), nn.Conv1d(1, 2, 3))
    plan = plan_for(seq)
    assert plan is not None
    P = _stack(seq, 2)
    x = torch.randn(2, 5, 9)
    want = vmap(lambda P, x: functional_call(seq, P, (x,)))(P, x)
    torch.testing.assert_close(vmap(lambda P, x: run_chain(plan, x, P))(P, x), want)
    torch.testing.assert_close(vmap(lambda P, x: run_chain(plan, x, P))(P, x.unsqueeze(2)), want)


@pytest.mark.parametrize("name, shape", [("mnist1d_cnn", (40,)), ("mlp", (64,)), ("mnist1d_mlp", (40,))])
def test_fused_ce_gradient_equals_autograd(name: str, shape: tuple[int, ...]) -> None:
    """The closed-form CE step (no autograd, no vmap) equals vmap(grad(cross_entropy))."""
    model = build_model(name, shape, 10)
    sp = split_plan(model)
    assert sp is not None
    C, B = 5, 7
    P = _stack(model, C)
    x, y = torch.randn(C, B, *shape), torch.randint(0, 10, (C, B))
    g_ref, l_ref = vmap(grad_and_value(lambda p, xb, yb: F.cross_entropy(functional_call(model, p, (xb,)), yb)))(P, x, y)
    g, loss = ce_grad(sp, P, x, y)
    torch.testing.assert_close(loss, l_ref, rtol=1e-5, atol=1e-6)
    for n in P:
        torch.testing.assert_close(g[n], g_ref[n], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("objective, args", [("ce", {}), ("fedprox", {"mu": 0.5})])
def test_train_many_fused_equals_autograd_kernels(objective: str, args: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole local runs (momentum, weight decay, uneven client sizes so that batch lengths
    differ): the fused kernels give the autograd reference's states and losses."""
    torch.manual_seed(0)
    model = build_model("mnist1d_cnn", (40,), 10)
    x, y = torch.randn(300, 40), torch.randint(0, 10, (300,))
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    local = LocalConfig(unit="epochs", amount=2, batch_size=16, lr=0.1, momentum=0.9, weight_decay=1e-3)
    sizes = [40, 23, 64, 7]

    def jobs() -> list[V.ClientJob]:
        out, a = [], 0
        for cid, n in enumerate(sizes):
            obj = make_objective(objective, args, start, model)
            out.append(V.ClientJob(cid, start, torch.arange(a, a + n), obj, torch.Generator().manual_seed(cid)))
            a += n
        return out

    calls = {"n": 0}
    real = fastchain.ce_grad

    def counting(*a, **k):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(V, "ce_grad", counting)
    fast = V.train_many(model, x, y, jobs(), local)
    assert calls["n"] > 0, "the fused path was not taken"
    n_fast = calls["n"]
    ref = V.train_many(model, x, y, jobs(), local, kernels="autograd")
    assert calls["n"] == n_fast, "the autograd reference must not use the fused kernels"
    for (s1, m1), (s2, m2) in zip(fast, ref):
        assert m1["steps"] == m2["steps"]
        assert m1["loss"] == pytest.approx(m2["loss"], rel=1e-4, abs=1e-6)
        for k in s1:
            torch.testing.assert_close(s1[k], s2[k], rtol=1e-4, atol=1e-5)
