"""Vectorised execution: the clients of one call trained as one batched computation.

When many clients run the same task with the same objective, arguments and local
config on the same architecture, their parameters are stacked into ``[C, ...]`` tensors
and every optimiser step is one ``torch.func.vmap`` of ``grad`` of the objective's loss,
written against a ``functional_call`` view of the worker module (:class:`FuncNet`).

Exactness. Every client does exactly the work the sequential engine does:

- its batch index sequence comes from its own ``ctx.gen("train", round)`` through the
  same :func:`~fldistill.engine.training.batch_schedule`;
- its objective is built by the same factory with its own ``ctx.gen("objective", round)``,
  and ``sample`` is called once per step in step order;
- clients are *bucketed* by the length of their current batch (the short last batch of
  an epoch, clients smaller than ``batch_size``), so every loss is a mean over exactly
  that client's batch, for any objective (no padding, no masked means);
- clients whose schedule has ended stop changing (they are simply not in any bucket);
- SGD is torch.optim.SGD's update (weight decay added to the gradient, momentum buffer
  initialised to the first gradient, dampening 0).

Results equal the sequential engine's up to float rounding (vmap batches the matmuls).

Kernels. For models built only of the layers :mod:`fldistill.engine.fastchain` covers
(1-D convolutions, linear layers, ReLU, flatten: ``mnist1d_cnn`` and the MLPs), each half
of the model runs as one hand-batched chain (im2col + batched GEMMs in the orientation
MKL runs fastest) instead of per-client grouped convolutions; and when the objective
declares its closed form (:attr:`~fldistill.engine.training.Objective.fused`: plain CE as
in FedAvg and HFLDD's local training, CE + proximal term as in FedProx) the step skips
autograd and ``vmap`` altogether. Other models and objectives use ``vmap`` of ``grad``
over ``functional_call``. ``train_many(..., kernels="autograd")`` forces the latter (the
tests compare the two).

What falls back to the sequential engine (per client, automatically):

- models with buffers (batch norm's running statistics) or dropout: BN would need
  per-client functional buffers updated in place under vmap; we do not do that;
- objectives with ``vectorisable=False`` and objectives whose ``inputs`` differ in keys or
  shapes between clients;
- ``train`` requests with ``init_from_inbox`` (FedSeq's device-to-device chain);
- tasks without a batched implementation (:data:`fldistill.engine.comm.BATCHED_TASKS`),
  e.g. ``distill`` (KIP), ``scaffold_train``;
- calls with a single eligible client.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

from fldistill.config import LocalConfig
from fldistill.engine.comm import InProcessComm, Unsupported, batched_task, local_config_from, train_streams
from fldistill.engine.fastchain import SplitPlan, ce_grad, run_chain, split_plan
from fldistill.engine.training import Inputs, ModelState, Objective, batch_schedule, make_objective
from fldistill.errors import TrainingDiverged
from fldistill.ledger import Kind, Payload


def model_unsupported(model: torch.nn.Module) -> str | None:
    """Why ``model`` cannot be trained vectorised, or None when it can."""
    if any(True for _ in model.buffers()):
        return "the model has buffers (batch norm running statistics)"
    if any(isinstance(m, torch.nn.modules.dropout._DropoutNd) for m in model.modules()):
        return "the model uses dropout"
    if not (hasattr(model, "features") and hasattr(model, "classifier")):
        return "the model is not split into features and classifier"
    return None


class FuncNet:
    """:class:`~fldistill.engine.training.Net` over explicit parameters (``functional_call``).

    Inside ``vmap`` the parameters are one client's slice of the stacked tensors. With a
    :class:`~fldistill.engine.fastchain.SplitPlan` the two halves run as hand-batched
    chains (same values, faster under ``vmap``); without one, through ``functional_call``.
    """

    def __init__(self, model: torch.nn.Module, params: dict[str, torch.Tensor], plan: SplitPlan | None = None) -> None:
        self.model, self._params, self.plan = model, params, plan

    def _sub(self, prefix: str) -> dict[str, torch.Tensor]:
        n = len(prefix)
        return {k[n:]: v for k, v in self._params.items() if k.startswith(prefix)}

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.plan is not None:
            return self.head(self.features(x))
        return functional_call(self.model, self._params, (x,))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.plan is not None:
            return run_chain(self.plan.features, x, self._sub("features."))
        return functional_call(self.model.features, self._sub("features."), (x,))

    def head(self, h: torch.Tensor) -> torch.Tensor:
        if self.plan is not None:
            return run_chain(self.plan.classifier, h, self._sub("classifier."))
        return functional_call(self.model.classifier, self._sub("classifier."), (h,))

    def params(self) -> dict[str, torch.Tensor]:
        return self._params


@dataclass
class ClientJob:
    """One client's local training, as the batched trainer sees it.

    Attributes
    ----------
    index : torch.Tensor
        The client's training samples as indices into the pool handed to
        :func:`train_many` (its data in the order the sequential engine sees it).
    obj : Objective
        Built by the client's own factory call (own inputs, own ``sample`` stream).
    gen : torch.Generator
        The client's batch-order stream (``ctx.gen("train", round)``).
    """

    cid: int
    state: ModelState
    index: torch.Tensor
    obj: Objective
    gen: torch.Generator


def _stack(dicts: Sequence[Inputs], what: str) -> dict[str, torch.Tensor]:
    keys = list(dicts[0])
    for d in dicts[1:]:
        if list(d) != keys:
            raise Unsupported(f"{what} differ in keys between clients")
    out = {}
    for k in keys:
        shapes = {tuple(d[k].shape) for d in dicts}
        if len(shapes) != 1:
            raise Unsupported(f"{what} {k!r} differ in shape between clients")
        out[k] = torch.stack([d[k].detach() for d in dicts])
    return out


def train_many(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    jobs: Sequence[ClientJob],
    local: LocalConfig,
    *,
    where: str = "",
    chunk: int | None = None,
    kernels: str = "auto",
) -> list[tuple[ModelState, dict[str, float]]]:
    """Local SGD of many clients at once; the vectorised twin of ``local_train``.

    Parameters
    ----------
    model : torch.nn.Module
        The worker module (architecture only; its own tensors are not used or changed).
    x, y : torch.Tensor
        The sample pool the jobs' ``index`` point into.
    jobs : sequence of ClientJob
        Clients sharing one objective (the first job's ``loss`` serves all: by the
        :class:`Objective` contract it depends only on the shared request args) and
        ``local``.
    chunk : int, optional
        At most this many clients per vmapped step (default 128 on CPU, 4096 otherwise).
    kernels : {"auto", "autograd"}
        ``auto``: models made of the layers :mod:`~fldistill.engine.fastchain` covers run
        on its hand-batched kernels, and objectives that declare a closed form
        (:attr:`Objective.fused`) skip autograd and ``vmap`` entirely. ``autograd``:
        ``vmap`` of ``grad`` over ``functional_call`` for everything (the reference).

    Returns
    -------
    list
        Per job, the new state and ``{"loss", "steps", "n"}`` as ``local_train`` gives.

    Raises
    ------
    Unsupported
        If the model or the objectives cannot be batched (nothing has been trained).
    TrainingDiverged
        If a client's loss became NaN or infinite.
    """
    if kernels not in ("auto", "autograd"):
        raise ValueError(f"kernels must be 'auto' or 'autograd', got {kernels!r}")
    why = model_unsupported(model)
    if why:
        raise Unsupported(why)
    if any(not j.obj.vectorisable for j in jobs):
        raise Unsupported(f"objective {jobs[0].obj.name!r} is not vectorisable")
    names = [k for k, _ in model.named_parameters()]
    for j in jobs:
        if set(j.state) != set(names):
            raise Unsupported("the start states do not match the model's parameters")
    static = _stack([j.obj.inputs for j in jobs], "objective inputs")
    C = len(jobs)
    # Each client's whole batch sequence, as pool indices, drawn exactly as local_train does.
    sched = [[j.index[ix] for ix in batch_schedule(len(j.index), local, j.gen)] for j in jobs]
    n_steps = [len(s) for s in sched]
    P = {k: torch.stack([j.state[k].detach() for j in jobs]).clone() for k in names}
    buf: dict[str, torch.Tensor] = {}
    loss_sum = torch.zeros(C, dtype=torch.float64, device=x.device)
    loss_fn = jobs[0].obj.loss
    lr, mom, wd = local.lr, local.momentum, local.weight_decay
    plan = split_plan(model) if kernels == "auto" else None
    fused = jobs[0].obj.fused if plan is not None else None

    def one(p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor, inp: Inputs) -> torch.Tensor:
        return loss_fn(FuncNet(model, p, plan), xb, yb, inp)

    vg = vmap(grad_and_value(one)) if fused is None else _fused_step(plan, fused)  # type: ignore[arg-type]
    model.train()
    if chunk is None:
        # On CPU, vmapped (grouped) convolutions over very many clients fall out of cache:
        # chunks of ~128 clients ran about twice as fast as 1,000 at once.
        chunk = 128 if x.device.type == "cpu" else 4096
    for s in range(max(n_steps)):
        buckets: dict[int, list[int]] = {}
        for i in range(C):
            if s < n_steps[i]:
                buckets.setdefault(len(sched[i][s]), []).append(i)
        for b, bucket in buckets.items():
            for a in range(0, len(bucket), chunk):
                rows = bucket[a : a + chunk]
                # contiguous rows (the common case) are a view: no gathers or scatters
                sel: slice | torch.Tensor = (
                    slice(rows[0], rows[-1] + 1) if rows[-1] - rows[0] + 1 == len(rows) else torch.tensor(rows, device=x.device)
                )
                idx = torch.stack([sched[i][s] for i in rows])
                inp = {k: v[sel] for k, v in static.items()}
                if jobs[0].obj.sample is not None:
                    inp.update(_stack([jobs[i].obj.sample(b) for i in rows], "sampled inputs"))
                p = {k: v[sel] for k, v in P.items()}
                g, loss = vg(p, x[idx], y[idx], inp)
                loss_sum[sel] += loss.detach().to(torch.float64)
                view = isinstance(sel, slice)  # then p[k] and buf[k][sel] are views: update in place
                for k in names:
                    d = g[k]
                    if wd != 0:
                        d = d.add(p[k], alpha=wd)
                    if mom != 0:
                        if s == 0:  # every client's first step is step 0: the buffer starts as the gradient
                            buf.setdefault(k, torch.zeros_like(P[k]))[sel] = d
                        else:
                            d = buf[k][sel].mul_(mom).add_(d)
                            if not view:  # a gathered copy: write it back
                                buf[k][sel] = d
                    if view:
                        p[k].add_(d, alpha=-lr)
                    else:
                        P[k][sel] = p[k].add(d, alpha=-lr)
    bad = (~torch.isfinite(loss_sum)).nonzero().flatten().tolist()
    if bad:
        i = bad[0]
        raise TrainingDiverged(
            f"{where or 'local training'}: client {jobs[i].cid}'s loss became non-finite "
            f"(vectorised engine; {len(bad)} client(s) affected); lower local.lr (now {local.lr}) or check the data"
        )
    out = []
    for i, j in enumerate(jobs):
        st = {k: P[k][i].clone() for k in names}
        out.append((st, {"loss": float(loss_sum[i]) / max(n_steps[i], 1), "steps": float(n_steps[i]), "n": float(len(j.index))}))
    return out


def _fused_step(plan: SplitPlan, fused: dict[str, Any]) -> Any:
    """``vmap(grad_and_value(loss))``'s twin for an objective's declared closed form."""
    kind = fused.get("kind")
    if kind not in ("ce", "ce+prox"):
        raise Unsupported(f"no fused kernel for objective kind {kind!r}")
    mu = float(fused.get("mu", 0.0))

    def step(p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor, inp: Inputs) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        with torch.no_grad():
            g, loss = ce_grad(plan, p, xb, yb)
            if kind == "ce+prox":
                prox = 0
                for k, v in p.items():
                    diff = v - inp["anchor." + k]
                    g[k] = g[k].add(diff, alpha=mu)
                    prox = prox + diff.pow(2).flatten(1).sum(1)
                loss = loss + 0.5 * mu * prox
        return g, loss

    return step


@torch.no_grad()
def predict_many(model: torch.nn.Module, states: Sequence[ModelState], x: torch.Tensor, chunk_bytes: int = 256 * 2**20) -> torch.Tensor:
    """Softmax outputs of many states on the same ``x``: ``[len(states), len(x), classes]``.

    The vectorised twin of ``predict_proba``; clients are processed in chunks so that the
    activations of one chunk stay near ``chunk_bytes``.
    """
    why = model_unsupported(model)
    if why:
        raise Unsupported(why)
    model.eval()
    names = [k for k, _ in model.named_parameters()]
    plan = split_plan(model)
    fwd = vmap(lambda p: FuncNet(model, p, plan).logits(x))
    width = sum(v.numel() for v in states[0].values())  # a rough activation-size proxy
    per_client = max(1, x.numel() * x.element_size() * 8 + width * 4)
    step = max(1, chunk_bytes // per_client)
    outs = []
    for a in range(0, len(states), step):
        part = states[a : a + step]
        p = {k: torch.stack([s[k] for s in part]) for k in names}
        outs.append(F.softmax(fwd(p), -1))
    return torch.cat(outs)


def _client_index(comm: InProcessComm, cid: int) -> torch.Tensor:
    return torch.from_numpy(comm.fed.client_train[cid]).to(comm.fed.x.device)


def _groups(requests: Mapping[int, Payload], key: Any) -> list[list[int]]:
    out: dict[str, list[int]] = {}
    for cid in sorted(requests):
        k = key(requests[cid])
        if k is not None:
            out.setdefault(json.dumps(k, sort_keys=True, default=str), []).append(cid)
    return [g for g in out.values() if len(g) > 1]


@batched_task("train")
def train_batched(comm: InProcessComm, requests: Mapping[int, Payload]) -> dict[int, Payload]:
    """The batched ``train`` task (see :func:`fldistill.engine.comm.train_task`).

    Requests are grouped by objective, objective arguments and local config, and each
    group is trained by :func:`train_many`. Data received with ``use_inbox`` is appended
    to the pool for this call, so it is indexed like the clients' own samples. Clients
    that cannot be batched are left out of the result (the caller runs them
    sequentially).
    """

    def key(req: Payload) -> Any:
        m = req.meta
        if m.get("init_from_inbox"):
            return None
        lc = local_config_from(m, comm.local).model_dump()
        return [m.get("objective", "ce"), m.get("objective_args", {}), lc, sorted(req.tensors)]

    fed, out = comm.fed, {}
    for group in _groups(requests, key):
        x, y = fed.x, fed.y
        extra_x, extra_y, jobs = [], [], []
        size = len(fed.x)
        for cid in group:
            req, ctx = requests[cid], comm.context(cid)
            index = _client_index(comm, cid)
            if req.meta.get("use_inbox") and ctx.inbox:
                for _, pl in ctx.inbox:
                    ix, iy = pl.tensors["x"].to(fed.x), pl.tensors["y"].to(fed.y)
                    index = torch.cat([index, torch.arange(size, size + len(iy), device=index.device)])
                    extra_x.append(ix)
                    extra_y.append(iy)
                    size += len(iy)
            state = req.get_state("model")
            obj, gen = train_streams(ctx, req, state)
            jobs.append(ClientJob(cid, state, index, obj, gen))
        if extra_x:
            x, y = torch.cat([x, *extra_x]), torch.cat([y, *extra_y])
        local = local_config_from(requests[group[0]].meta, comm.local)
        for j, (new, stats) in zip(jobs, train_many(comm.model, x, y, jobs, local, where=f"clients {group[0]}..{group[-1]}")):
            out[j.cid] = Payload(meta={**stats}).put_state("model", new, Kind.PARAM)
    return out


@batched_task("soft_labels")
def soft_labels_batched(comm: InProcessComm, requests: Mapping[int, Payload]) -> dict[int, Payload]:
    """The batched twin of HFLDD's ``soft_labels`` task: pre-train, then predict the public set.

    Mirrors :func:`fldistill.methods.hfldd.soft_labels_task` (a test checks they agree):
    cross-entropy training with the client's ``pretrain`` stream, then softmax on the
    public set.
    """
    fed, out = comm.fed, {}
    if fed.public is None:
        raise Unsupported("no public set")
    pub = torch.as_tensor(fed.public.x, device=fed.x.device)
    for group in _groups(requests, lambda r: local_config_from(r.meta, comm.local).model_dump()):
        jobs = []
        for cid in group:
            state = requests[cid].get_state("model")
            ctx = comm.context(cid)
            jobs.append(ClientJob(cid, state, _client_index(comm, cid), make_objective("ce", {}, state, comm.model), ctx.gen("pretrain")))
        local = local_config_from(requests[group[0]].meta, comm.local)
        res = train_many(comm.model, fed.x, fed.y, jobs, local, where="soft-label pre-training")
        soft = predict_many(comm.model, [st for st, _ in res], pub)
        for i, (j, (_, stats)) in enumerate(zip(jobs, res)):
            out[j.cid] = Payload(meta={"n": len(j.index), "loss": stats["loss"]}).put("soft", soft[i], Kind.FLOAT)
    return out
