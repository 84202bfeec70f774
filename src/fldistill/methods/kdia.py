"""KDIA (Xing Ma, arXiv 2506.20431; seed 003): teacher/student inequitable aggregation.

Written from ``../shared/spec/methods.md`` §1, which follows the official code.

Server state: the *student* θ_g (data-weighted average of the round's participants), the
*teacher* θ_T (a weighted average over **all** clients' latest uploads, kept in a bank),
the conditional feature generator θ_gen, and per-client participation counts and last
rounds. One round t:

1. sample S_t (the seeded stream every method shares); ``cnt[k] += 1``, ``last[k] = t``;
2. send θ_g, θ_T and θ_gen to each participant (ledger: all three on the downlink);
3. each participant trains from θ_g on
   ``CE(f(x), y) + λ_kd KL(student ‖ teacher; τ) + λ_gen CE(f^C(G(ε, ỹ)), ỹ)``
   with the teacher and generator frozen and ỹ uniform over the classes;
4. the server stores the uploads in the bank, averages the student
   (``p_k = n_k / Σ_{S_t} n_j``) and the teacher over all N clients with
   ``F_k ∝ (F^num_k F^part_k F^intv_k)^(1/3)``: data share, participation share
   ``cnt[k]/P`` and recency ``softmax_k(−(t − last[k]))``;
5. it trains the generator (fresh Adam each round) so that the participants' frozen heads,
   logit-averaged with ``p_k``, classify ``G(z, y)`` as ``y``, plus the mode-seeking
   diversity term ``1/(d + 1e-5)``;
6. both the student and the teacher are evaluated.

Readings and deviations (see docs/methods.md):

- KL direction: the code's ``kl_div(log_softmax(t/τ), softmax(s/τ))`` is KL(student ‖
  teacher) and is the default (``kl_direction="reverse"``); the figure's KL(teacher ‖
  student) is ``"forward"``. No τ² factor, ``batchmean``, as in the code.
- Labels of generated features are drawn i.i.d. uniform per step from the client's seeded
  stream; the code draws a per-round pool of the same distribution and reshuffles it.
- The reported model (``accuracy``) is the teacher, whose curve the paper plots as KDIA;
  ``student_accuracy`` and ``teacher_accuracy`` are both logged every round
  (``params.report`` switches the primary).
- In round 1 the teacher is the initial model and the generator is untrained; both are
  used anyway, as in the code. Both are derivable from the run seed then, so, like the
  initial model, they are priced as seeds when ``ledger.init_model_free``.
- The bank holds every client's latest model as one float32 matrix ``N x |θ|`` (clients
  that never took part keep the initial model, with teacher weight 0): N=1000 costs
  ``4000 |θ|`` bytes, 20.8 MB for mnist1d_cnn and 370 MB for KDIA's CNN.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel

from fldistill.distill.datafree import GeneratorLoss, LoopConfig, Teachers, datafree_loop
from fldistill.engine.training import ModelState, Net, Objective, frozen_forward, objective
from fldistill.ledger import Payload
from fldistill.methods import register
from fldistill.methods.base import RunContext
from fldistill.methods.fedavg import FedAvg
from fldistill.methods.params import KDIAParams
from fldistill.models.generator import FeatureGenerator
from fldistill.seeding import seed_for, seeded_build, torch_gen


def kl_term(s: torch.Tensor, t: torch.Tensor, tau: float, direction: str) -> torch.Tensor:
    """``KL(student ‖ teacher)`` (reverse, the code) or ``KL(teacher ‖ student)`` at ``tau``, batch mean."""
    ls, lt = F.log_softmax(s / tau, 1), F.log_softmax(t / tau, 1)
    if direction == "reverse":
        return (ls.exp() * (ls - lt)).sum(1).mean()
    return (lt.exp() * (lt - ls)).sum(1).mean()


def build_generator(model: torch.nn.Module, args: dict[str, Any]) -> FeatureGenerator:
    """The generator for the worker ``model``'s feature shape and classes."""
    shape, n_classes = cast(tuple[int, ...], model.feature_shape), cast(int, model.n_classes)
    return FeatureGenerator(tuple(shape), int(n_classes), int(args["noise_dim"]), int(args["gen_hidden"]))


@objective("kdia")
def _kdia(
    args: dict[str, Any], ref: ModelState, model: torch.nn.Module, tensors: dict[str, torch.Tensor], gen: torch.Generator
) -> Objective:
    """KDIA's local loss; the teacher is the ``teacher.*`` tensors, the generator ``gen.*``."""
    lam_kd, lam_gen = float(args["lambda_kd"]), float(args["lambda_gen"])
    tau, direction = float(args["temperature"]), str(args["direction"])
    n_classes, noise_dim = int(cast(int, model.n_classes)), int(args["noise_dim"])
    teacher_keys = [k[len("teacher."):] for k in tensors if k.startswith("teacher.")]
    g_state = {k[len("gen."):]: v for k, v in tensors.items() if k.startswith("gen.")}
    device = next(iter(g_state.values())).device
    generator = build_generator(model, args).to(device)
    generator.load_state_dict(g_state)
    generator.eval()  # frozen: BN uses its running statistics

    def sample(b: int) -> dict[str, torch.Tensor]:
        yg = torch.randint(0, n_classes, (b,), generator=gen, device=gen.device).to(device)
        z = torch.randn(b, noise_dim, generator=gen, device=gen.device).to(device)
        with torch.no_grad():
            return {"gen_h": generator(z, yg), "gen_y": yg}

    def loss(net: Net, x: torch.Tensor, y: torch.Tensor, inp: dict[str, torch.Tensor]) -> torch.Tensor:
        s = net.logits(x)
        t = frozen_forward(model, {k: inp["teacher." + k] for k in teacher_keys}, x)
        # Every term is computed also at weight 0, so that "λ_kd = λ_gen = 0 is FedAvg"
        # checks this code path; the generated features bypass the extractor.
        gen_ce = F.cross_entropy(net.head(inp["gen_h"]), inp["gen_y"])
        return F.cross_entropy(s, y) + lam_kd * kl_term(s, t, tau, direction) + lam_gen * gen_ce

    inputs = {k: v.detach() for k, v in tensors.items() if k.startswith("teacher.")}
    return Objective("kdia", loss, inputs=inputs, sample=sample)


def teacher_weights(n: np.ndarray, cnt: np.ndarray, last: np.ndarray, t: int) -> np.ndarray:
    """KDIA's "three frequencies" teacher weights over all clients.

    Parameters
    ----------
    n : array (N,)
        Local sample counts.
    cnt : array (N,)
        Participation counts, including round ``t``.
    last : array (N,)
        Last round each client took part (``-1``: never), including round ``t``.
    t : int
        The current round, 0-based as in the code (the recency normaliser depends on it
        through the never-participated clients' ``last = -1``).

    Returns
    -------
    array (N,)
        ``F_k = g_k / Σ g_j`` with ``g_k = (n_k/Σn · cnt_k/Σcnt · softmax(−(t−last))_k)^(1/3)``;
        0 for clients that never participated.
    """
    n, cnt, last = (np.asarray(a, dtype=np.float64) for a in (n, cnt, last))
    f_num = n / n.sum()
    f_part = cnt / max(cnt.sum(), 1.0)
    e = np.exp(-(t - last))
    f_int = e / e.sum()
    g = np.cbrt(f_num * f_part * f_int)
    return g / g.sum()


@register
class KDIA(FedAvg):
    name = "kdia"
    params: KDIAParams

    def __init__(self, ctx: RunContext, params: BaseModel) -> None:
        super().__init__(ctx, params)
        p = self.params
        self.gen_args = {"noise_dim": p.noise_dim, "gen_hidden": p.gen_hidden}
        seed = seed_for(self.cfg.seed, "kdia", "generator-init")
        self.generator = seeded_build(seed, lambda: build_generator(ctx.model, self.gen_args)).to(self.fed.x.device)
        # Server models, one row each; version 0 = derivable from the seed (free to send).
        self.teachers = self.new_bank("teacher", ctx.init_state, rows=1, fill="template")
        self.generators = self.new_bank("generator", self.generator.state_dict(), rows=1, fill="template")
        # Every client's latest upload (floating entries only: integer buffers follow the
        # student), N x |θ| float32 on the CPU; clients that never took part hold the
        # initial model, with teacher weight 0.
        floats = {k: v for k, v in ctx.init_state.items() if v.is_floating_point()}
        self.uploads = self.new_bank("uploads", floats, fill="template", device="cpu")
        stats = {"cnt": torch.tensor(0, dtype=torch.int64), "last": torch.tensor(-1, dtype=torch.int64)}
        self.stats = self.new_bank("stats", stats, fill="template", device="cpu")
        self.sizes = self.fed.train_sizes()

    @property
    def teacher(self) -> ModelState:
        """The teacher θ_T."""
        return self.teachers.get(0)

    @property
    def cnt(self) -> np.ndarray:
        """Participation counts per client (a view of the bank)."""
        return self.stats.field("cnt").numpy()

    @property
    def last(self) -> np.ndarray:
        """Last round (0-based) each client took part, -1 if never (a view of the bank)."""
        return self.stats.field("last").numpy()

    # -- protocol --------------------------------------------------------------------------
    def objective(self) -> tuple[str, dict[str, Any]]:
        p = self.params
        return "kdia", {
            "lambda_kd": p.lambda_kd,
            "lambda_gen": p.lambda_gen,
            "temperature": p.temperature,
            "direction": p.kl_direction,
            **self.gen_args,
        }

    def requests(self, t: int, clients: list[int], base: Payload) -> dict[int, Payload]:
        free = self.cfg.ledger.init_model_free
        base = base.with_meta()
        base.put_state("teacher", self.teacher, self.teachers.kind(0, free))
        base.put_state("gen", self.generators.get(0), self.generators.kind(0, free))
        return {c: base for c in clients}

    def after_replies(self, t: int, replies: dict[int, Payload]) -> dict[str, Any]:
        """Bank, counts, teacher and generator after FedAvg's round has averaged the student."""
        ids = sorted(replies)
        if not ids:
            return {"participants": 0, "lost": len(self.sample_clients(t))}
        # Only clients whose reply arrived gain participation and recency: a lost one (a
        # runtime with faults) keeps its old bank entry. The code counts rounds from 0 and
        # the recency weights depend on it (see teacher_weights).
        t0 = t - 1
        cnt, last = self.cnt, self.last
        cnt[ids] += 1
        last[ids] = t0
        states = [replies[c].get_state("model") for c in ids]
        for c, st in zip(ids, states):
            self.uploads.set(c, st)
        n_rep = np.array([replies[c].meta["n"] for c in ids], dtype=np.float64)
        # Teacher: all clients, from the bank; float64 accumulation as in weighted_average.
        w = teacher_weights(self.sizes, cnt, last, t0)
        vec = (torch.from_numpy(w) @ self.uploads.matrix().double()).float().to(self.fed.x.device)
        self.teachers.set(0, {**self.global_state, **self.uploads.layout.unflatten(vec, torch.float32)})
        gen_stats = self.train_generator(t, states, n_rep / n_rep.sum())
        return {"participants": len(ids), "teacher_clients": int((w > 0).sum()), **gen_stats}

    def train_generator(self, t: int, states: list[ModelState], p: np.ndarray) -> dict[str, float]:
        """Fit the generator to the participants' frozen heads (logit average with weights ``p``).

        The shared data-free block (:func:`~fldistill.distill.datafree.datafree_loop`) with
        KDIA's loss: CE of the ``p``-weighted logit ensemble plus the mode-seeking
        diversity term, one joint step per iteration, no student; labels from a pool of
        ``gen_iters * gen_batch`` uniform labels reshuffled every epoch, as in the code.
        """
        prm = self.params
        if prm.gen_epochs == 0:
            return {}
        dev = self.fed.x.device
        teachers = Teachers.heads(self.ctx.model, states)
        g = torch_gen(self.cfg.seed, "kdia", "generator", t, device=dev)
        gen = self.generator
        gen.load_state_dict(self.generators.get(0))  # the bank is the truth (a resumed run)
        b, iters = prm.gen_batch, prm.gen_iters
        pool = torch.randint(0, self.fed.n_classes, (iters * b,), generator=g, device=dev)

        def sampler(it: int) -> tuple[torch.Tensor, torch.Tensor]:
            nonlocal pool
            if it % iters == 0:  # a new epoch: reshuffle the pool
                pool = pool[torch.randperm(len(pool), generator=g, device=dev)]
            y = pool[(it % iters) * b : (it % iters + 1) * b]
            return torch.randn(b, prm.noise_dim, generator=g, device=dev), y

        cfg = LoopConfig(
            iterations=prm.gen_epochs * iters,
            update="joint",
            gen_lr=prm.gen_lr,
            gen_weight_decay=prm.gen_weight_decay,
            student_steps=0,
            metrics_tail=iters,
        )
        spec = GeneratorLoss(fidelity="ensemble", diversity="ratio")
        weights = torch.as_tensor(p, dtype=torch.float32, device=dev)
        bar = self.ctx.progress(f"round {t}: generator", cfg.iterations)
        out = datafree_loop(gen, teachers, weights, sampler, spec, cfg, progress=bar)
        self.generators.set(0, gen.state_dict())
        # Metrics of the last epoch: the head-ensemble CE and the diversity ratio d.
        return {"gen_ce": out["gen_fidelity"], "gen_d": out["gen_d"], "generator_s": out["distill_s"]}

    def eval_states(self) -> dict[str, ModelState]:
        p = self.params
        teacher = self.teacher
        primary = teacher if p.report == "teacher" else self.global_state
        return {"": primary, "student": self.global_state, "teacher": teacher}

    def summary_extra(self) -> dict[str, Any]:
        bank = self.uploads.matrix()
        return {"bank_bytes": int(bank.numel() * bank.element_size()), "generator_parameters": self.generator_params()}

    def generator_params(self) -> int:
        """Number of generator parameters (the downlink also carries its BN statistics)."""
        return sum(p.numel() for p in self.generator.parameters())
