"""MOON (Li et al. 2021): FedAvg plus model-contrastive learning on representations.

Local loss ``CE + mu * l_con`` with

    l_con = -log( e^{sim(z, z_glob)/tau} / (e^{sim(z, z_glob)/tau} + e^{sim(z, z_prev)/tau}) ),

``z = features(x)`` flattened (the model's representation), ``z_glob`` from the received
global model and ``z_prev`` from the client's previous local model, both without
gradient and in eval mode (as the official code), ``sim`` = cosine. On a client's first
participation the global model stands in for the previous one (as the official code,
whose initial "old" nets equal the global model).

The previous local models are kept server-side on the clients' behalf (a state bank) and sent back as
:attr:`~fldistill.ledger.Kind.STATE` (free): only their ``features.*`` part, which is
all ``z_prev`` needs, so memory is N x |features| float32 (mnist1d_cnn: 3,950 values, so
1,000 clients hold 15.8 MB). Traffic is exactly FedAvg's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from fldistill.engine.training import ModelState, Net, Objective, frozen_forward, objective
from fldistill.ledger import Kind, Payload
from fldistill.methods import register
from fldistill.methods.base import RunContext
from fldistill.methods.fedavg import FedAvg
from fldistill.methods.params import MoonParams

FEAT = "features."


def _features_of(state: ModelState, prefix: str = FEAT) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _feature_entries(state: ModelState) -> ModelState:
    """The ``features.*`` entries of a model state, names kept."""
    return {k: v for k, v in state.items() if k.startswith(FEAT)}


@objective("moon")
def _moon(
    args: dict[str, Any], ref: ModelState, model: torch.nn.Module, tensors: dict[str, torch.Tensor], gen: torch.Generator
) -> Objective:
    """``CE + mu * l_con``; the global model is ``ref``, the previous one the ``prev.*`` tensors."""
    mu, tau = float(args.get("mu", 0.1)), float(args.get("temperature", 0.5))
    glob = {k: v.detach() for k, v in _features_of(ref).items()}
    prev = {k: v.detach() for k, v in _features_of(tensors, "prev." + FEAT).items()} or glob
    inputs = {**{"glob." + k: v for k, v in glob.items()}, **{"prev." + k: v for k, v in prev.items()}}
    keys = list(glob)  # the loss closes over names only: its tensors come per client in `inp`

    def loss(net: Net, x: torch.Tensor, y: torch.Tensor, inp: dict[str, torch.Tensor]) -> torch.Tensor:
        h = net.features(x)
        z = h.flatten(1)
        zg = frozen_forward(model.get_submodule("features"), {k: inp["glob." + k] for k in keys}, x).flatten(1)
        zp = frozen_forward(model.get_submodule("features"), {k: inp["prev." + k] for k in keys}, x).flatten(1)
        sims = torch.stack([F.cosine_similarity(z, zg, dim=1), F.cosine_similarity(z, zp, dim=1)], 1) / tau
        # -log softmax(sims)[:, 0]: the global model's representation is the positive
        con = F.cross_entropy(sims, torch.zeros(len(z), dtype=torch.long, device=z.device))
        # always computed (also at mu=0) so that "MOON(mu=0) == FedAvg" tests this path
        return F.cross_entropy(net.head(h), y) + mu * con

    return Objective("moon", loss, inputs=inputs)


@register
class Moon(FedAvg):
    name = "moon"
    params: MoonParams

    def __init__(self, ctx: RunContext, params: MoonParams) -> None:
        super().__init__(ctx, params)
        # features.* of each client's last local model (unwritten: the global model stands in)
        self.prev = self.new_bank("prev", _feature_entries(self.global_state))

    def objective(self) -> tuple[str, dict[str, Any]]:
        return "moon", {"mu": self.params.mu, "temperature": self.params.temperature}

    def requests(self, t: int, clients: list[int], base: Payload) -> dict[int, Payload]:
        glob = _feature_entries(self.global_state)
        return {cid: base.with_meta().put_state("prev", self.prev.get(cid, glob), Kind.STATE) for cid in clients}

    def after_replies(self, t: int, replies: dict[int, Payload]) -> dict[str, Any]:
        for cid, rep in replies.items():
            self.prev.set(cid, _feature_entries(rep.get_state("model")))
        return {}
