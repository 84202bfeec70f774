"""Local training and evaluation, shared by every method and engine.

A local *objective* is a loss written against a :class:`Net` handle (logits, features,
parameters) rather than against an ``nn.Module``. The sequential engine hands it the
module itself; a vectorised engine can hand it a ``functional_call`` view inside
``vmap``. Method code therefore never changes with the engine.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import torch
import torch.nn.functional as F

from fldistill.config import LocalConfig
from fldistill.errors import TrainingDiverged

ModelState = dict[str, torch.Tensor]


def get_state(model: torch.nn.Module) -> ModelState:
    """A detached copy of the model's parameters and buffers."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fresh_state(model: torch.nn.Module, seed: int) -> ModelState:
    """``model``'s architecture with every layer re-initialised by its own initialiser, seeded.

    Drawn on a CPU copy, so the same seed gives the same model on every device; the
    state is returned on the model's device. For methods that need several independent
    initial models (IFCA's cluster models); the run's initial model is ``init_state``.
    """
    dev = next(iter(model.state_dict().values())).device
    clone = copy.deepcopy(model).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for m in clone.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
    return {k: v.detach().to(dev).clone() for k, v in clone.state_dict().items()}


def set_state(model: torch.nn.Module, state: ModelState) -> None:
    """Load ``state`` into ``model`` (copies values, keeps the module's tensors)."""
    model.load_state_dict(state, strict=True)


def weighted_average(states: list[ModelState], weights: list[float] | torch.Tensor) -> ModelState:
    """Weighted average of model states (FedAvg aggregation).

    Floating-point entries are averaged with weights normalised to sum to one; integer
    buffers (BatchNorm's ``num_batches_tracked``) take the maximum.
    """
    w = torch.as_tensor(weights, dtype=torch.float64)
    if len(states) == 0 or w.numel() != len(states):
        raise ValueError("weighted_average needs one weight per state")
    w = w / w.sum()
    out: ModelState = {}
    for k, ref in states[0].items():
        if ref.is_floating_point():
            acc = torch.zeros_like(ref, dtype=torch.float64)
            for s, wi in zip(states, w):
                acc += wi * s[k].to(torch.float64)
            out[k] = acc.to(ref.dtype)
        else:
            out[k] = torch.stack([s[k] for s in states]).max(0).values
    return out


class Net(Protocol):
    """What an objective sees of the model being trained."""

    def logits(self, x: torch.Tensor) -> torch.Tensor: ...
    def features(self, x: torch.Tensor) -> torch.Tensor: ...
    def head(self, h: torch.Tensor) -> torch.Tensor: ...
    def params(self) -> dict[str, torch.Tensor]: ...


class ModuleNet:
    """:class:`Net` over an ``nn.Module`` with ``features``/``classifier`` (sequential engine)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.nn.Module, self.module.features)(x)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return cast(torch.nn.Module, self.module.classifier)(h)

    def params(self) -> dict[str, torch.Tensor]:
        return dict(self.module.named_parameters())


def frozen_forward(module: torch.nn.Module, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``module`` run with the tensors ``state`` on ``x``: eval mode (BN running stats), no grad.

    For the frozen models a local loss compares against (MOON's global and previous
    models, KDIA's teacher); ``functional_call`` also works inside the vectorised engine.
    """
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            return torch.func.functional_call(module, state, (x,))
    finally:
        module.train(was)


Inputs = dict[str, torch.Tensor]
# loss(net, x, y, inputs): ``inputs`` holds the objective's shared tensors, its per-client
# tensors and the current step's random draws, merged in that order (see :class:`Objective`).
LossFn = Callable[[Net, torch.Tensor, torch.Tensor, Inputs], torch.Tensor]


@dataclass
class Objective:
    """A local loss, the tensors it reads, and its per-step random inputs.

    The contract that lets an engine batch one objective over many clients: ``loss`` may
    close over the request's ``args`` and the worker module (the same for every client of
    one call), but every tensor it reads is in ``shared`` (identical for every client of a
    call: a teacher model, a generator's output) or in ``inputs`` (whatever can differ
    between clients: an anchor model, control variates, a previous model), and every
    random draw is made by ``sample``, outside the loss. The vectorised engine runs one
    client's ``loss`` for a whole group, so it checks that the groups' losses close over
    equal values (code, and closure cells compared by value) and that their ``shared``
    are equal; clients that differ are batched separately or run sequentially.

    Attributes
    ----------
    inputs : dict
        Per-client tensors handed to ``loss`` in its fourth argument. A vectorised engine
        stacks them over clients.
    shared : dict
        Tensors identical for every client of a call (by value; e.g. the ``K`` teacher
        models of a distillation loss), also handed to ``loss`` in its fourth argument. A
        vectorised engine passes them once, unbatched, instead of a copy per client. Keys
        also in ``inputs`` or in ``sample``'s draws are overridden by those.
    sample : callable, optional
        ``sample(batch_len) -> dict``, called once per optimiser step, in step order,
        before the loss; its tensors are merged into ``inputs`` for that step (KDIA's
        generated features and their labels). Draws come from the objective's own seeded
        stream, so they do not depend on the engine.
    vectorisable : bool
        False when the loss cannot run under ``torch.func.vmap``.
    fused : dict, optional
        Declares that ``loss`` is exactly one of the engine's closed forms, so that a
        vectorised engine may compute it and its gradient with hand-written batched kernels
        instead of autograd: ``{"kind": "ce"}`` (mean cross-entropy of the logits) or
        ``{"kind": "ce+prox", "mu": mu}`` (plus ``mu/2 * sum_k ||p_k - inputs["anchor." + k]||^2``;
        the anchors may be in ``inputs`` or in ``shared``).
        ``loss`` stays the reference: the engine's tests check the two agree.
    """

    name: str
    loss: LossFn
    inputs: Inputs = field(default_factory=dict)
    sample: Callable[[int], Inputs] | None = None
    vectorisable: bool = True
    fused: dict[str, Any] | None = None
    shared: Inputs = field(default_factory=dict)

    def step_inputs(self, batch_len: int) -> Inputs:
        """``shared``, then ``inputs``, then this step's random draws, merged (later keys win)."""
        if self.sample is None:
            return {**self.shared, **self.inputs} if self.shared else self.inputs
        return {**self.shared, **self.inputs, **self.sample(batch_len)}


# (args from the request metadata, the state the client starts from, the worker module,
#  the request's tensors (a teacher model, control variates), a seeded generator private
#  to this client and round for the objective's own random draws) -> Objective
ObjectiveFactory = Callable[
    [dict[str, Any], ModelState, torch.nn.Module, dict[str, torch.Tensor], torch.Generator], Objective
]
OBJECTIVES: dict[str, ObjectiveFactory] = {}


def objective(name: str) -> Callable[[ObjectiveFactory], ObjectiveFactory]:
    """Register a local objective factory ``(args, start_state, model, tensors, gen) -> Objective``.

    Objectives may be defined in a method's own module; they register on import.
    """

    def deco(fn: ObjectiveFactory) -> ObjectiveFactory:
        OBJECTIVES[name] = fn
        return fn

    return deco


def make_objective(
    name: str,
    args: dict[str, Any],
    ref: ModelState,
    model: torch.nn.Module,
    tensors: dict[str, torch.Tensor] | None = None,
    gen: torch.Generator | None = None,
) -> Objective:
    """Build a registered objective; ``ref`` is the model state the client started from.

    ``gen`` seeds the objective's own random draws (:attr:`Objective.sample`); objectives
    without any ignore it.
    """
    if name not in OBJECTIVES:
        raise KeyError(f"unknown local objective {name!r}; registered: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name](args, ref, model, tensors or {}, gen if gen is not None else torch.Generator().manual_seed(0))


@objective("ce")
def _ce(args: dict[str, Any], ref: ModelState, model: torch.nn.Module, tensors: Inputs, gen: torch.Generator) -> Objective:
    return Objective("ce", lambda net, x, y, inp: F.cross_entropy(net.logits(x), y), fused={"kind": "ce"})


@objective("fedprox")
def _fedprox(args: dict[str, Any], ref: ModelState, model: torch.nn.Module, tensors: Inputs, gen: torch.Generator) -> Objective:
    mu = float(args.get("mu", 0.01))
    names = [k for k, _ in model.named_parameters()]

    def loss(net: Net, x: torch.Tensor, y: torch.Tensor, inp: Inputs) -> torch.Tensor:
        # The proximal term is always computed (also at mu=0) so that "FedProx(mu=0) ==
        # FedAvg" is a real check of this code path rather than of a shortcut.
        prox = sum(((p - inp["anchor." + k]) ** 2).sum() for k, p in net.params().items())
        return F.cross_entropy(net.logits(x), y) + 0.5 * mu * prox

    return Objective(
        "fedprox", loss, inputs={"anchor." + k: ref[k].detach() for k in names}, fused={"kind": "ce+prox", "mu": mu}
    )


def batch_schedule(n: int, local: LocalConfig, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches for one client's local work.

    ``epochs``: E passes over a fresh permutation, the last batch of each pass may be
    short. ``steps``: E batches drawn by walking successive permutations. Indices live on
    the generator's device (client streams are made on the data's device, e.g. CUDA).
    """
    b = min(local.batch_size, n)
    if local.unit == "epochs":
        for _ in range(local.amount):
            perm = torch.randperm(n, generator=gen, device=gen.device)
            for i in range(0, n, b):
                yield perm[i : i + b]
    else:
        perm, pos = torch.randperm(n, generator=gen, device=gen.device), 0
        for _ in range(local.amount):
            if pos + b > n:
                perm, pos = torch.randperm(n, generator=gen, device=gen.device), 0
            yield perm[pos : pos + b]
            pos += b


def num_local_steps(n: int, local: LocalConfig) -> int:
    """How many optimiser steps :func:`batch_schedule` yields for ``n`` samples."""
    if local.unit == "steps":
        return local.amount
    return local.amount * math.ceil(n / min(local.batch_size, n))


def local_train(
    model: torch.nn.Module,
    state: ModelState,
    x: torch.Tensor,
    y: torch.Tensor,
    local: LocalConfig,
    obj: Objective,
    gen: torch.Generator,
    *,
    where: str = "",
) -> tuple[ModelState, dict[str, float]]:
    """Run local SGD from ``state`` on ``(x, y)``.

    Returns the new state and ``{"loss": mean training loss, "steps": k, "n": n}``.

    Raises
    ------
    TrainingDiverged
        If a loss becomes NaN or infinite.
    """
    set_state(model, state)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=local.lr, momentum=local.momentum, weight_decay=local.weight_decay)
    net = ModuleNet(model)
    total, steps = 0.0, 0
    for idx in batch_schedule(len(y), local, gen):
        opt.zero_grad(set_to_none=True)
        loss = obj.loss(net, x[idx], y[idx], obj.step_inputs(len(idx)))
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"{where or 'local training'}: the loss became {loss.item()} at step {steps}; "
                f"lower local.lr (now {local.lr}) or check the data"
            )
        loss.backward()
        opt.step()
        total += float(loss.detach())
        steps += 1
    return get_state(model), {"loss": total / max(steps, 1), "steps": float(steps), "n": float(len(y))}


@torch.no_grad()
def evaluate(model: torch.nn.Module, state: ModelState, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``state`` on ``(x, y)``."""
    set_state(model, state)
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(y), batch_size):
        out = model(x[i : i + batch_size])
        yb = y[i : i + batch_size]
        loss += float(F.cross_entropy(out, yb, reduction="sum"))
        correct += int((out.argmax(1) == yb).sum())
    n = max(len(y), 1)
    return correct / n, loss / n


@torch.no_grad()
def predict_proba(model: torch.nn.Module, state: ModelState, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Softmax outputs of ``state`` on ``x``."""
    set_state(model, state)
    model.eval()
    return torch.cat([F.softmax(model(x[i : i + batch_size]), 1) for i in range(0, len(x), batch_size)])
