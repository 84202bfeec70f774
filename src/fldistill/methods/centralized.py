"""Centralized learning: the upper bound, trained on the union of all clients' data."""

from __future__ import annotations

from typing import Any

import torch

from fldistill.engine.training import local_train, make_objective
from fldistill.methods import register
from fldistill.methods.base import Method
from fldistill.seeding import torch_gen


@register
class Centralized(Method):
    """One "round" is E epochs (the local config) over the pooled local training data.

    Nothing is communicated, so the ledger stays at zero.
    """

    name = "centralized"

    def round(self, t: int) -> dict[str, Any]:
        ix = torch.from_numpy(self.fed.all_train_indices())
        x, y = self.fed.x[ix], self.fed.y[ix]
        obj = make_objective("ce", {}, self.global_state, self.ctx.model)
        gen = torch_gen(self.cfg.seed, "centralized", t, device=x.device)
        state, stats = local_train(self.ctx.model, self.global_state, x, y, self.cfg.local, obj, gen, where="centralized")
        self.set_global(state)
        return {"train_loss": stats["loss"]}
