"""SCAFFOLD (Karimireddy et al. 2020): FedAvg with control variates, option II.

The server keeps the global control variate ``c`` and, on behalf of every client, that
client's own control variate ``c_i`` (a real client holds it; here it is sent back as
:attr:`~fldistill.ledger.Kind.STATE`, which is free), both in state banks
(:meth:`~fldistill.methods.base.Method.new_bank`, checkpointed with the method). Memory:
N x |params| float32, allocated when the first client's variate is written
(mnist1d_cnn: 5,210 parameters, so 1,000 clients hold 20.8 MB).

Per round, each sampled client receives the model x (PARAM; the seeded first model is
free), ``c`` (FLOAT, priced every round) and its ``c_i`` (STATE, free); it trains on
``CE + sum_k <c - c_i, w_k - x_k>`` (objective ``"scaffold"``, whose gradient adds the
correction ``c - c_i`` to every step's gradient), then computes option II client-side,

    c_i+ = c_i - c + (x - y_i) / (K_eff * lr),

and uploads y_i (PARAM) and Delta c_i = c_i+ - c_i (FLOAT). The server sets
x <- x + eta_g * (sample-weighted mean of y_i - x) (``params.global_lr``; 1 is FedAvg's
average) and c <- c + |S|/N * mean_i Delta c_i. ``params.variate = "I"`` is the paper's
option I instead: c_i+ = the local gradient at x, from one more pass over the data.

Momentum and weight decay: the correction lives in the loss, so it goes through the
optimiser like the gradient. Weight decay is simply part of the corrected gradient. With
momentum beta, K steps move the model by about ``lr * K_eff * d`` for a constant
direction d, with ``K_eff = sum_{k=1..K} (1 - beta^k) / (1 - beta)`` (not K); the
paper's plain-SGD formula (``K_eff = K``) then overestimates the mean gradient by up
to 1/(1-beta), and since c_i+ also carries ``(c - c_i) * (K_eff/K - 1)`` the client
variates oscillate and grow when ``K_eff/K > 2``. ``params.steps = "momentum"``
(default) uses K_eff, which equals K when momentum is 0; ``"plain"`` forces K.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from fldistill.engine.comm import ClientContext, local_config_from, task, train_task
from fldistill.engine.training import ModelState, Net, Objective, objective
from fldistill.ledger import Kind, Payload
from fldistill.methods import register
from fldistill.methods.base import RunContext
from fldistill.methods.fedavg import FedAvg
from fldistill.methods.params import ScaffoldParams


def effective_steps(k: int, momentum: float) -> float:
    """How many lr-sized steps K SGD(momentum) steps move along a constant direction."""
    b = float(momentum)
    if b == 0.0:
        return float(k)
    return sum((1.0 - b**j) / (1.0 - b) for j in range(1, int(k) + 1))


@objective("scaffold")
def _scaffold(
    args: dict[str, Any], ref: ModelState, model: torch.nn.Module, tensors: dict[str, torch.Tensor], gen: torch.Generator
) -> Objective:
    """Cross-entropy plus ``sum_k <c - c_i, w_k - x_k>``: each step's gradient gains ``c - c_i``."""
    names = [k for k, _ in model.named_parameters()]
    inputs = {f"diff.{k}": (tensors[f"c.{k}"] - tensors[f"ci.{k}"]).detach() for k in names}
    inputs.update({f"anchor.{k}": ref[k].detach() for k in names})

    def loss(net: Net, x: torch.Tensor, y: torch.Tensor, inp: dict[str, torch.Tensor]) -> torch.Tensor:
        # <c - c_i, w - x>: the same gradient as <c - c_i, w>, but 0 at the start, so the
        # reported training loss stays near the cross-entropy instead of drifting
        corr = sum((inp[f"diff.{k}"] * (p - inp[f"anchor.{k}"])).sum() for k, p in net.params().items())
        return F.cross_entropy(net.logits(x), y) + corr

    return Objective("scaffold", loss, inputs=inputs)


@task("scaffold_train")
def scaffold_train_task(ctx: ClientContext, req: Payload) -> Payload:
    """The ``train`` task, then option II on the client: also uploads ``dc`` = Delta c_i.

    Request: as ``train`` plus ``c.*`` (global variate) and ``ci.*`` (own variate);
    metadata ``steps`` (``"momentum"`` or ``"plain"``) and ``variate`` (``"II"`` or ``"I"``). Reply: as ``train`` plus
    ``dc.*`` (FLOAT), one tensor per parameter.
    """
    reply = train_task(ctx, req)
    x, c = req.get_state("model"), req.get_state("c")
    if req.meta.get("variate", "II") == "I":
        # option I: c_i+ = the local gradient at the global model x (one more pass over the data)
        ci, grad = req.get_state("ci"), local_gradient(ctx, x)
        return reply.put_state("dc", {n: grad[n] - ci[n] for n in c}, Kind.FLOAT)
    local = local_config_from(req.meta, ctx.local)
    k = int(reply.meta["steps"])
    k_eff = effective_steps(k, local.momentum) if req.meta.get("steps", "momentum") == "momentum" else float(k)
    y = reply.get_state("model")
    scale = 1.0 / (k_eff * local.lr)
    dc = {n: (x[n] - y[n]) * scale - c[n] for n in c}  # c_i+ - c_i = -c + (x - y_i) / (K lr)
    return reply.put_state("dc", dc, Kind.FLOAT)


def local_gradient(ctx: ClientContext, state: ModelState, chunk: int = 2048) -> ModelState:
    """The gradient of the mean cross-entropy on the client's training data at ``state`` (eval mode).

    Eval mode keeps batch-norm statistics fixed and the buffers untouched; the loss is
    summed over chunks of ``chunk`` samples and divided by the sample count, so the
    result does not depend on the chunking.
    """
    x, y = ctx.data("train")
    names = [k for k, _ in ctx.model.named_parameters()]
    params = {k: state[k].detach().clone().requires_grad_(True) for k in names}
    rest = {k: v for k, v in state.items() if k not in params}
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    was_training = ctx.model.training
    ctx.model.eval()
    try:
        for i in range(0, int(x.shape[0]), chunk):
            out = torch.func.functional_call(ctx.model, {**params, **rest}, (x[i : i + chunk],))
            loss = F.cross_entropy(out, y[i : i + chunk], reduction="sum")
            for k, g in zip(names, torch.autograd.grad(loss, [params[k] for k in names])):
                total[k] += g
    finally:
        ctx.model.train(was_training)
    return {k: v / max(int(x.shape[0]), 1) for k, v in total.items()}


@register
class Scaffold(FedAvg):
    name = "scaffold"
    params: ScaffoldParams

    def __init__(self, ctx: RunContext, params: ScaffoldParams) -> None:
        super().__init__(ctx, params)
        self.param_names = [k for k, _ in ctx.model.named_parameters()]
        zeros = {k: torch.zeros_like(self.global_state[k]) for k in self.param_names}
        self.c_server = self.new_bank("c", zeros, rows=1)  # the global control variate c
        self.c_clients = self.new_bank("ci", zeros)  # c_i of every client; unwritten = 0

    @property
    def c(self) -> ModelState:
        """The global control variate."""
        return self.c_server.get(0)

    def objective(self) -> tuple[str, dict[str, Any]]:
        return ("scaffold", {}) if self.params.correction else ("ce", {})

    def client_c(self, cid: int) -> ModelState:
        """Client ``cid``'s control variate (zeros before its first round)."""
        return self.c_clients.get(cid)

    @property
    def task(self) -> str:  # type: ignore[override]
        return "scaffold_train" if self.params.correction else "train"

    def requests(self, t: int, clients: list[int], base: Payload) -> dict[int, Payload]:
        if not self.params.correction:
            return super().requests(t, clients, base)  # plain FedAvg: nothing extra sent or charged
        base = base.with_meta(steps=self.params.steps, variate=self.params.variate).put_state("c", self.c, Kind.FLOAT)
        return {cid: base.with_meta().put_state("ci", self.client_c(cid), Kind.STATE) for cid in clients}

    def aggregate(self, t: int, replies: dict[int, Payload]) -> None:
        """x <- x + eta_g * (weighted mean of y_i - x) on float entries (eta_g = 1: FedAvg's average, exactly)."""
        if not replies:
            return
        avg = self.average(replies)
        eta = float(self.params.global_lr)
        if eta != 1.0:
            x = self.global_state
            avg = {k: x[k] + eta * (v - x[k]) if v.is_floating_point() else v for k, v in avg.items()}
        self.set_global(avg)

    def after_replies(self, t: int, replies: dict[int, Payload]) -> dict[str, Any]:
        if not self.params.correction:
            return {}
        frac = len(replies) / self.fed.n_clients
        ids = sorted(replies)
        dcs = [replies[cid].get_state("dc") for cid in ids]
        for cid, dc in zip(ids, dcs):
            ci = self.client_c(cid)
            self.c_clients.set(cid, {k: ci[k] + dc[k] for k in self.param_names})
        c = self.c
        c = {k: c[k] + frac * torch.stack([dc[k] for dc in dcs]).mean(0) for k in self.param_names}
        self.c_server.set(0, c)
        sq = sum(((v.double() ** 2).sum() for v in c.values()), torch.zeros((), dtype=torch.float64))
        return {"c_norm": float(torch.sqrt(sq))}
