"""DisUE, reconstructed (Leng, Zhang, Long, Xia, Yang, IJCAI 2025, arXiv 2506.20285; seeds 001, 002).

Only the abstract and summaries are public and no code exists: this is
``../shared/spec/methods.md`` §2.2's reconstruction on FedFTG (§7.2), every choice an option
with a documented default, and results are labelled "reconstructed DisUE".

Server state: the universal expert ``θ_U`` (the global model), the input-space generator
(FedFTG's, persistent), ``groups`` group experts ``θ_g`` (persistent), the group of every
client seen so far, a bank of every client's latest *encrypted* update and of its label
counts. Round t:

1. the sampled clients train from ``θ_U`` (plain local SGD) and upload their model
   ``ω_i``, their label counts ``n_i^y`` and ``e_i = Enc_s(ω_i - θ_U)`` under the clients'
   shared secret (:mod:`fldistill.cluster.encrypt`: ``encrypt="orthogonal"`` preserves
   cosines exactly, ``"jl"`` approximately with ``jl_dim`` values, ``"none"`` uploads no
   vector and the server uses ``ω_i - θ_U``);
2. the server stores ``e_i`` in the bank and clusters every client seen so far into
   ``min(groups, seen)`` groups on the cosine similarity of the bank's rows
   (agglomerative, ``linkage="complete"``; ``freeze_after`` stops re-clustering). Groups
   keep their identity across rounds: new labels are matched to the previous ones by the
   largest overlap of members (Hungarian);
3. **group experts**: ``θ_g`` = the sample-weighted average of the round's members of
   group g; a group without a member this round keeps its expert;
4. **group label counts** ``n_g^y`` over the round's members (``counts="fresh"``) or over
   all members from the bank (``"all"``); **GLS**: synthetic labels in proportion to
   ``sum_g n_g^y`` (``gls="proportional"``), group-balanced (``"balanced"``: a group
   uniformly, then its label distribution) or uniform over the held classes
   (``"uniform"``, the ablation without GLS); **GWF**: teacher weights ``α_g^y = n_g^y /
   sum_g' n_g'^y`` (``gwf="class"``) or ``1/M`` (``"uniform"``, the ablation without GWF);
5. **universal expert distillation** with the shared data-free block (FedFTG's loop with
   the group experts as teachers, :class:`~fldistill.methods.params.DistillParams`),
   starting from the size-weighted average of the experts (``student_init="experts"``)
   or from ``θ_U^t`` (``"universal"``);
6. ``θ_U^{t+1}`` goes to the next round's clients.

Reported: ``accuracy`` is ``θ_U``'s on the global test set; ``personalized_accuracy`` is
each client's own group expert on its local test split (a client never seen, or whose
expert has never been trained, uses ``θ_U``). ``clustering.json`` holds every client's
group, ``-1`` for clients that never took part.

Ledger per participating client: ``θ_U`` down; ``ω_i`` up, ``C`` label counts up (floats)
and the encrypted update (``|θ|`` floats for orthogonal, ``jl_dim`` for JL, nothing for
none). The generator and the distillation stay on the server.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel
from scipy.optimize import linear_sum_assignment

from fldistill.cluster import agglomerative, cosine_matrix
from fldistill.cluster.encrypt import client_secret, encrypt, encrypted_size
from fldistill.engine.comm import ClientContext, InProcessComm, batched_task, task, train_task
from fldistill.engine.state import Layout
from fldistill.engine.training import ModelState, weighted_average
from fldistill.ledger import Kind, Payload
from fldistill.methods import register
from fldistill.methods.base import RunContext
from fldistill.methods.fedftg import FedFTG
from fldistill.methods.params import DisUEParams


def _float_layout(model: torch.nn.Module) -> Layout:
    """The floating entries of the worker model, in its own order (clients and server agree)."""
    return Layout({k: v for k, v in model.state_dict().items() if v.is_floating_point()})


def _flat_update(layout: Layout, new: ModelState, ref: ModelState) -> torch.Tensor:
    return (layout.flatten(new, torch.float32) - layout.flatten(ref, torch.float32)).cpu()


def _seal(ctx: ClientContext, req: Payload, reply: Payload) -> Payload:
    """Client side: add the encrypted update under the clients' secret (never sent to the server)."""
    scheme = str(req.meta["encrypt"])
    if scheme != "none":
        delta = _flat_update(_float_layout(ctx.model), reply.get_state("model"), req.get_state("model"))
        secret = client_secret(ctx.seed, int(req.meta.get("key_epoch", 0)))
        reply.put("enc", encrypt(delta, scheme, secret, int(req.meta["jl_dim"])), Kind.FLOAT)  # type: ignore[arg-type]
    return reply


@task("disue_train")
def disue_train_task(ctx: ClientContext, req: Payload) -> Payload:
    """``train`` (with the label histogram), then the encrypted update ``enc``."""
    return _seal(ctx, req, train_task(ctx, req))


@batched_task("disue_train")
def disue_train_batched(comm: InProcessComm, requests: Mapping[int, Payload]) -> dict[int, Payload]:
    """Batched ``disue_train``: the batched ``train`` task, then each client seals its update."""
    from fldistill.engine.vectorised import train_batched

    done = train_batched(comm, requests)
    return {c: _seal(comm.context(c), requests[c], r) for c, r in done.items()}


@register
class DisUE(FedFTG):
    name = "disue"
    params: DisUEParams  # type: ignore[assignment]
    task = "disue_train"

    def __init__(self, ctx: RunContext, params: BaseModel) -> None:
        super().__init__(ctx, params)
        p, n = self.params, self.fed.n_clients
        self.experts = self.new_bank("experts", ctx.init_state, rows=p.groups, fill="template")
        self.layout = _float_layout(ctx.model)
        d = self.layout.widths[torch.float32]
        width = d if p.encrypt == "none" else encrypted_size(p.encrypt, d, p.jl_dim)
        self.updates = self.new_bank("updates", {"e": torch.zeros(width)}, device="cpu")  # every client's latest e_i
        self.hists = self.new_bank("hists", {"n": torch.zeros(self.fed.n_classes)}, device="cpu")
        self.group = np.full(n, -1, dtype=np.int64)  # -1: never took part

    # -- protocol --------------------------------------------------------------------
    def request_meta(self, t: int) -> dict[str, Any]:
        return {"histogram": True, "encrypt": self.params.encrypt, "jl_dim": self.params.jl_dim}

    def aggregate(self, t: int, replies: dict[int, Payload]) -> None:
        self._metrics = {}
        if not replies:
            return
        p, ids = self.params, sorted(replies)
        for c in ids:
            r = replies[c]
            e = r.tensors["enc"] if p.encrypt != "none" else _flat_update(self.layout, r.get_state("model"), self.global_state)
            self.updates.set(c, {"e": e})
            self.hists.set(c, {"n": r.tensors["hist"].float().cpu()})
        if p.freeze_after is None or t <= p.freeze_after or (self.group[ids] < 0).any():
            self.recluster()
        # group experts from the round's members; a group without one keeps its expert
        fresh: dict[int, list[int]] = {}
        for c in ids:
            fresh.setdefault(int(self.group[c]), []).append(c)
        for g, members in fresh.items():
            self.experts.set(g, self.average({c: replies[c] for c in members}))
        hist = self.hists.matrix().double().numpy()
        counts = np.zeros((p.groups, self.fed.n_classes))
        for g in range(p.groups):
            who = fresh.get(g, []) if p.counts == "fresh" else np.flatnonzero(self.group == g).tolist()
            if who:
                counts[g] = hist[who].sum(0)
        live = [g for g in range(p.groups) if counts[g].sum() > 0 and self.experts.version(g) > 0]
        teachers = [self.experts.get(g) for g in live]
        sizes = [float(counts[g].sum()) for g in live]
        student = weighted_average(teachers, sizes) if p.student_init == "experts" else self.global_state
        self._metrics = {"groups": int(len(set(self.group[self.group >= 0].tolist()))), "teachers": len(live)}
        if p.iterations == 0:
            self.set_global(student)
            return
        state, out = self.distill(t, student, teachers, counts[live], p.gls, p.gwf)
        self.set_global(state)
        self._metrics.update(out)

    def recluster(self) -> None:
        """Cluster every client seen so far on the cosine similarity of its (encrypted) update."""
        seen = self.updates.present_rows()
        m = min(self.params.groups, len(seen))
        S = cosine_matrix(self.updates.matrix()[seen].double())
        labels = agglomerative(S, m, linkage=self.params.linkage)
        old = self.group[seen]
        # keep group identities: match new labels to old ones by member overlap (Hungarian)
        overlap = np.zeros((m, self.params.groups))
        for new_l, old_l in zip(labels, old):
            if old_l >= 0:
                overlap[new_l, old_l] += 1
        rows, cols = linear_sum_assignment(-overlap)
        mapping = dict(zip(rows.tolist(), cols.tolist()))
        self.group[seen] = [mapping[int(lab)] for lab in labels]

    # -- what clients use, reports, checkpoint -------------------------------------------
    def personal_models(self) -> tuple[list[ModelState], np.ndarray]:
        p = self.params
        states = [self.experts.get(g) for g in range(p.groups)] + [self.global_state]
        trained = np.array([self.experts.version(g) > 0 for g in range(p.groups)] + [True])
        assign = np.where(self.group >= 0, self.group, p.groups)
        assign = np.where(trained[assign], assign, p.groups)  # an untrained expert: θ_U
        return states, assign.astype(np.int64)

    def cluster_assignment(self) -> np.ndarray | None:
        return self.group.copy()

    def eval_states(self) -> dict[str, ModelState]:
        return {"": self.global_state}

    def summary_extra(self) -> dict[str, Any]:
        bank = self.updates.matrix()
        return {
            "reconstructed": "reconstructed DisUE (seeds 001/002: abstract only; methods.md section 2)",
            "group_sizes": np.bincount(self.group[self.group >= 0], minlength=self.params.groups).tolist(),
            "bank_bytes": int(bank.numel() * bank.element_size()),
            "generator_parameters": sum(q.numel() for q in self.generator.parameters()),
        }

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, meta = super().state_dict()
        meta.update(group=self.group.tolist())
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        super().load_state_dict(tensors, meta)
        self.group = np.asarray(meta["group"], dtype=np.int64)
