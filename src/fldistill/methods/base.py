"""The method interface: a protocol between roles, run by the shared engine.

A method never owns the round loop. The runner calls :meth:`Method.setup` once (one-off
phases such as HFLDD's clustering and distillation), then :meth:`Method.round` for each
round, evaluates :meth:`Method.eval_states` (and, for personalised evaluation,
:meth:`Method.personal_models` and :meth:`Method.cluster_assignment`), logs, and
checkpoints :meth:`Method.state_dict`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel

from fldistill.config import RunConfig
from fldistill.data.federation import Federation
from fldistill.engine.comm import Comm
from fldistill.engine.state import StateBank
from fldistill.engine.training import ModelState, weighted_average
from fldistill.ledger import Kind, Payload
from fldistill.methods.params import NoParams
from fldistill.seeding import np_rng

ProgressFactory = Callable[[str, int], Callable[[int], None]]


@dataclass
class RunContext:
    """What the engine gives a method."""

    cfg: RunConfig
    fed: Federation
    comm: Comm  # the transport: call(), send(), inbox_meta()
    model: torch.nn.Module  # the reusable worker module (architecture of every client)
    init_state: ModelState  # the seeded initial model
    progress: ProgressFactory  # progress("label", total) -> advance(n)
    out_dir: Path | None = None  # the run folder, for method artefacts (clustering, plots)


class Method:
    """Base class of all methods.

    Subclasses set ``name`` and implement :meth:`round`. ``description``, ``Params`` (a
    pydantic model of method-specific parameters, filled from ``config.params``) and
    ``local_defaults`` of a built-in method come from its card in
    :mod:`fldistill.methods.catalog`, set by :func:`~fldistill.methods.register`; other
    methods set them on the class. Per-client state lives here, on the server side, so
    one worker module serves every client.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = NoParams
    needs_public: ClassVar[bool] = False
    # Tuned local-training defaults of this method; they fill only the ``local`` fields
    # the user did not set, and the resolved values are saved in config.json.
    local_defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, ctx: RunContext, params: BaseModel) -> None:
        self.ctx, self.cfg, self.fed, self.comm, self.params = ctx, ctx.cfg, ctx.fed, ctx.comm, params
        self.global_state: ModelState = {k: v.clone() for k, v in ctx.init_state.items()}
        self.version = 0  # 0 = the seeded initial model, which travels for free
        self.banks: dict[str, StateBank] = {}  # checkpointed with the method (new_bank)

    @classmethod
    def uses_public(cls, params: BaseModel) -> bool:
        """Whether this configuration needs the public auxiliary set."""
        return cls.needs_public

    # -- hooks -----------------------------------------------------------------------
    def setup(self) -> dict[str, Any]:
        """One-off phases before round 1; returns extra metrics for round 0."""
        return {}

    def round(self, t: int) -> dict[str, Any]:
        """Run round ``t`` (1-based); returns extra metrics to log."""
        raise NotImplementedError

    def eval_states(self) -> dict[str, ModelState]:
        """Models to evaluate on the global test set; key ``""`` is the reported one."""
        return {"": self.global_state}

    def personal_models(self) -> tuple[list[ModelState], np.ndarray]:
        """The models clients use, for personalised evaluation on their local test splits.

        Returns
        -------
        states : list of ModelState
            The distinct models.
        assign : np.ndarray
            Per client, the index of its model in ``states``, int64 ``(N,)``.

        The default is a global method's: every client uses the reported model
        (``eval_states()[""]``). Clustered methods return their cluster models and each
        client's cluster; local training one model per client.
        """
        return [self.eval_states()[""]], np.zeros(self.fed.n_clients, dtype=np.int64)

    def cluster_assignment(self) -> np.ndarray | None:
        """A clustered method's current cluster of every client (int64 ``(N,)``), or None.

        When not None and the federation has ground-truth groups, the runner logs its
        ``purity`` and ``ari`` against them.
        """
        return None

    def summary_extra(self) -> dict[str, Any]:
        """Extra entries for ``summary.json``."""
        return {}

    # -- state banks -----------------------------------------------------------------
    def new_bank(
        self,
        name: str,
        template: ModelState,
        rows: int | None = None,
        *,
        fill: Literal["zeros", "template"] = "zeros",
        device: torch.device | str | None = None,
    ) -> StateBank:
        """A :class:`~fldistill.engine.state.StateBank` saved and restored with this method.

        ``rows`` defaults to one per client; use the number of clusters for per-cluster
        state, or 0 for a growing list (:meth:`StateBank.append`).
        """
        if name in self.banks:
            raise ValueError(f"bank {name!r} exists already")
        bank = StateBank(template, self.fed.n_clients if rows is None else rows, fill=fill, device=device)
        self.banks[name] = bank
        return bank

    # -- checkpoint --------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Server-side state as tensors plus JSON metadata (the global model and every bank)."""
        tensors = {f"global/{k}": v for k, v in self.global_state.items()}
        banks: dict[str, Any] = {}
        for name, bank in self.banks.items():
            bt, banks[name] = bank.state_dict()
            tensors.update({f"bank/{name}/{k}": v for k, v in bt.items()})
        return tensors, {"version": self.version, "banks": banks}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self.global_state = {k[len("global/"):]: v.clone() for k, v in tensors.items() if k.startswith("global/")}
        self.version = int(meta["version"])
        saved = meta.get("banks", {})
        if set(saved) != set(self.banks):
            raise ValueError(f"the checkpoint holds banks {sorted(saved)}, this method {sorted(self.banks)}")
        for name, bank in self.banks.items():
            pre = f"bank/{name}/"
            bank.load_state_dict({k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}, saved[name])

    # -- helpers -----------------------------------------------------------------------
    def model_payload(self, state: ModelState | None = None, prefix: str = "model", *, initial: bool | None = None) -> Payload:
        """A payload carrying a model; the seeded initial model is priced as a seed."""
        is_init = (self.version == 0) if initial is None else initial
        kind = Kind.SEED if (is_init and self.cfg.ledger.init_model_free) else Kind.PARAM
        return Payload().put_state(prefix, self.global_state if state is None else state, kind)

    def sample_clients(self, t: int, *keys: int) -> list[int]:
        """The clients of round ``t``: one seeded stream shared by all methods.

        ``keys`` name further draws within a round (a hierarchical method's edge rounds);
        without them every method samples the same clients in round ``t``.
        """
        n = self.fed.n_clients
        k = max(1, int(round(self.cfg.participation * n)))
        if k >= n:
            return list(range(n))
        return sorted(np_rng(self.cfg.seed, "sample", t, *keys).choice(n, k, replace=False).tolist())

    def set_global(self, state: ModelState) -> None:
        """Replace the global model (a new version, no longer free to send)."""
        self.global_state = state
        self.version += 1

    def average(self, replies: dict[int, Payload], prefix: str = "model", *, uniform: bool = False) -> ModelState:
        """FedAvg of the replies' models, weighted by their sample counts ``meta["n"]``.

        ``uniform`` gives every reply the same weight (DynaFed's code, IFCA's and CFL's
        official scripts). An instance method so that methods can change the aggregation.
        """
        ids = sorted(replies)
        weights = [1.0] * len(ids) if uniform else [replies[c].meta["n"] for c in ids]
        return weighted_average([replies[c].get_state(prefix) for c in ids], weights)

    @staticmethod
    def mean_meta(replies: dict[int, Payload], key: str) -> float:
        """Mean of a numeric metadata field over replies."""
        return float(np.mean([r.meta[key] for r in replies.values()])) if replies else float("nan")
