"""Hand-batched layer chains: the vectorised engine's kernels for simple models.

Under ``vmap``, a convolution whose weights differ per client becomes one grouped
convolution with a group per client; on CPU those (and their backward) ran at about a
third of the speed of the same arithmetic as batched matrix products, and every layer
of a vmapped model pays per-op dispatch on top. For models made only of the layers
below, the engine therefore runs each half of the model (``features``, ``classifier``)
as *one* ``autograd.Function`` whose ``vmap`` rule is a hand-written batched forward
(im2col + ``baddbmm``, channels-last activations between convolutions) and whose
backward is a second ``Function`` with a hand-written batched backward (``bmm`` and a
strided col2im). Per-client semantics are unchanged: called without ``vmap`` the same
code runs with one client, and the tests check values and gradients against the
module itself.

Supported layers: ``nn.Conv1d`` (groups 1, dilation 1, zero padding given as an int),
``nn.Linear``, ``nn.ReLU``, ``nn.Flatten`` (``start_dim=1, end_dim=-1``),
``nn.Identity`` and :class:`~fldistill.models.base.AddChannel`, in ``nn.Sequential``
chains (or a single such layer). Anything else: :func:`plan_for` returns None and the
engine keeps plain ``functional_call`` under ``vmap``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from fldistill.models.base import AddChannel

Tensor = torch.Tensor


@dataclass(frozen=True)
class Step:
    """One layer of a chain: its kind, parameter names (relative to the chain) and geometry."""

    kind: str  # "conv1d" | "linear" | "relu" | "flatten" | "addchannel"
    weight: str | None = None
    bias: str | None = None
    kernel: int = 0
    stride: int = 1
    padding: int = 0


@dataclass(frozen=True)
class Plan:
    """A supported chain: its steps and the ordered names of the parameters it takes."""

    steps: tuple[Step, ...]
    params: tuple[str, ...]


def _step(mod: nn.Module, prefix: str) -> Step | None:
    if isinstance(mod, nn.Conv1d) and type(mod) is nn.Conv1d:
        ok = (
            mod.groups == 1
            and tuple(mod.dilation) == (1,)
            and mod.padding_mode == "zeros"
            and isinstance(mod.padding, tuple)
            and len(mod.padding) == 1
        )
        if not ok:
            return None
        return Step(
            "conv1d",
            prefix + "weight",
            prefix + "bias" if mod.bias is not None else None,
            int(mod.kernel_size[0]),
            int(mod.stride[0]),
            int(mod.padding[0]),
        )
    if type(mod) is nn.Linear:
        return Step("linear", prefix + "weight", prefix + "bias" if mod.bias is not None else None)
    if type(mod) is nn.ReLU:
        return Step("relu")
    if type(mod) is nn.Flatten:
        return Step("flatten") if (mod.start_dim, mod.end_dim) == (1, -1) else None
    if type(mod) is nn.Identity:
        return Step("identity")
    if type(mod) is AddChannel:
        return Step("addchannel")
    return None


def plan_for(module: nn.Module) -> Plan | None:
    """The fast plan for ``module``, or None when it has a layer this file does not cover.

    Parameters
    ----------
    module : nn.Module
        An ``nn.Sequential`` of supported layers, or one supported layer.
    """
    if any(True for _ in module.buffers()):
        return None
    mods = list(module.named_children()) if type(module) is nn.Sequential else [("", module)]
    steps = []
    for name, mod in mods:
        st = _step(mod, f"{name}." if name else "")
        if st is None:
            return None
        if st.kind != "identity":
            steps.append(st)
    params = tuple(n for s in steps for n in (s.weight, s.bias) if n is not None)
    if set(params) != {n for n, _ in module.named_parameters()}:
        return None
    return Plan(tuple(steps), params)


# --------------------------------------------------------------------------- batched kernels
# Activations carry an explicit client dimension C: [C, B, ...]. Between convolutions they
# are held *channel-major*, [C, Ch, B, L] (flag ``cm``): then every convolution product
# has the long B*L axis last, the orientation MKL's small batched GEMMs run fastest in
# (measured up to 4x on 2 cores), and im2col/col2im are strided copies. A flatten (or the
# chain's end) returns to PyTorch's per-client channels-first order [C, B, Ch, L].


def _swap(h: Tensor, cm: bool) -> Tensor:
    """[C, Ch, B, L] <-> [C, B, Ch, L] iff ``cm`` (a view)."""
    return h.transpose(1, 2) if cm else h


def _mm(a: Tensor, b: Tensor) -> Tensor:
    """Batched ``a @ b``, computed as ``(b^T a^T)^T`` when that puts the longer of the two
    output dimensions last (faster for these skinny products); may return a transposed view.
    The choice depends only on shapes, so results are reproducible."""
    if a.shape[1] > b.shape[2]:
        return torch.bmm(b.transpose(1, 2), a.transpose(1, 2)).transpose(1, 2)
    return torch.bmm(a, b)


def _taps(L: int, lo: int, st: Step) -> list[tuple[int, int, int, int]]:
    """Per kernel tap j: the outputs ``[o0, o1)`` that read a real (not padded) input, and
    the first input position they read, ``s*o0 + j - p``."""
    out = []
    for j in range(st.kernel):
        o0 = max(0, -((j - st.padding) // st.stride))  # ceil((p - j) / s)
        o1 = min(lo, (L - 1 + st.padding - j) // st.stride + 1)
        out.append((j, o0, max(o0, o1), st.stride * o0 + j - st.padding))
    return out


def _im2col_t(h: Tensor, st: Step) -> tuple[Tensor, int]:
    """``h`` [C, Cin, B, L] (channel-major, any strides) -> columns^T [C, K*Cin, B*Lo], Lo.

    Written tap by tap from the unpadded input (padding positions are zeros), so there
    is no padded copy. Row order (tap, channel) matches :func:`_tap_major`.
    """
    C, Ci, B, L = h.shape
    lo = (L + 2 * st.padding - st.kernel) // st.stride + 1
    u = h.new_empty(C, st.kernel, Ci, B, lo)
    for j, o0, o1, i0 in _taps(L, lo, st):
        if o0 > 0:
            u[:, j, ..., :o0].zero_()
        if o1 < lo:
            u[:, j, ..., o1:].zero_()
        if o1 > o0:
            u[:, j, ..., o0:o1] = h[..., i0 : i0 + st.stride * (o1 - o0 - 1) + 1 : st.stride]
    return u.view(C, st.kernel * Ci, B * lo), lo


def _tap_major(w: Tensor) -> Tensor:
    """Conv weights [C, Cout, Cin, K] -> [C, Cout, K*Cin], the row order of :func:`_im2col_t`."""
    return w.transpose(2, 3).reshape(w.shape[0], w.shape[1], -1)


def chain_forward(plan: Plan, x: Tensor, params: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """Batched forward of ``plan``: ``x`` [C, B, ...], params [C, ...] each.

    Returns the output [C, B, ...] (channels-first, as the module gives it) and the
    tensors :func:`chain_backward` needs.
    """
    p = dict(zip(plan.params, params))
    C = x.shape[0]
    h, cm = x, False
    saved: list[Tensor] = []
    for st in plan.steps:
        if st.kind == "addchannel":
            if h.dim() == 3:
                h = h.unsqueeze(2)
        elif st.kind == "conv1d":
            if h.dim() != 4:
                raise ValueError(f"conv1d expects [B, C, L] per client, got {tuple(h.shape[1:])}")
            B = h.shape[2] if cm else h.shape[1]
            u, lo = _im2col_t(h if cm else h.transpose(1, 2), st)
            w = p[st.weight]  # type: ignore[index]
            out = _mm(_tap_major(w), u)  # [C, Cout, B*Lo]
            if st.bias is not None:
                out = out + p[st.bias].unsqueeze(2)
            saved.append(u)
            h, cm = out.view(C, w.shape[1], B, lo), True
        elif st.kind == "relu":
            h = torch.relu(h)
            saved.append(h)
        elif st.kind == "flatten":
            h = _swap(h, cm)
            h, cm = h.reshape(C, h.shape[1], -1), False
        elif st.kind == "linear":
            w = p[st.weight]  # type: ignore[index]
            h, cm = _swap(h, cm), False
            hin = h.reshape(C, -1, h.shape[-1])
            saved.append(hin)
            out = _mm(hin, w.transpose(1, 2))
            if st.bias is not None:
                out = out + p[st.bias].unsqueeze(1)
            h = out.view(*h.shape[:-1], w.shape[1])
    return _swap(h, cm), saved


def chain_backward(
    plan: Plan, need_x: bool, x: Tensor, dout: Tensor, saved: Sequence[Tensor], params: Sequence[Tensor]
) -> tuple[Tensor | None, list[Tensor]]:
    """Batched backward of ``plan``: the input's gradient (if ``need_x``) and the params'."""
    p = dict(zip(plan.params, params))
    C = x.shape[0]
    # Every step's input: its per-client (channels-first) shape and whether it was held
    # channel-major, replayed from x (no arithmetic).
    shapes: list[tuple[tuple[int, ...], bool]] = []
    shp, cm = tuple(x.shape), False
    k = 0
    for st in plan.steps:
        shapes.append((shp, cm))
        if st.kind == "addchannel":
            if len(shp) == 3:
                shp = (shp[0], shp[1], 1, shp[2])
        elif st.kind == "conv1d":
            lo = saved[k].shape[2] // shp[1]
            shp, cm, k = (shp[0], shp[1], p[st.weight].shape[1], lo), True, k + 1  # type: ignore[index]
        elif st.kind == "relu":
            k += 1
        elif st.kind == "flatten":
            shp, cm = (shp[0], shp[1], int(torch.Size(shp[2:]).numel())), False
        elif st.kind == "linear":
            shp, cm, k = (*shp[:-1], p[st.weight].shape[1]), False, k + 1  # type: ignore[index]
    g = _swap(dout, cm)  # g is always held in the layout of the current step's output
    grads: dict[str, Tensor] = {}
    for i in range(len(plan.steps) - 1, -1, -1):
        st = plan.steps[i]
        ishp, icm = shapes[i]
        last = i == 0 and not need_x
        if st.kind == "addchannel":
            g = g.reshape(ishp)
        elif st.kind == "relu":
            k -= 1
            g = torch.ops.aten.threshold_backward(g, saved[k], 0)
        elif st.kind == "flatten":
            # contiguous: relu's backward on mismatched strides ran 10x slower
            g = _swap(g.reshape(ishp), icm).contiguous()
        elif st.kind == "linear":
            k -= 1
            hin = saved[k]
            w = p[st.weight]  # type: ignore[index]
            g2 = g.reshape(C, -1, g.shape[-1])
            grads[st.weight] = _mm(g2.transpose(1, 2), hin)  # type: ignore[index]
            if st.bias is not None:
                grads[st.bias] = g2.sum(1)
            if not last:
                g = _swap(_mm(g2, w).reshape(ishp), icm)
        elif st.kind == "conv1d":
            k -= 1
            ut = saved[k]  # [C, K*Cin, B*Lo]
            w = p[st.weight]  # type: ignore[index]
            cout = w.shape[1]
            g2 = g.reshape(C, cout, -1)  # channel-major: [C, Cout, B*Lo]
            dwk = _mm(g2, ut.transpose(1, 2))  # [C, Cout, K*Cin]
            grads[st.weight] = dwk.reshape(C, cout, st.kernel, -1).transpose(2, 3).contiguous()  # type: ignore[index]
            if st.bias is not None:
                grads[st.bias] = g2.sum(2)
            if not last:
                _, B, Ci, L = ishp
                lo = ut.shape[2] // B
                du = _mm(_tap_major(w).transpose(1, 2), g2).reshape(C, st.kernel, Ci, B, lo)
                dh = g2.new_zeros(C, Ci, B, L)
                for j, o0, o1, i0 in _taps(L, lo, st):  # col2im: each tap adds into the inputs it read
                    if o1 > o0:
                        dh[..., i0 : i0 + st.stride * (o1 - o0 - 1) + 1 : st.stride] += du[:, j, ..., o0:o1]
                g = dh if icm else dh.transpose(1, 2)
    return (g if need_x else None), [grads[n] for n in plan.params]


# --------------------------------------------------------------------------- autograd + vmap
def _batch(t: Tensor, dim: int | None, size: int) -> Tensor:
    return t.movedim(dim, 0) if dim is not None else t.expand(size, *t.shape)


class _ChainFn(torch.autograd.Function):
    """``plan`` applied to ``x`` with ``params``; outputs (y, *saved), the saved ones not differentiable."""

    @staticmethod
    def forward(plan: Plan, x: Tensor, *params: Tensor) -> tuple[Tensor, ...]:
        y, saved = chain_forward(plan, x.unsqueeze(0), [q.unsqueeze(0) for q in params])
        return (y.squeeze(0), *(s.squeeze(0) for s in saved))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        plan, x, *params = inputs
        ctx.plan, ctx.n_saved = plan, len(output) - 1
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, *output[1:], *params)

    @staticmethod
    def backward(ctx: Any, dy: Tensor | None, *_: Any) -> tuple[Tensor | None, ...]:
        x, *rest = ctx.saved_tensors
        n = ctx.n_saved
        need_x = bool(ctx.needs_input_grad[1])
        if dy is None:
            return (None, None, *(None for _ in rest[n:]))
        dx, *dp = _ChainBwd.apply(ctx.plan, need_x, x, dy, n, *rest)
        return (None, dx if need_x else None, *dp)

    @staticmethod
    def vmap(info: Any, in_dims: tuple[Any, ...], plan: Plan, x: Tensor, *params: Tensor) -> tuple[Any, Any]:
        C = info.batch_size
        y, saved = chain_forward(plan, _batch(x, in_dims[1], C), [_batch(q, d, C) for q, d in zip(params, in_dims[2:])])
        return (y, *saved), (0,) * (1 + len(saved))


class _ChainBwd(torch.autograd.Function):
    """The batched backward of :class:`_ChainFn` (not differentiable itself)."""

    @staticmethod
    def forward(plan: Plan, need_x: bool, x: Tensor, dy: Tensor, n: int, *rest: Tensor) -> tuple[Tensor, ...]:
        one = [t.unsqueeze(0) for t in rest]
        dx, dp = chain_backward(plan, need_x, x.unsqueeze(0), dy.unsqueeze(0), one[:n], one[n:])
        return (dx.squeeze(0) if dx is not None else x.new_zeros(()), *(d.squeeze(0) for d in dp))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:  # pragma: no cover - never differentiated twice
        raise RuntimeError("the fast chain's backward is not differentiable (no double backward)")

    @staticmethod
    def vmap(
        info: Any, in_dims: tuple[Any, ...], plan: Plan, need_x: bool, x: Tensor, dy: Tensor, n: int, *rest: Tensor
    ) -> tuple[Any, Any]:
        C = info.batch_size
        ts = [_batch(t, d, C) for t, d in zip(rest, in_dims[5:])]
        dx, dp = chain_backward(plan, need_x, _batch(x, in_dims[2], C), _batch(dy, in_dims[3], C), ts[:n], ts[n:])
        out = (dx if dx is not None else x.new_zeros(()), *dp)
        return out, ((0 if dx is not None else None),) + (0,) * len(dp)


def run_chain(plan: Plan, x: Tensor, params: dict[str, Tensor]) -> Tensor:
    """Apply ``plan`` to one client's ``x`` with ``params`` (names relative to the chain).

    Differentiable in ``x`` and the params, and batched efficiently under ``vmap``.
    """
    return _ChainFn.apply(plan, x, *(params[n] for n in plan.params))[0]


# --------------------------------------------------------------------------- fused CE step
@dataclass(frozen=True)
class SplitPlan:
    """Plans for both halves of a :class:`~fldistill.models.base.SplitModel`."""

    features: Plan
    classifier: Plan

    def params(self, stacked: dict[str, Tensor], half: str) -> list[Tensor]:
        plan = self.features if half == "features" else self.classifier
        return [stacked[f"{half}.{n}"] for n in plan.params]


def split_plan(model: nn.Module) -> SplitPlan | None:
    """Plans for ``model.features`` and ``model.classifier``, or None if either is unsupported."""
    if not (hasattr(model, "features") and hasattr(model, "classifier")):
        return None
    # nn.Module.__getattr__ is typed Tensor | Module; both are submodules here
    f, c = plan_for(cast(nn.Module, model.features)), plan_for(cast(nn.Module, model.classifier))
    if f is None or c is None:
        return None
    return SplitPlan(f, c)


def ce_grad(sp: SplitPlan, params: dict[str, Tensor], x: Tensor, y: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """Per-client mean cross-entropy and its gradient, without autograd or ``vmap``.

    Parameters
    ----------
    sp : SplitPlan
        The model's plans.
    params : dict
        Stacked parameters ``[C, ...]`` under the model's names.
    x, y : Tensor
        ``[C, B, ...]`` inputs and ``[C, B]`` labels.

    Returns
    -------
    grads, loss
        ``d mean_b CE / d params`` per client (a dict like ``params``) and the losses ``[C]``.
    """
    pf, pc = sp.params(params, "features"), sp.params(params, "classifier")
    h, saved_f = chain_forward(sp.features, x, pf)
    logits, saved_c = chain_forward(sp.classifier, h, pc)
    lsm = torch.log_softmax(logits, -1)
    yi = y.unsqueeze(-1)
    loss = -lsm.gather(-1, yi).squeeze(-1).mean(1)
    d = lsm.exp_()  # softmax, reusing the buffer: d CE / d logits = (softmax - onehot) / B
    d.scatter_add_(-1, yi, torch.full_like(yi, -1, dtype=d.dtype))
    d.div_(y.shape[1])
    dh, gc = chain_backward(sp.classifier, True, h, d, saved_c, pc)
    _, gf = chain_backward(sp.features, False, x, dh, saved_f, pf)  # type: ignore[arg-type]
    grads = {f"features.{n}": g for n, g in zip(sp.features.params, gf)}
    grads.update({f"classifier.{n}": g for n, g in zip(sp.classifier.params, gc)})
    return grads, loss
