"""FedGen (Zhu, Hong, Zhou, ICML 2021): data-free knowledge distillation through a latent generator.

Written from ``../shared/spec/methods.md`` §7.1, which follows the official code
(``zhuangdizhu/FedGen``: ``serverpFedGen.py``, ``userpFedGen.py``, ``generator.py``,
``utils/model_config.py``, mnist config).

The server keeps the global model θ (FedAvg) and a conditional generator
``G(ε, y) = FC(ReLU(BN(FC([ε; onehot(y)]))))`` (:class:`~fldistill.models.generator.LatentGenerator`,
``ε ~ U(0, 1)^noise_dim``) whose output is a *latent feature*: the input of the model's
head ``model.classifier`` (FedGen's ``latent_layer_idx = -1``). One round ``t``:

1. sample S_t (the seeded stream every method shares); send θ and G to each participant;
2. each participant trains from θ on

   ``CE(f(x), y) + (B_gen/B) α_t CE(h(G(ε̂, ŷ)), ŷ) + β_t KL(log_softmax(f(x)) ‖ softmax(h(G(ε, y))).detach())``

   with G frozen (eval mode: BN uses its running statistics), ``h`` the client's current
   head, ŷ ``client_gen_batch`` labels drawn uniformly, the KL term on generated latents
   *of the real batch's labels* (``KLDivLoss(batchmean)``), and
   ``α_t = max(min(1e-4, α_0), α_0 · 0.98^(t-1))``, β_t likewise; it uploads its model and
   its label histogram ``n_k^y`` (``C`` floats);
3. the server averages the models (FedAvg, sample-weighted as in the code);
4. it fits G to the participants' uploaded heads (teachers) for ``gen_steps`` Adam steps
   (lr ``gen_lr · gen_lr_decay^(t-1)``, weight decay ``gen_weight_decay``), labels drawn
   uniformly from the labels some participant holds, on
   ``α Σ_k mean_i(w_k^{y_i} CE(h_k(G(ε_i, y_i)), y_i)) + η L_div`` with
   ``w_k^y = n_k^y / Σ_{j∈S_t} n_j^y`` and FedGen's ``L_div = exp(-mean_ij(‖ε_i-ε_j‖²/d ·
   mean|G_i-G_j|))``; the mnist config has β = 0, so there is no student term. The loop is
   the shared data-free block (:func:`~fldistill.distill.datafree.datafree_loop`, one
   joint step over all teachers per iteration, no student steps).

Readings and deviations from the code (see docs/methods.md):

- **Round 1 is unregularised**, as in the code (``regularization = glob_iter > 0``: "perform
  regularization using generated samples after the first communication round"): the
  untrained generator's terms are computed but weighted 0; ``α_t``/``β_t`` apply from
  round 2 with the decay counted from round 1 (the code's ``0.98^glob_iter``).
- ŷ is uniform over **all classes**: the code's ``available_labels`` is the union of every
  user's labels (``aggregate_user_data``), i.e. the dataset's classes, not the client's own.
- The code regularises only the first ``early_stop = 20`` local epochs; with its mnist
  setting (20 local epochs) that is all of them, and here every local step is regularised.
- Label weights and qualified labels: the code counts the labels of the batches each user
  drew this round, starting every count at 1 (``clean_up_counts``), and qualifies a label
  when some user's count exceeds 1 (saw it at least once). Here the counts are the
  clients' label histograms ``n_k^y`` (the paper's ``w_k^y``), and a label qualifies when
  some participant holds it.
- The code's per-teacher fidelity multiplies a ``(B,)`` loss by a ``(B, 1)`` weight, which
  broadcasts to ``(B, B)``: its mean is ``mean(CE) · mean(w)``, not ``mean(w · CE)``. We
  use the paper's per-sample product ``mean_i(w_k^{y_i} CE_i)`` (the shared block's
  ``per_teacher`` fidelity).
- The code keeps one Adam (and an ExponentialLR of 0.98 per round) for the whole run; here
  the generator gets a fresh Adam every round (the shared block's loop) at the decayed
  learning rate, so Adam's moments restart each round.
- Random draws come from seeded per-round streams: the server's from
  ``("fedgen", "generator", t)`` (on the CPU, so any device draws the same numbers), each
  client's from its objective stream; the KL term's ``G(ε_i, y_i)`` is read from a table
  ``G(ε_i, c)`` over all classes ``c`` drawn before the step (the loss never sees the
  generator module, so the vectorised engine batches the clients).
- Local training defaults are the code's mnist run (README: ``--batch_size 32
  --local_epochs 20 --learning_rate 0.01``, ``K = 1``; its ``pFedIBOptimizer`` is plain SGD): 20
  steps of 32 samples at lr 0.01 without momentum. FedAvg's mnist1d defaults (2 epochs at
  lr 0.15, momentum 0.9) with the α_g = 10 term leave FedGen at chance under
  ``dirichlet:0.1`` (and FedAvg itself diverges there). The code's client lr decay
  (ExponentialLR 0.99 per round) is not reproduced: the local lr is constant.

Ledger per round and participant: down θ and G (each priced as a seed while it is the
seeded initial one, with ``ledger.init_model_free``: round 1 is free), up θ and the label
histogram (``C`` values, ``Kind.FLOAT``).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel

from fldistill.distill.datafree import GeneratorLoss, LoopConfig, Teachers, class_weights, datafree_loop, uniform_labels
from fldistill.engine.training import ModelState, Net, Objective, objective
from fldistill.ledger import Payload
from fldistill.methods import register
from fldistill.methods.base import RunContext
from fldistill.methods.fedavg import FedAvg
from fldistill.methods.params import FedGenParams
from fldistill.models.generator import LatentGenerator
from fldistill.seeding import seed_for, seeded_build, torch_gen


def build_generator(model: torch.nn.Module, args: dict[str, Any]) -> LatentGenerator:
    """The generator for the worker ``model``'s feature shape and classes."""
    shape, n_classes = cast(tuple[int, ...], model.feature_shape), cast(int, model.n_classes)
    return LatentGenerator(tuple(shape), int(n_classes), int(args["noise_dim"]), int(args["gen_hidden"]))


def regulariser_weight(init: float, decay: float, t: int) -> float:
    """``α_t`` (or ``β_t``) of round ``t`` (1-based): 0 in round 1, then ``max(min(1e-4, init), init · decay^(t-1))``.

    The code's ``exp_lr_scheduler(glob_iter)`` with ``glob_iter = t - 1``; its floor is
    1e-4, lowered to ``init`` so that ``init = 0`` switches the term off.
    """
    if t <= 1:
        return 0.0
    return max(min(1e-4, init), init * decay ** (t - 1))


@objective("fedgen")
def _fedgen(
    args: dict[str, Any], ref: ModelState, model: torch.nn.Module, tensors: dict[str, torch.Tensor], gen: torch.Generator
) -> Objective:
    """FedGen's local loss; the frozen generator is the ``gen.*`` request tensors."""
    alpha_g, beta_g, ratio = float(args["alpha_g"]), float(args["beta_g"]), float(args["gen_ratio"])
    n_classes, noise_dim, gen_batch = int(cast(int, model.n_classes)), int(args["noise_dim"]), int(args["gen_batch"])
    shape = tuple(int(s) for s in cast(tuple[int, ...], model.feature_shape))
    g_state = {k[len("gen."):]: v for k, v in tensors.items() if k.startswith("gen.")}
    device = next(iter(g_state.values())).device
    generator = build_generator(model, args).to(device)
    generator.load_state_dict(g_state)
    generator.eval()  # frozen: BN uses its running statistics, as the code's generative_model.eval()
    classes = torch.arange(n_classes, device=device)

    def sample(b: int) -> dict[str, torch.Tensor]:
        y_hat = torch.randint(0, n_classes, (gen_batch,), generator=gen, device=gen.device).to(device)
        eps_hat = torch.rand(gen_batch, noise_dim, generator=gen, device=gen.device).to(device)
        eps = torch.rand(b, noise_dim, generator=gen, device=gen.device).to(device)
        with torch.no_grad():
            h_hat = generator(eps_hat, y_hat)
            # G(eps_i, c) for every class c; the loss picks c = y_i, the real batch's label
            table = generator(eps.repeat_interleave(n_classes, 0), classes.repeat(b)).reshape(b, n_classes, -1)
        return {"gen_h": h_hat, "gen_y": y_hat, "kl_table": table}

    def loss(net: Net, x: torch.Tensor, y: torch.Tensor, inp: dict[str, torch.Tensor]) -> torch.Tensor:
        s = net.logits(x)
        # Every term is computed also at weight 0 (round 1, alpha_g = beta_g = 0), so that
        # "no regulariser is FedAvg" checks this code path.
        gen_ce = F.cross_entropy(net.head(inp["gen_h"]), inp["gen_y"])
        table = inp["kl_table"]
        h = torch.gather(table, 1, y.reshape(-1, 1, 1).expand(-1, 1, table.shape[-1])).reshape(len(y), *shape)
        target = F.softmax(net.head(h), 1).detach()
        kl = F.kl_div(F.log_softmax(s, 1), target, reduction="batchmean")
        return F.cross_entropy(s, y) + ratio * alpha_g * gen_ce + beta_g * kl

    return Objective("fedgen", loss, sample=sample)


@register
class FedGen(FedAvg):
    name = "fedgen"
    params: FedGenParams

    def __init__(self, ctx: RunContext, params: BaseModel) -> None:
        super().__init__(ctx, params)
        p = self.params
        self.gen_args = {"noise_dim": p.noise_dim, "gen_hidden": p.gen_hidden}
        seed = seed_for(self.cfg.seed, "fedgen", "generator-init")
        self.generator = seeded_build(seed, lambda: build_generator(ctx.model, self.gen_args)).to(self.fed.x.device)
        # version 0 = derivable from the seed (free to send)
        self.generators = self.new_bank("generator", self.generator.state_dict(), rows=1, fill="template")

    def weights(self, t: int) -> tuple[float, float]:
        """``(α_t, β_t)`` of the clients' regulariser in round ``t``."""
        p = self.params
        return regulariser_weight(p.alpha_g, p.reg_decay, t), regulariser_weight(p.beta_g, p.reg_decay, t)

    # -- protocol --------------------------------------------------------------------------
    def objective(self) -> tuple[str, dict[str, Any]]:
        # the round's weights are set in requests(); objective() has no round
        return "fedgen", {}

    def request_meta(self, t: int) -> dict[str, Any]:
        return {"histogram": True}  # the reply carries the client's label counts (C floats)

    def requests(self, t: int, clients: list[int], base: Payload) -> dict[int, Payload]:
        p = self.params
        a, b = self.weights(t)
        args = {
            "alpha_g": a,
            "beta_g": b,
            "gen_ratio": p.client_gen_batch / self.cfg.local.batch_size,
            "gen_batch": p.client_gen_batch,
            **self.gen_args,
        }
        req = base.with_meta(objective_args=args)
        req.put_state("gen", self.generators.get(0), self.generators.kind(0, self.cfg.ledger.init_model_free))
        return {c: req for c in clients}

    def after_replies(self, t: int, replies: dict[int, Payload]) -> dict[str, Any]:
        a, b = self.weights(t)
        ids = sorted(replies)
        if not ids:
            return {"alpha_g": a, "beta_g": b}
        states = [replies[c].get_state("model") for c in ids]
        counts = np.stack([replies[c].tensors["hist"].detach().cpu().numpy() for c in ids]).astype(np.float64)
        return {"alpha_g": a, "beta_g": b, **self.train_generator(t, states, counts)}

    def train_generator(self, t: int, states: list[ModelState], counts: np.ndarray) -> dict[str, float]:
        """Fit the generator to the participants' frozen heads with FedGen's server loss.

        Parameters
        ----------
        t : int
            The round (1-based): seeds the draws and decays the learning rate.
        states : list of ModelState
            The participants' uploaded models (their ``classifier.*`` entries are the teachers).
        counts : array (K, C)
            Their label histograms.
        """
        prm = self.params
        if prm.gen_steps == 0:
            return {}
        dev = self.fed.x.device
        teachers = Teachers.heads(self.ctx.model, states)
        qualified = [int(c) for c in np.flatnonzero(counts.sum(0) > 0)]  # held by some participant
        g = torch_gen(self.cfg.seed, "fedgen", "generator", t)  # CPU: the same draws on any device
        b = prm.gen_batch

        def sampler(it: int) -> tuple[torch.Tensor, torch.Tensor]:
            y = uniform_labels(qualified, b, g)
            eps = torch.rand(b, prm.noise_dim, generator=g)
            return eps.to(dev), y.to(dev)

        gen = self.generator
        gen.load_state_dict(self.generators.get(0))  # the bank is the truth (a resumed run)
        cfg = LoopConfig(
            iterations=prm.gen_steps,
            update="joint",
            gen_lr=prm.gen_lr * prm.gen_lr_decay ** (t - 1),
            gen_weight_decay=prm.gen_weight_decay,
            student_steps=0,
        )
        spec = GeneratorLoss(fidelity="per_teacher", w_fidelity=prm.alpha, diversity="exp", w_div=prm.eta)
        alpha = class_weights(counts).to(dev)  # (K, C): w_k^y
        bar = self.ctx.progress(f"round {t}: generator", cfg.iterations)
        out = datafree_loop(gen, teachers, alpha, sampler, spec, cfg, progress=bar)
        self.generators.set(0, gen.state_dict())
        # means over the last 10% of the steps; timings end in _s (left out of comparisons)
        return {"gen_fidelity": out["gen_fidelity"], "gen_div": out["gen_div"], "generator_s": out["distill_s"]}

    def summary_extra(self) -> dict[str, Any]:
        return {"generator_parameters": sum(p.numel() for p in self.generator.parameters())}
