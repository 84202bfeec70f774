"""Data-free knowledge distillation with a conditional generator: the block FedFTG, DisUE,
FedGen and KDIA share (methods.md §7.1-7.2, §2.2, §1.2).

One loop, :func:`datafree_loop`, run ``iterations`` times:

1. draw labels ``y`` and noise ``z`` (a :data:`Sampler`, seeded by the caller);
2. **generator steps** against frozen teachers (:class:`Teachers`, ``K`` models of one
   architecture stacked and run as one ``vmap``): with ``update="sequential"`` one Adam
   step per teacher on that teacher's loss (FedFTG's code), with ``"joint"`` one step on
   the sum over teachers (one vectorised forward of all ``K``). The loss
   (:class:`GeneratorLoss`) adds

   - fidelity: ``sum_k mean_i a_k(y_i) CE(t_k(x_i), y_i)`` per teacher (FedFTG, FedGen,
     DisUE), or ``CE(sum_k a_k t_k(x), y)`` of the logit ensemble (KDIA);
   - hard samples: ``- sum_k mean_i a_k(y_i) mean_c |s(x_i)_c - t_k(x_i)_c|`` against the
     student ``s`` (FedFTG's adversarial term);
   - diversity: FedGen's ``exp(-mean_jk(mean_d (z_j - z_k)^2 * mean_d |x_j - x_k|))``, or
     KDIA's mode-seeking ``1 / (mean|x_a - x_b| / mean|z_a - z_b| + 1e-5)`` over the batch's
     two halves;

3. **student steps** (``student_steps`` per iteration, 0 for generator-only fitting): SGD
   on the soft cross-entropy ``mean_{i,c}(-log_softmax(s(x_i))_c q_i(c))`` to the
   ensemble target ``q_i = sum_k a_k(y_i) softmax(t_k(x_i))`` on the (frozen) generator's
   samples of the iteration, averaged over batch *and* classes as FedFTG's code does.

``a`` is ``(K,)`` (one weight per teacher) or ``(K, C)`` (per class: FedFTG's
class-level ensemble, DisUE's group weighting factors). Nothing here knows a method:
callers own the generator's state (a :class:`~fldistill.engine.state.StateBank` row), the
seeds and the schedules.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from fldistill.engine.training import ModelState, get_state, set_state
from fldistill.methods.params import LabelMode, WeightMode  # defined torch-free, with the parameters that choose them

Sampler = Callable[[int], tuple[Tensor, Tensor]]
"""``sampler(iteration) -> (z, y)``: the noise and labels of one iteration."""


class Teachers:
    """``K`` frozen models of one architecture, stacked; all ``K`` logits in one call.

    Parameters
    ----------
    module : nn.Module
        The architecture (its own parameters are not used). Run in eval mode: batch norm
        uses the teachers' running statistics.
    states : sequence of ModelState
        The teachers' states (same keys and shapes).
    """

    def __init__(self, module: nn.Module, states: Sequence[ModelState]) -> None:
        if not states:
            raise ValueError("Teachers needs at least one model")
        self.module, self.k = module, len(states)
        self.stacked = {name: torch.stack([s[name].detach() for s in states]) for name in states[0]}
        self._vmap = True

    @classmethod
    def heads(cls, model: nn.Module, states: Sequence[ModelState], submodule: str = "classifier") -> Teachers:
        """The ``submodule`` (a split model's head) of every state, as teachers of features."""
        head = model.get_submodule(submodule)
        names = list(dict(head.named_parameters()) | dict(head.named_buffers()))
        return cls(head, [{k: s[f"{submodule}.{k}"] for k in names} for s in states])

    def one(self, k: int, x: Tensor) -> Tensor:
        """Logits ``(B, C)`` of teacher ``k``."""
        return functional_call(self.module, {n: v[k] for n, v in self.stacked.items()}, (x,))

    def all(self, x: Tensor) -> Tensor:
        """Logits ``(K, B, C)`` of every teacher on the same inputs (one ``vmap`` when it applies)."""
        if self._vmap:
            try:
                return torch.vmap(lambda st: functional_call(self.module, st, (x,)))(self.stacked)
            except RuntimeError:  # a layer vmap cannot batch: loop over the teachers
                self._vmap = False
        return torch.stack([self.one(k, x) for k in range(self.k)])


@dataclass(frozen=True)
class GeneratorLoss:
    """The terms of the generator's loss (see the module docstring)."""

    fidelity: Literal["per_teacher", "ensemble"] = "per_teacher"
    w_fidelity: float = 1.0
    w_hard: float = 0.0  # needs a student
    diversity: Literal["exp", "ratio", "none"] = "exp"
    w_div: float = 1.0


@dataclass(frozen=True)
class LoopConfig:
    """Schedule and optimisers of :func:`datafree_loop`."""

    iterations: int = 10
    update: Literal["sequential", "joint"] = "sequential"
    gen_lr: float = 0.01
    gen_betas: tuple[float, float] = (0.9, 0.999)
    gen_weight_decay: float = 0.0
    student_steps: int = 5
    student_lr: float = 0.1
    student_weight: float = 1.0  # multiplies the student's loss (0: the student never moves)
    metrics_tail: int | None = None  # iterations the reported means cover (default: the last 10%)


def per_sample_weights(alpha: Tensor, y: Tensor) -> Tensor:
    """``(K, B)`` weights ``a_k(y_i)`` from ``(K,)`` or ``(K, C)`` ``alpha``."""
    if alpha.dim() == 1:
        return alpha[:, None].expand(-1, len(y))
    return alpha[:, y]


def exp_diversity(z: Tensor, x: Tensor) -> Tensor:
    """FedGen's ``exp(-mean_jk(mean_d (z_j - z_k)^2 * mean_d |x_j - x_k|))``."""
    zf, xf = z.flatten(1), x.flatten(1)
    dz = (zf[:, None, :] - zf[None, :, :]).pow(2).mean(2)
    dx = (xf[:, None, :] - xf[None, :, :]).abs().mean(2)
    return torch.exp(-(dz * dx).mean())


def ratio_diversity(z: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """KDIA's mode-seeking term ``1 / (d + 1e-5)`` and ``d = mean|x_a - x_b| / mean|z_a - z_b|``."""
    half = len(x) // 2
    d = (x[:half] - x[half : 2 * half]).abs().mean() / (z[:half] - z[half : 2 * half]).abs().mean()
    return 1.0 / (d + 1e-5), d


def generator_loss(
    spec: GeneratorLoss, x: Tensor, z: Tensor, y: Tensor, t_logits: Tensor, w: Tensor, s_logits: Tensor | None, n_teachers: int
) -> tuple[Tensor, dict[str, Tensor]]:
    """The generator's loss on one batch for the teachers in ``t_logits`` ``(K', B, C)``.

    ``w`` are their per-sample weights ``(K', B)``; the diversity term is divided by
    ``n_teachers / K'`` so that ``K`` sequential steps add it once in all (FedFTG's ``/K``).
    """
    terms: dict[str, Tensor] = {}
    wb = w if w.dim() == 2 else w[:, None]
    if spec.fidelity == "ensemble":
        ens = torch.einsum("kb,kbc->bc", w, t_logits) if w.dim() == 2 else torch.einsum("k,kbc->bc", w, t_logits)
        fid = F.cross_entropy(ens, y)
    else:
        ce = torch.stack([F.cross_entropy(t, y, reduction="none") for t in t_logits])  # (K', B)
        fid = (wb * ce).mean(1).sum()
    terms["fidelity"] = fid
    loss = spec.w_fidelity * fid
    if spec.w_hard and s_logits is not None:
        hard = (wb * (s_logits[None] - t_logits).abs().mean(2)).mean(1).sum()
        terms["hard"] = hard
        loss = loss - spec.w_hard * hard
    share = len(t_logits) / n_teachers
    if spec.diversity == "exp":
        div = exp_diversity(z, x)
        terms["div"] = div
        loss = loss + spec.w_div * share * div
    elif spec.diversity == "ratio":
        div, d = ratio_diversity(z, x)
        terms["div"], terms["d"] = div, d
        loss = loss + spec.w_div * share * div
    return loss, terms


@dataclass
class Student:
    """The model being distilled: a trainable module holding the student's state."""

    module: nn.Module

    def logits(self, x: Tensor) -> Tensor:
        return self.module(x)


def datafree_loop(
    generator: nn.Module,
    teachers: Teachers,
    alpha: Tensor,
    sampler: Sampler,
    loss: GeneratorLoss,
    cfg: LoopConfig,
    student: Student | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Fit ``generator`` (and distil ``student``, if given) for ``cfg.iterations`` iterations.

    Parameters
    ----------
    generator : nn.Module
        ``generator(z, y)``; trained in place with a fresh Adam (``cfg.gen_lr``).
    teachers : Teachers
        The frozen teachers (their module is put in eval mode for the loop).
    alpha : Tensor
        Teacher weights, ``(K,)`` or per class ``(K, C)``.
    sampler : Sampler
        Noise and labels of each iteration, from the caller's seeded stream.
    loss : GeneratorLoss
        The generator's loss terms.
    cfg : LoopConfig
        Iterations, update order, learning rates.
    student : Student, optional
        Trained in place with SGD (``cfg.student_lr``) for ``cfg.student_steps`` steps per
        iteration; also the ``hard``-term's reference.
    progress : callable, optional
        ``progress(1)`` after each iteration.

    Returns
    -------
    dict
        Means over the last ``cfg.metrics_tail`` iterations (default 10%, at least one) of the generator's terms
        (``gen_fidelity``, ``gen_hard``, ``gen_div``, ``gen_d``), of ``student_loss``, and
        ``distill_s``.
    """
    start = time.perf_counter()
    alpha = alpha.detach()
    was = teachers.module.training
    teachers.module.eval()
    opt = torch.optim.Adam(generator.parameters(), lr=cfg.gen_lr, betas=cfg.gen_betas, weight_decay=cfg.gen_weight_decay)
    s_opt = torch.optim.SGD(student.module.parameters(), lr=cfg.student_lr) if student is not None and cfg.student_steps else None
    tail = min(cfg.iterations, cfg.metrics_tail or max(1, cfg.iterations // 10))
    sums: dict[str, float] = {}
    groups = [[k] for k in range(teachers.k)] if cfg.update == "sequential" else [list(range(teachers.k))]
    try:
        for it in range(cfg.iterations):
            z, y = sampler(it)
            w_all = per_sample_weights(alpha, y)
            generator.train()
            if student is not None:
                student.module.eval()
            for ks in groups:
                x = generator(z, y)
                t = teachers.all(x) if len(ks) == teachers.k else torch.stack([teachers.one(k, x) for k in ks])
                s = student.logits(x) if student is not None and loss.w_hard else None
                w = w_all[ks] if alpha.dim() == 2 or len(ks) < teachers.k else alpha  # (K,) keeps KDIA's einsum
                total, terms = generator_loss(loss, x, z, y, t, w, s, teachers.k)
                opt.zero_grad(set_to_none=True)
                total.backward()
                opt.step()
                if it >= cfg.iterations - tail:
                    for name, v in terms.items():
                        sums[f"gen_{name}"] = sums.get(f"gen_{name}", 0.0) + float(v.detach()) / len(groups)
            if s_opt is not None and student is not None:
                generator.eval()
                with torch.no_grad():
                    x = generator(z, y)
                    q = torch.einsum("kb,kbc->bc", w_all, F.softmax(teachers.all(x), 2))
                student.module.train()
                for _ in range(cfg.student_steps):
                    s_loss = cfg.student_weight * (-F.log_softmax(student.logits(x), 1) * q).mean()
                    s_opt.zero_grad(set_to_none=True)
                    s_loss.backward()
                    s_opt.step()
                    if it >= cfg.iterations - tail:
                        sums["student_loss"] = sums.get("student_loss", 0.0) + float(s_loss.detach()) / cfg.student_steps
            if progress is not None:
                progress(1)
    finally:
        teachers.module.train(was)
    out = {k: v / tail for k, v in sums.items()}
    out["distill_s"] = time.perf_counter() - start
    return out


# -- label samplers --------------------------------------------------------------------
def proportional_labels(counts: np.ndarray, batch: int, gen: torch.Generator) -> Tensor:
    """FedFTG's ``generate_labels``: ``batch`` labels split in proportion to ``counts`` ``(C,)``, shuffled.

    Class ``c`` gets ``floor(cumsum(p) * batch)`` boundaries, as in the code, so the split
    is deterministic and only the order is random.
    """
    p = np.asarray(counts, dtype=np.float64)
    if p.sum() <= 0:
        raise ValueError("proportional_labels: every class count is 0")
    cuts = (np.cumsum(p / p.sum()) * batch).astype(int)[:-1]
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(np.diff(np.concatenate([[0], cuts, [batch]])))])
    y = torch.as_tensor(labels, dtype=torch.int64, device=gen.device)
    return y[torch.randperm(batch, generator=gen, device=gen.device)]


def uniform_labels(classes: Sequence[int], batch: int, gen: torch.Generator) -> Tensor:
    """``batch`` labels drawn uniformly (i.i.d.) from ``classes``."""
    pool = torch.as_tensor(list(classes), dtype=torch.int64, device=gen.device)
    return pool[torch.randint(0, len(pool), (batch,), generator=gen, device=gen.device)]


def group_balanced_labels(group_counts: np.ndarray, batch: int, gen: torch.Generator) -> Tensor:
    """A group ``g`` uniform over the groups with data, then ``y ~ n_g^y / n_g`` (DisUE's GLS alternative).

    ``group_counts`` is ``(M, C)``.
    """
    counts = torch.as_tensor(np.asarray(group_counts, dtype=np.float64), device=gen.device)
    live = counts[counts.sum(1) > 0]
    if len(live) == 0:
        raise ValueError("group_balanced_labels: every group count is 0")
    g = torch.randint(0, len(live), (batch,), generator=gen, device=gen.device)
    return torch.multinomial(live[g], 1, generator=gen).squeeze(1)


def class_weights(counts: np.ndarray) -> Tensor:
    """FedFTG's class-level ensemble weights ``a_k^y = n_k^y / sum_j n_j^y`` from ``(K, C)`` counts.

    A class no teacher holds gets equal weights (it is never sampled by proportional labels).
    """
    n = torch.as_tensor(np.asarray(counts, dtype=np.float64))
    tot = n.sum(0, keepdim=True)
    return torch.where(tot > 0, n / tot.clamp_min(1e-12), torch.full_like(n, 1.0 / len(n))).float()


def server_distill(
    module: nn.Module,
    student_state: ModelState,
    teacher_states: Sequence[ModelState],
    counts: np.ndarray,
    generator: nn.Module,
    *,
    loss: GeneratorLoss,
    cfg: LoopConfig,
    batch: int,
    noise_dim: int,
    gen: torch.Generator,
    labels: LabelMode = "proportional",
    weights: WeightMode = "class",
    progress: Callable[[int], None] | None = None,
) -> tuple[ModelState, dict[str, float]]:
    """FedFTG's server-side fine-tuning: a student distilled data-free from weighted teachers.

    Parameters
    ----------
    module : nn.Module
        The architecture of the teachers and the student (the worker model; not changed).
    student_state : ModelState
        Where the student starts (FedFTG: the FedAvg model; DisUE: the experts' average).
    teacher_states : sequence of ModelState
        The teachers (FedFTG: the round's clients; DisUE: the group experts).
    counts : np.ndarray
        ``(K, C)`` label counts of the teachers' data.
    generator : nn.Module
        The input-space generator, trained in place.
    loss, cfg : GeneratorLoss, LoopConfig
        The generator's loss and the loop's schedule (learning rates already decayed).
    batch, noise_dim : int
        Synthetic batch size and noise dimension.
    gen : torch.Generator
        The only source of randomness of the call.
    labels : {"proportional", "balanced", "uniform"}
        Label sampling: in proportion to the pooled counts (FedFTG's customised sampling,
        DisUE's GLS), group-balanced (a teacher uniformly, then its label distribution),
        or uniform over the classes any teacher holds.
    weights : {"class", "uniform"}
        Teacher weights: per class ``n_k^y / sum_j n_j^y`` (FedFTG's class-level ensemble,
        DisUE's GWF) or ``1/K`` for every teacher with data.

    Returns
    -------
    state, metrics
        The distilled student's state and :func:`datafree_loop`'s metrics.
    """
    counts = np.asarray(counts, dtype=np.float64)
    dev = next(iter(student_state.values())).device
    if weights == "class":
        alpha = class_weights(counts).to(dev)
    else:
        live = (counts.sum(1) > 0).astype(np.float64)
        alpha = torch.as_tensor(live / live.sum(), dtype=torch.float32, device=dev)
    pooled = counts.sum(0)
    held = [int(c) for c in np.flatnonzero(pooled > 0)]

    def sampler(it: int) -> tuple[Tensor, Tensor]:
        if labels == "proportional":
            y = proportional_labels(pooled, batch, gen)
        elif labels == "balanced":
            y = group_balanced_labels(counts, batch, gen)
        else:
            y = uniform_labels(held, batch, gen)
        return torch.randn(batch, noise_dim, generator=gen, device=gen.device).to(dev), y.to(dev)

    student_module = copy.deepcopy(module)
    set_state(student_module, student_state)
    teachers = Teachers(module, teacher_states)
    out = datafree_loop(generator, teachers, alpha, sampler, loss, cfg, Student(student_module), progress)
    return get_state(student_module), out
