"""FedAvg (McMahan et al. 2017): local SGD, sample-weighted averaging."""

from __future__ import annotations

from typing import Any

from fldistill.ledger import Payload
from fldistill.methods import register
from fldistill.methods.base import Method


@register
class FedAvg(Method):
    """FedAvg, and the round every FedAvg-shaped method shares.

    A round: :meth:`sample_clients`, one request per client (:meth:`objective`,
    :meth:`request_meta`, :meth:`requests`), the ``task`` on every client,
    :meth:`aggregate`, :meth:`after_replies`. Subclasses override only the hooks.
    """

    name = "fedavg"

    task: str = "train"  # the client task run each round
    round_label: str = "local training"  # the progress bar of a round

    def objective(self) -> tuple[str, dict[str, Any]]:
        """Name and arguments of the clients' local objective."""
        return "ce", {}

    def request_meta(self, t: int) -> dict[str, Any]:
        """Extra request metadata of round ``t`` (HFLDD: train on the inbox too)."""
        return {}

    def requests(self, t: int, clients: list[int], base: Payload) -> dict[int, Payload]:
        """Per-client requests; subclasses add tensors (control variates, teachers)."""
        return {c: base for c in clients}

    def aggregate(self, t: int, replies: dict[int, Payload]) -> None:
        """Fold the round's replies into the server's models: FedAvg's weighted average.

        Clustered methods aggregate per cluster here instead. With no reply (every
        sampled client lost, a Flower run) the model stays.
        """
        if replies:
            self.set_global(self.average(replies))

    def after_replies(self, t: int, replies: dict[int, Payload]) -> dict[str, Any]:
        """Server-side bookkeeping after aggregation; returns extra metrics."""
        return {}

    def round(self, t: int) -> dict[str, Any]:
        clients = self.sample_clients(t)
        name, args = self.objective()
        base = self.model_payload().with_meta(round=t, objective=name, objective_args=args, **self.request_meta(t))
        bar = self.ctx.progress(f"round {t}: {self.round_label}", len(clients))
        replies = self.comm.call(self.task, self.requests(t, clients, base), phase="train", progress=bar)
        self.aggregate(t, replies)
        extra = self.after_replies(t, replies)
        return {"train_loss": self.mean_meta(replies, "loss"), "participants": len(clients), **extra}
