"""FedFTG (Zhang, Shen, Ding, Tao, Duan, CVPR 2022; code ``ZhangLin-PKU/FedFTG``): the FedAvg
model fine-tuned on the server, data-free, by a generator and the round's client models.

Written from ``../shared/spec/methods.md`` §7.2. One round:

1. the sampled clients train from the global model (plain local SGD) and upload their
   models and label counts ``n_k^y`` (``C`` values each, priced as floats);
2. the server averages them (``w̄``, FedAvg);
3. it fine-tunes ``w̄`` with the shared data-free block
   (:func:`fldistill.distill.datafree.server_distill`): ``iterations`` times, labels split
   in proportion to ``sum_k n_k^y`` ("customised label sampling"), one Adam step of the
   input-space generator per client model (fidelity CE weighted by ``a_k^y = n_k^y /
   sum_j n_j^y``, minus the hard-sample L1 gap to the student, plus the diversity term
   / K), then ``student_steps`` SGD steps of the student on the class-level ensemble's
   soft targets; both learning rates decay by ``lr_decay`` per round, as in the code.

The generator (:class:`~fldistill.models.generator.InputGenerator`, FedFTG's
``CGeneratorA`` shape) persists across rounds in a 1-row bank; its Adam is created per
round. It never leaves the server: the ledger is FedAvg's plus ``C`` values up per client.

``distill_weight = 0`` multiplies the student's loss by 0: the generator still trains, the
student's parameters never move and FedFTG is FedAvg exactly (tested; models with batch
norm would still update its running statistics on the synthetic batches).

Readings: the student loss is the code's ``mean(-log_softmax(s) * q)``, a mean over the
batch *and* the classes (soft cross-entropy / C); the labels and noise of an iteration are
reused by its student steps (the generator frozen in eval mode), as in the code.
``accuracy`` is the fine-tuned model's, ``avg_accuracy`` that of ``w̄`` before it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel

from fldistill.distill.datafree import GeneratorLoss, LoopConfig, server_distill
from fldistill.engine.training import ModelState
from fldistill.ledger import Payload
from fldistill.methods import register
from fldistill.methods.base import RunContext
from fldistill.methods.fedavg import FedAvg
from fldistill.methods.params import FedFTGParams, LabelMode, WeightMode
from fldistill.models.generator import InputGenerator
from fldistill.seeding import seed_for, seeded_build, torch_gen


@register
class FedFTG(FedAvg):
    name = "fedftg"
    params: FedFTGParams

    def __init__(self, ctx: RunContext, params: BaseModel) -> None:
        super().__init__(ctx, params)
        p = self.params
        shape = tuple(int(s) for s in ctx.model.input_shape)  # type: ignore[union-attr]
        seed = seed_for(self.cfg.seed, self.name, "generator-init")
        gen = seeded_build(seed, lambda: InputGenerator(shape, self.fed.n_classes, p.noise_dim, p.gen_width))
        self.generator = gen.to(self.fed.x.device)
        self.generators = self.new_bank("generator", self.generator.state_dict(), rows=1, fill="template")
        self.averaged: ModelState | None = None  # this round's w̄, before the fine-tuning

    def request_meta(self, t: int) -> dict[str, Any]:
        return {"histogram": True}

    def distill(
        self, t: int, student: ModelState, teachers: list[ModelState], counts: np.ndarray, labels: LabelMode, weights: WeightMode
    ) -> tuple[ModelState, dict[str, float]]:
        """Distil ``student`` from ``teachers`` (label counts ``counts`` ``(K, C)``) with the persistent generator."""
        p = self.params
        decay = p.lr_decay ** (t - 1)
        cfg = LoopConfig(
            iterations=p.iterations,
            update=p.update,
            gen_lr=p.gen_lr * decay,
            student_steps=p.student_steps,
            student_lr=p.student_lr * decay,
            student_weight=p.distill_weight,
        )
        spec = GeneratorLoss(fidelity="per_teacher", w_fidelity=p.w_fidelity, w_hard=p.w_hard, diversity="exp", w_div=p.w_div)
        self.generator.load_state_dict(self.generators.get(0))  # the bank is the truth (a resumed run)
        gen = torch_gen(self.cfg.seed, self.name, "distill", t)
        bar = self.ctx.progress(f"round {t}: data-free distillation", p.iterations)
        state, out = server_distill(
            self.ctx.model, student, teachers, counts, self.generator,
            loss=spec, cfg=cfg, batch=p.batch, noise_dim=p.noise_dim, gen=gen, labels=labels, weights=weights, progress=bar,
        )  # fmt: skip
        self.generators.set(0, self.generator.state_dict())
        return state, out

    def aggregate(self, t: int, replies: dict[int, Payload]) -> None:
        self._metrics: dict[str, Any] = {}
        if not replies:
            return
        avg = self.average(replies)
        self.averaged = avg
        if self.params.iterations == 0:
            self.set_global(avg)
            return
        ids = sorted(replies)
        counts = np.stack([replies[c].tensors["hist"].double().cpu().numpy() for c in ids])
        teachers = [replies[c].get_state("model") for c in ids]
        state, self._metrics = self.distill(t, avg, teachers, counts, self.params.labels, self.params.weights)
        self.set_global(state)

    def after_replies(self, t: int, replies: dict[int, Payload]) -> dict[str, Any]:
        return dict(getattr(self, "_metrics", {}))

    def eval_states(self) -> dict[str, ModelState]:
        out = {"": self.global_state}
        if self.averaged is not None:
            out["avg"] = self.averaged
        return out

    def summary_extra(self) -> dict[str, Any]:
        return {"generator_parameters": sum(q.numel() for q in self.generator.parameters())}
