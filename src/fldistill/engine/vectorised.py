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
- clients whose objective equals no other client's: one client's loss is run for a
  whole batch, so the ``train`` task batches together only clients whose losses close
  over equal values and whose ``shared`` inputs are equal (:func:`group_jobs`; a loss
  that closes over a per-client tensor thus runs sequentially, a per-cluster one in one
  batch per cluster);
- ``train`` requests with ``init_from_inbox`` (FedSeq's device-to-device chain);
- tasks without a batched implementation (:data:`fldistill.engine.comm.BATCHED_TASKS`),
  e.g. ``distill`` (KIP), ``scaffold_train``;
- calls with a single eligible client.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import types
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

from fldistill.config import LocalConfig
from fldistill.engine.comm import InProcessComm, Unsupported, batched_task, label_histogram, local_config_from, train_streams
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
        return functional_call(cast(torch.nn.Module, self.model.features), self._sub("features."), (x,))

    def head(self, h: torch.Tensor) -> torch.Tensor:
        if self.plan is not None:
            return run_chain(self.plan.classifier, h, self._sub("classifier."))
        return functional_call(cast(torch.nn.Module, self.model.classifier), self._sub("classifier."), (h,))

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


class ValueKeys:
    """Hashable keys of the values an objective's loss closes over: equal keys, equal values.

    One instance serves one batching decision (its tensor numbering is local to it, and
    the objects keyed must stay alive while it is used). Rules, conservative where a
    value's equality is not known (then two clients only match if they hold the same
    object):

    - tensors: the same view of the same memory (data pointer, shape, strides, dtype,
      device) is equal at no cost; otherwise two tensors are equal when their bytes are
      (a BLAKE2 digest, confirmed by ``torch.equal``), so ``-0.0`` differs from ``0.0``
      and NaNs from everything: bit-for-bit equal inputs give bit-for-bit equal losses;
    - Python functions: same code object and globals, and keys of the defaults and of
      every closure cell, recursively (nested functions, partials, bound methods);
    - dicts (in order), lists, tuples, sets: element-wise;
    - numbers, strings, bytes, None, dtypes, devices, enums: by value (floats by
      ``float.hex``, so ``-0.0 != 0.0``; ``1``, ``1.0`` and ``True`` differ);
    - NumPy arrays by bytes; everything else (modules, generators, other objects) by
      identity.
    """

    def __init__(self) -> None:
        self._views: dict[tuple[Any, ...], int] = {}
        self._contents: dict[tuple[Any, ...], list[tuple[torch.Tensor, int]]] = {}
        self._n = 0
        self._open: dict[int, int] = {}  # id -> depth of the containers being keyed (cycles)

    def tensor(self, t: torch.Tensor) -> int | tuple[str, int]:
        """A number per distinct tensor value (bits, shape, dtype, device)."""
        if t.layout != torch.strided or t.is_nested or t.is_quantized or t.device.type == "meta":
            return ("id", id(t))  # no cheap, safe value comparison: identity
        view = (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype, t.device, t.is_conj(), t.is_neg())
        got = self._views.get(view)
        if got is not None:
            return got
        data = t.detach().resolve_conj().resolve_neg().contiguous().reshape(-1).view(torch.uint8).cpu().numpy()
        content = (tuple(t.shape), t.dtype, t.device, hashlib.blake2b(data.data, digest_size=16).digest())
        bucket = self._contents.setdefault(content, [])
        for rep, n in bucket:  # noqa: B007  (n is the match, read after the loop)
            if torch.equal(rep, t):
                break
        else:
            n = self._n
            self._n += 1
            bucket.append((t, n))
        self._views[view] = n
        return n

    def key(self, v: Any) -> Hashable:
        """The key of ``v`` (see the class docstring)."""
        if isinstance(v, torch.Tensor):
            return ("tensor", self.tensor(v))
        if isinstance(v, float):
            return (float, v.hex())
        if v is None or isinstance(v, (bool, int, str, bytes, complex, torch.dtype, torch.device, enum.Enum)):
            return (type(v), v)
        if isinstance(v, np.ndarray):
            return ("ndarray", v.dtype.str, v.shape, hashlib.blake2b(np.ascontiguousarray(v).tobytes(), digest_size=16).digest())
        if isinstance(v, np.generic):
            return (type(v), v.tobytes())
        if not isinstance(v, (types.FunctionType, types.MethodType, functools.partial, dict, list, tuple, set, frozenset)):
            return ("id", id(v))
        if id(v) in self._open:  # a cycle (a recursive closure, a list holding itself)
            return ("cycle", len(self._open) - self._open[id(v)])
        self._open[id(v)] = len(self._open)
        try:
            return self._container(v)
        finally:
            del self._open[id(v)]

    def _container(self, v: Any) -> Hashable:
        if isinstance(v, types.FunctionType):
            return ("fn", v.__code__, id(v.__globals__), self.key(v.__defaults__), self.key(v.__kwdefaults__), self.cells(v))
        if isinstance(v, types.MethodType):
            return ("method", self.key(v.__func__), self.key(v.__self__))
        if isinstance(v, functools.partial):
            return ("partial", self.key(v.func), self.key(v.args), self.key(v.keywords))
        if isinstance(v, dict):
            return (dict, tuple((self.key(k), self.key(x)) for k, x in v.items()))
        if isinstance(v, (set, frozenset)):
            return (type(v), frozenset(self.key(x) for x in v))
        return (type(v), tuple(self.key(x) for x in v))

    def cells(self, fn: types.FunctionType) -> tuple[tuple[str, Hashable], ...]:
        """``(name, key)`` of each closure cell of ``fn``."""
        out = []
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
            try:
                out.append((name, self.key(cell.cell_contents)))
            except ValueError:  # a cell not yet filled
                out.append((name, ("empty",)))
        return tuple(out)


def batch_key(obj: Objective, keys: ValueKeys) -> Hashable:
    """What must be equal for two clients' objectives to be trained as one batch.

    The loss (one client's serves the group), ``shared`` (passed once), ``fused`` (one
    kernel for the group), the name and ``vectorisable``; not ``inputs`` (stacked per
    client) nor ``sample`` (called per client).
    """
    return (obj.name, obj.vectorisable, keys.key(obj.fused), keys.key(obj.shared), keys.key(obj.loss))


def group_jobs(jobs: Sequence[ClientJob]) -> list[list[int]]:
    """Indices of ``jobs`` grouped by :func:`batch_key`, groups and members in job order.

    Cost: a walk over each loss's closure; tensors that are the same memory for every
    client (MOON's global model, a shared teacher) cost a dictionary look-up each, other
    tensors one hash of their bytes. Measured on one CPU thread at 1,000 clients of
    ``mnist1d_cnn``: FedProx 7 ms, MOON 20 ms (its loss closes over the global model's
    feature tensors), MOON with an equal copy of the global model per client 64 ms.
    """
    keys = ValueKeys()
    groups: dict[Hashable, list[int]] = {}
    for i, j in enumerate(jobs):
        groups.setdefault(batch_key(j.obj, keys), []).append(i)
    return list(groups.values())


def _why_different(a: Objective, b: Objective) -> str:
    """What differs between two objectives that :func:`batch_key` tells apart."""
    keys = ValueKeys()
    if (a.name, a.vectorisable) != (b.name, b.vectorisable):
        return f"the objectives differ ({a.name!r}, {b.name!r})"
    if keys.key(a.fused) != keys.key(b.fused):
        return f"their declared closed forms differ ({a.fused}, {b.fused})"
    if keys.key(a.shared) != keys.key(b.shared):
        diff = sorted(set(a.shared) ^ set(b.shared))
        diff = diff or [k for k in a.shared if keys.key(a.shared[k]) != keys.key(b.shared[k])]
        what = ", ".join(map(repr, diff[:3])) or "key order"
        return (
            f"objective {a.name!r}: the clients' shared inputs differ ({what}); "
            "Objective.shared must be equal for every client of a call"
        )
    la, lb = a.loss, b.loss
    if isinstance(la, types.FunctionType) and isinstance(lb, types.FunctionType) and la.__code__ is lb.__code__:
        diff = [n for (n, ka), (_, kb) in zip(keys.cells(la), keys.cells(lb)) if ka != kb]
        what = f"closure variable(s) {', '.join(map(repr, diff))}" if diff else "defaults or globals"
    else:
        what = "function"
    return (
        f"objective {a.name!r}: the clients' loss functions differ ({what}); one client's loss serves a whole batch, "
        "so a loss may close over only values equal for every client: move per-client tensors into Objective.inputs "
        "(and tensors common to all clients into Objective.shared)"
    )


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
        Clients sharing one objective and ``local``: the first job's ``loss``, ``shared``
        and ``fused`` serve all, so they must be equal between jobs (:func:`batch_key`;
        checked). ``inputs`` are stacked per client, ``shared`` passed once, unbatched.
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
        If the model or the objectives cannot be batched (nothing has been trained),
        among them jobs whose losses, shared inputs or fused forms differ.
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
    # One client's loss, shared inputs and kernel serve the whole batch: refuse a batch in
    # which they are not equal (train_batched groups the clients beforehand).
    groups = group_jobs(jobs)
    if len(groups) > 1:
        raise Unsupported(_why_different(jobs[groups[0][0]].obj, jobs[groups[1][0]].obj))
    static = _stack([j.obj.inputs for j in jobs], "objective inputs")
    C = len(jobs)
    # Each client's whole batch sequence, as pool indices, drawn exactly as local_train does.
    sched = [[j.index[ix] for ix in batch_schedule(len(j.index), local, j.gen)] for j in jobs]
    n_steps = [len(s) for s in sched]
    P = {k: torch.stack([j.state[k].detach() for j in jobs]).clone() for k in names}
    buf: dict[str, torch.Tensor] = {}
    loss_sum = torch.zeros(C, dtype=torch.float64, device=x.device)
    loss_fn = jobs[0].obj.loss
    # Passed once: a closure constant of the vmapped function is unbatched (no per-client copy).
    shared = {k: v.detach() for k, v in jobs[0].obj.shared.items()}
    lr, mom, wd = local.lr, local.momentum, local.weight_decay
    plan = split_plan(model) if kernels == "auto" else None
    fused = jobs[0].obj.fused if plan is not None else None

    def one(p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor, inp: Inputs) -> torch.Tensor:
        return loss_fn(FuncNet(model, p, plan), xb, yb, {**shared, **inp} if shared else inp)

    vg: Callable[..., Any] = vmap(grad_and_value(one)) if fused is None else _fused_step(plan, fused, shared)  # type: ignore[arg-type]
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
                    inp.update(_stack([cast(Callable[[int], Inputs], jobs[i].obj.sample)(b) for i in rows], "sampled inputs"))
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


def _fused_step(plan: SplitPlan, fused: dict[str, Any], shared: Inputs | None = None) -> Any:
    """``vmap(grad_and_value(loss))``'s twin for an objective's declared closed form.

    ``inp`` holds the per-client inputs stacked over clients (``[C, ...]``); ``shared``
    tensors are merged under them unbatched, which the kernels' elementwise use
    broadcasts over clients (e.g. a proximal anchor common to all clients).
    """
    kind = fused.get("kind")
    if kind not in ("ce", "ce+prox"):
        raise Unsupported(f"no fused kernel for objective kind {kind!r}")
    mu = float(fused.get("mu", 0.0))
    shared = shared or {}

    def step(p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor, inp: Inputs) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        if shared:
            inp = {**shared, **inp}
        with torch.no_grad():
            g, loss = ce_grad(plan, p, xb, yb)
            if kind == "ce+prox":
                prox: torch.Tensor | int = 0
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

    Requests are grouped by objective, objective arguments, local config and the names
    of their tensors, then by equal objectives (:func:`group_jobs`: the loss closures and
    shared inputs, by value), and each group is trained by :func:`train_many`. Data received with ``use_inbox`` is appended
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
        # Requests name the same tensors, but a loss may still close over per-client (or
        # per-cluster) values: batch each set of equal objectives on its own; a client
        # whose objective matches no other's is left to the sequential engine.
        for sub in group_jobs(jobs):
            if len(sub) < 2:
                continue
            batch = [jobs[i] for i in sub]
            res = train_many(comm.model, x, y, batch, local, where=f"clients {batch[0].cid}..{batch[-1].cid}")
            for j, (new, stats) in zip(batch, res):
                out[j.cid] = Payload(meta={**stats}).put_state("model", new, Kind.PARAM)
                if requests[j.cid].meta.get("histogram"):
                    out[j.cid].put("hist", label_histogram(fed.client_data(j.cid, "train")[1], fed.n_classes), Kind.FLOAT)
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
