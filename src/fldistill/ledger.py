"""The communication ledger: every message between roles is priced here, in bits.

Methods never count bytes themselves. They build :class:`Payload` objects whose tensors
carry a *kind*, and the transport charges each payload to a hop and a phase. Closed-form
cost formulas (HFLDD Eq. 3, 18, 19) are therefore checks on this ledger, not the source
of the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

HOPS: tuple[str, ...] = (
    "server->client",
    "client->server",
    "client->client",
    "cloud->edge",
    "edge->cloud",
    "edge->client",
    "client->edge",
)

# Roles are logical addresses: "server", "cloud", "edge:<k>" (edge server / cluster k),
# "client:<i>". A hop is priced by the kinds of its two ends.
SERVER = "server"
CLOUD = "cloud"
ROLE_KINDS = ("server", "cloud", "edge", "client")


def edge(k: int) -> str:
    """The role of edge server (or cluster model holder) ``k``."""
    return f"edge:{int(k)}"


def role_kind(role: str) -> str:
    """``"server"``, ``"cloud"``, ``"edge"`` or ``"client"`` of a role address.

    Raises
    ------
    ValueError
        For an address that names no role.
    """
    kind, _, index = str(role).partition(":")
    if kind not in ROLE_KINDS or (kind in ("edge", "client")) != bool(index) or (index and not index.isdigit()):
        raise ValueError(f"unknown role {role!r}; roles are 'server', 'cloud', 'edge:<k>' and 'client:<i>'")
    return kind


def hop(src: str, dst: str) -> str:
    """The ledger hop of a message from role ``src`` to role ``dst``.

    Raises
    ------
    ValueError
        If the two roles do not talk to each other (e.g. cloud and client).
    """
    name = f"{role_kind(src)}->{role_kind(dst)}"
    if name not in HOPS:
        raise ValueError(f"no hop from {src!r} to {dst!r}; valid hops: {', '.join(HOPS)}")
    return name


class Kind(str, Enum):
    """How a tensor in a payload is priced."""

    PARAM = "param"  # model parameters and buffers: B1 bits per value
    FLOAT = "float"  # other floats (soft labels, logits, control variates): B1 bits per value
    DATA = "data"  # raw or distilled input values: B2 bits per value
    LABEL = "label"  # hard class labels: label_bits per value
    SEED = "seed"  # sent as a random seed (initial model): free
    # A client's own persistent state (SCAFFOLD's c_i, MOON's previous model). The
    # simulation keeps it on the server side so memory stays flat in the number of
    # clients; a real client holds it, so handing it over is not a transfer: free.
    STATE = "state"


@dataclass
class Payload:
    """What one message carries: named tensors (priced) and small metadata (free).

    Metadata holds scalars and short config (task options, sample counts); it is not
    priced because it is a few bytes next to the tensors.
    """

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    kinds: dict[str, Kind] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def put(self, name: str, tensor: torch.Tensor, kind: Kind) -> Payload:
        """Add a tensor with its pricing kind; returns self for chaining."""
        self.tensors[name] = tensor
        self.kinds[name] = Kind(kind)
        return self

    def put_state(self, prefix: str, state: dict[str, torch.Tensor], kind: Kind = Kind.PARAM) -> Payload:
        """Add every tensor of a model state under ``prefix.``."""
        for k, v in state.items():
            self.put(f"{prefix}.{k}", v, kind)
        return self

    def get_state(self, prefix: str) -> dict[str, torch.Tensor]:
        """The model state stored under ``prefix.``."""
        p = prefix + "."
        return {k[len(p):]: v for k, v in self.tensors.items() if k.startswith(p)}

    def with_meta(self, **meta: Any) -> Payload:
        """A shallow copy with extra metadata (tensors are shared, not copied)."""
        return Payload(dict(self.tensors), dict(self.kinds), {**self.meta, **meta})


class Ledger:
    """Cumulative bits per hop and per phase.

    Parameters
    ----------
    b1, b2, label_bits : int
        Bits per parameter/float value, per data value, per hard label.
    """

    def __init__(self, b1: int = 32, b2: int = 8, label_bits: int = 32) -> None:
        self.b1, self.b2, self.label_bits = int(b1), int(b2), int(label_bits)
        self.bits: dict[str, int] = {h: 0 for h in HOPS}
        self.by_phase: dict[str, dict[str, int]] = {}
        self.messages: dict[str, int] = {h: 0 for h in HOPS}

    def price(self, payload: Payload) -> int:
        """Bits needed to send ``payload``."""
        per = {
            Kind.PARAM: self.b1,
            Kind.FLOAT: self.b1,
            Kind.DATA: self.b2,
            Kind.LABEL: self.label_bits,
            Kind.SEED: 0,
            Kind.STATE: 0,
        }
        return sum(int(t.numel()) * per[payload.kinds[n]] for n, t in payload.tensors.items())

    def charge(self, hop: str, payload: Payload, phase: str) -> int:
        """Record one message on ``hop`` during ``phase``; returns its bits."""
        if hop not in self.bits:
            raise ValueError(f"unknown hop {hop!r}; valid hops: {', '.join(HOPS)}")
        bits = self.price(payload)
        self.bits[hop] += bits
        self.messages[hop] += 1
        ph = self.by_phase.setdefault(phase, {})
        ph[hop] = ph.get(hop, 0) + bits
        return bits

    @property
    def total(self) -> int:
        """All bits sent so far."""
        return sum(self.bits.values())

    def snapshot(self) -> dict[str, int]:
        """Cumulative bits per hop (only hops that carried traffic, plus the main two)."""
        return {h: b for h, b in self.bits.items() if b or h in ("server->client", "client->server")}

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state for checkpoints."""
        return {"bits": dict(self.bits), "by_phase": self.by_phase, "messages": dict(self.messages)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self.bits = {h: int(state["bits"].get(h, 0)) for h in HOPS}
        self.by_phase = {p: {h: int(b) for h, b in d.items()} for p, d in state["by_phase"].items()}
        self.messages = {h: int(state["messages"].get(h, 0)) for h in HOPS}
