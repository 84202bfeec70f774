"""DynaFed (Pi et al., CVPR 2023): server-side data synthesis from the global trajectory.

Code-faithful to ``pipilurj/DynaFed`` (``run_end2end.py``, ``server.py``,
``image_synthesizer.py``; see the spec, methods.md section 6). A round is FedAvg's round
(this class subclasses :class:`FedAvg` and reuses it); everything DynaFed adds is server
compute, so the communication is exactly FedAvg's:

1. The server records the global model after every round (``traj = [w_0, w_1, ...]``,
   full copies) until it synthesises.
2. At the first round ``t`` with ``len(traj) >= L`` (that is ``t = L``), before the
   clients train, it synthesises ONCE by trajectory matching (MTT) on ``traj``: a
   synthetic set ``X`` of ``C * ipc`` samples (init ``N(0, 1)``, inputs are normalised),
   learnable label logits ``Y`` (init 0, i.e. uniform) and a learnable step size
   ``syn_lr`` (init ``lr_teacher``). Each iteration draws a start ``s`` and a target, the
   mean of ``k ~ U{2..expert_epochs}`` models drawn with replacement from
   ``traj[s+1 .. s+expert_epochs]``, unrolls ``syn_steps`` differentiable SGD steps
   ``theta <- theta - syn_lr * grad kd_loss(f_theta(DSA(X)), Y)`` from ``traj[s]`` and
   minimises ``|theta - target|^2 / |traj[s] - target|^2`` with Adam on ``X``, ``Y`` and
   ``syn_lr``.
3. From then on, every round, after aggregation, the server fine-tunes the global model
   on ``(X, Y)`` for ``finetune_epochs`` epochs (Adam, DSA, ``kd_loss``).

``kd_loss(o, y) = mean over batch and classes of -softmax(y) * log_softmax(o)`` (the
code's; it is the soft cross-entropy divided by the number of classes).

Deviations and readings:

* ``unweighted=True`` (default) averages the clients' models with equal weights, as the
  code does; ``unweighted=False`` keeps FedAvg's sample-weighted average (then DynaFed
  before round ``L`` is FedAvg exactly).
* ``preset="cpu"`` (default) shortens the synthesis to ``iterations=300``,
  ``syn_steps=10``; ``preset="paper"`` is ``iterations=3000``, ``syn_steps=20``. Setting
  ``iterations`` or ``syn_steps`` explicitly overrides the preset.
* The matching uses the model's parameters; buffers (BatchNorm statistics) come from the
  start model and the student runs in training mode, like the code's ``ReparamModule``.
* ``k`` is drawn from ``U{min(least_ave_num, expert_epochs) .. expert_epochs}`` (the
  code's ``max_ave_num=10`` caps at ``expert_epochs``); the ``min`` only matters for
  ``expert_epochs=1``, where the code would crash.
* DSA on 1-D inputs (mnist1d) uses the 1-D strategy ``scale_shift_noise_stretch`` (see
  :mod:`fldistill.augment`); images use the code's ``color_crop_cutout_flip_scale_rotate``
  with one random group per call (the code's ``aug_mode='S'``).
* Clients train with ``config.local`` (this library's SGD), not the code's Adam lr 1e-3,
  so that DynaFed and FedAvg share their client side.
* The trajectory is not recorded after synthesis (the code keeps recording into an
  unused list).

All randomness is keyed: synthesis by ``(seed, "dynafed", "synth")``, the fine-tune of
round ``t`` by ``(seed, "dynafed", "finetune", t)``; a resumed run equals an uninterrupted
one.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch.func import functional_call

from fldistill.augment import DSA
from fldistill.engine.training import ModelState, get_state, set_state
from fldistill.errors import TrainingDiverged
from fldistill.ledger import Payload
from fldistill.methods import register
from fldistill.methods.base import RunContext
from fldistill.methods.fedavg import FedAvg
from fldistill.methods.params import DynaFedParams
from fldistill.seeding import np_rng, torch_gen


def kd_loss(output: torch.Tensor, y_logits: torch.Tensor) -> torch.Tensor:
    """DynaFed's soft-label loss: mean over batch AND classes of ``-softmax(y) * log_softmax(o)``."""
    return torch.mean(-F.softmax(y_logits, dim=1) * F.log_softmax(output, dim=1))


def _has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@register
class DynaFed(FedAvg):
    """FedAvg plus one-off server-side trajectory-matching synthesis and per-round fine-tuning."""

    name = "dynafed"

    def __init__(self, ctx: RunContext, params: BaseModel) -> None:
        super().__init__(ctx, params)
        self.p: DynaFedParams = params  # type: ignore[assignment]
        shape = tuple(self.fed.input_shape)
        self.augment = DSA(shape, self.p.dsa_strategy, self.p.dsa_mode) if self.p.dsa else None
        self.traj = self.new_bank("traj", self.global_state, rows=0)  # w_0, w_1, ... (grows each round)
        self.traj.append(self.global_state)
        self.synthesised = False
        self.syn_x: torch.Tensor | None = None
        self.syn_y: torch.Tensor | None = None
        self.syn_lr: torch.Tensor | None = None
        self.synthesis_info: dict[str, Any] = {}

    # -- aggregation -------------------------------------------------------------------
    def average(self, replies: dict[int, Payload], prefix: str = "model", *, uniform: bool = False) -> ModelState:
        """Equal-weight mean of the replies (the code) or FedAvg's sample-weighted mean."""
        return super().average(replies, prefix, uniform=uniform or self.p.unweighted)

    # -- the round ---------------------------------------------------------------------
    def round(self, t: int) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if not self.synthesised and len(self.traj) >= self.p.L:
            extra = self.synthesise()
        out = super().round(t)  # FedAvg: sample, local training, averaging
        out.update(extra)
        if self.synthesised:
            out["finetune_loss"] = self.finetune(t)
        else:
            self.traj.append(self.global_state)
        out["synthesised"] = int(self.synthesised)
        return out

    # -- synthesis (trajectory matching) -----------------------------------------------
    def synthesise(self) -> dict[str, Any]:
        """Learn the synthetic set from ``self.traj``; returns the round's extra metrics."""
        p, model = self.p, self.ctx.model
        t0 = time.perf_counter()
        dev = self.fed.x.device
        n_cls = self.fed.n_classes
        n = n_cls * p.ipc
        names = [k for k, _ in model.named_parameters()]
        buf_names = [k for k, _ in model.named_buffers()]
        gen = torch_gen(self.cfg.seed, "dynafed", "synth")  # CPU: the same draws on every device
        rng = np_rng(self.cfg.seed, "dynafed", "synth")

        x_syn = torch.randn((n, *self.fed.input_shape), generator=gen).to(dev).requires_grad_(True)
        labels = torch.arange(n_cls).repeat_interleave(p.ipc)
        y_syn = (F.one_hot(labels, n_cls).float() * p.label_init).to(dev).requires_grad_(True)
        syn_lr = torch.tensor(float(p.lr_teacher), device=dev).requires_grad_(True)
        opt_x = torch.optim.Adam([x_syn], lr=p.lr_img)
        opt_y = torch.optim.Adam([y_syn], lr=p.lr_label)
        opt_lr = torch.optim.Adam([syn_lr], lr=p.lr_lr)

        traj = [self.traj.get(i) for i in range(len(self.traj))]
        max_start = min(p.max_start_epoch, len(traj) - 1 - p.expert_epochs)
        k_lo, k_hi = min(p.least_ave_num, p.expert_epochs), p.expert_epochs
        batch = min(p.batch_syn or n, n)
        iters, steps = p.n_iterations, p.n_syn_steps
        advance = self.ctx.progress("dynafed synthesis", iters)
        was_training = model.training
        model.train()
        first = last = float("nan")
        try:
            for it in range(iters):
                s = int(rng.integers(0, max_start + 1))
                if p.weight_averaging:
                    k = int(rng.integers(k_lo, k_hi + 1))
                    picks = rng.integers(s + 1, s + p.expert_epochs + 1, size=k).tolist()
                else:
                    picks = [s + p.expert_epochs]
                start = {k_: traj[s][k_] for k_ in names}
                target = {k_: torch.stack([traj[i][k_] for i in picks]).mean(0) for k_ in names}
                buffers = {b: traj[s][b].clone() for b in buf_names}
                theta = [start[k_].detach().clone().requires_grad_(True) for k_ in names]
                order: list[torch.Tensor] = []
                for _ in range(steps):
                    if batch >= n:
                        idx = None
                    else:
                        if not order:
                            order = list(torch.randperm(n, generator=gen).to(dev).split(batch))
                        idx = order.pop()
                    xb = x_syn if idx is None else x_syn[idx]
                    yb = y_syn if idx is None else y_syn[idx]
                    if self.augment is not None:
                        xb = self.augment(xb, gen)
                    out = functional_call(model, {**dict(zip(names, theta)), **buffers}, (xb,))
                    grads = torch.autograd.grad(kd_loss(out, yb), theta, create_graph=True)
                    theta = [w - syn_lr * g for w, g in zip(theta, grads)]
                zero = torch.zeros((), device=dev)
                num = sum((((w - target[k_]) ** 2).sum() for w, k_ in zip(theta, names)), zero)
                den = sum((((start[k_] - target[k_]) ** 2).sum() for k_ in names), zero)
                loss = num / torch.clamp(den, min=1e-12)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"dynafed synthesis: the matching loss became {float(loss)} at iteration {it}; "
                        f"lower params.lr_img (now {p.lr_img}) or params.lr_teacher (now {p.lr_teacher})"
                    )
                opt_x.zero_grad(set_to_none=True)
                opt_y.zero_grad(set_to_none=True)
                opt_lr.zero_grad(set_to_none=True)
                loss.backward()
                opt_x.step()
                opt_lr.step()
                opt_y.step()
                last = float(loss.detach())
                if it == 0:
                    first = last
                advance(1)
        finally:
            model.train(was_training)
        self.syn_x, self.syn_y, self.syn_lr = x_syn.detach(), y_syn.detach(), syn_lr.detach()
        self.synthesised = True
        self.traj.clear()  # stop recording, free the copies
        self.synthesis_info = {
            "synthesis_s": round(time.perf_counter() - t0, 4),
            "synthesis_loss": last,
            "synthesis_loss_first": first,
            "syn_lr": float(self.syn_lr),
            "synthesis_iterations": iters,
        }
        return dict(self.synthesis_info)

    # -- server fine-tune ----------------------------------------------------------------
    def finetune(self, t: int) -> float:
        """Fine-tune the aggregated global model on the synthetic set; returns the mean loss."""
        assert self.syn_x is not None and self.syn_y is not None
        p, model = self.p, self.ctx.model
        x, y = self.syn_x, self.syn_y
        n, b = len(x), min(p.finetune_batch, len(x))
        gen = torch_gen(self.cfg.seed, "dynafed", "finetune", t)
        set_state(model, self.global_state)
        model.train()
        if _has_batchnorm(model) and p.bn_refresh_passes:
            with torch.no_grad():
                for _ in range(p.bn_refresh_passes):
                    for idx in torch.randperm(n, generator=gen).to(x.device).split(b):
                        model(x[idx])
        opt = torch.optim.Adam(model.parameters(), lr=p.finetune_lr)
        total, steps = 0.0, 0
        for _ in range(p.finetune_epochs):
            for idx in torch.randperm(n, generator=gen).to(x.device).split(b):
                xb = x[idx]
                if self.augment is not None:
                    xb = self.augment(xb, gen)
                loss = kd_loss(model(xb), y[idx])
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"dynafed fine-tune (round {t}): the loss became {float(loss)}; lower params.finetune_lr (now {p.finetune_lr})"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach())
                steps += 1
        self.global_state = get_state(model)
        return total / max(steps, 1)

    # -- reporting / checkpoint ----------------------------------------------------------
    def summary_extra(self) -> dict[str, Any]:
        return {"synthesised": self.synthesised, **self.synthesis_info}

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, meta = super().state_dict()
        if self.synthesised:
            assert self.syn_x is not None and self.syn_y is not None and self.syn_lr is not None
            tensors.update({"syn/x": self.syn_x, "syn/y": self.syn_y, "syn/lr": self.syn_lr.reshape(1)})
        meta.update(
            synthesised=self.synthesised,
            synthesis_info=self.synthesis_info,
        )
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        super().load_state_dict(tensors, meta)
        self.synthesised = bool(meta["synthesised"])
        self.synthesis_info = dict(meta.get("synthesis_info", {}))
        if self.synthesised:
            self.syn_x, self.syn_y = tensors["syn/x"].clone(), tensors["syn/y"].clone()
            self.syn_lr = tensors["syn/lr"].reshape(()).clone()
        else:
            self.syn_x = self.syn_y = self.syn_lr = None
