"""The server side of the Flower engine: :class:`FlowerComm`, a :class:`~fldistill.engine.comm.Comm`.

Each ``call`` sends one Flower ``Message`` per client, of type ``train.<task>``, waits at
most ``timeout_s`` for the replies; the routing and pricing are the shared
:meth:`Comm.call`, so the in-process and Flower engines end with the same ledger.

Device-to-device transfers (``reply_to``) are relayed: Flower's topology is a star, so
the member's reply comes to the server, which forwards it with the next message it sends
to the receiver (where it lands in the receiver's inbox before that task runs). The
ledger charges the transfer once, as ``client->client``, like in-process; the second leg
(server -> receiver) is counted apart, in ``relay_bits`` / ``relay_messages``, which go
into every metrics record and the summary's ``flower`` section.

A client that does not answer in time (or whose node died) is left out of the replies
and recorded in the round's ``missing`` list; the round goes on with the replies that
came. A task that *raised* on a client is a bug, not a fault, and stops the run.

Resume: a node's inbox lives in its Flower ``context.state``, which a new Flower run
starts empty. Every message that enters an inbox passed through the server (the relay),
so the server keeps a copy of it, numbered, and each reply says which numbers are still
in the node's inbox (a task may consume messages). That mirror is checkpointed with the
Runner's state; a resumed run sends it to each node again with the node's next message.
The re-sent bits are real traffic but not part of the experiment: they are counted apart,
as ``resume_bits`` / ``resume_messages`` (metrics records and the ``flower`` summary), so
the ledger of a resumed run equals the uninterrupted run's. A client *store* cannot be
mirrored (the server never sees it): a checkpoint taken while a node keeps one cannot be
resumed on Flower, and says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from fldistill.config import LocalConfig
from fldistill.data.federation import Federation
from fldistill.engine.comm import Comm
from fldistill.errors import ConfigError, DataError
from fldistill.flower.codec import get_payload, put_inbox, put_payload
from fldistill.flower.trace import mark
from fldistill.ledger import Kind, Ledger, Payload

log = logging.getLogger("fldistill.flower")

HELLO = "query.fldistill_hello"
POLL_S = 0.1  # how often a waiting call asks the SuperLink for replies


def message_type(task_name: str) -> str:
    """The Flower message type that carries ``task_name``."""
    return f"train.{task_name}"


def exchange(grid: Grid, msgs: list[Message], timeout_s: float) -> list[Message]:
    """Push ``msgs`` and pull replies until all came or ``timeout_s`` passed.

    ``Grid.send_and_receive`` polls every 3 s on the deployment runtime; a call of a tiny
    task would spend most of its time asleep, so we poll every ``POLL_S``.
    """
    if not msgs:
        return []
    mark("push", n=len(msgs), type=msgs[0].metadata.message_type)
    waiting = set(grid.push_messages(msgs))
    out: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while waiting:
        got = list(grid.pull_messages(waiting))
        out += got
        waiting -= {m.metadata.reply_to_message_id for m in got}
        if not waiting or time.monotonic() >= deadline:
            mark("replies", n=len(out))
            break
        time.sleep(POLL_S)
    return out


def discover_nodes(grid: Grid, n_clients: int, timeout_s: float, reply_timeout_s: float) -> dict[int, int]:
    """Map each client id (a node's ``partition-id``) to the Flower node serving it.

    Waits up to ``timeout_s`` for ``n_clients`` nodes to connect, then up to
    ``reply_timeout_s`` for each to tell its partition id.

    Raises
    ------
    ConfigError
        Too few nodes, a partition id out of range, or two nodes with the same one.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= n_clients or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if len(nodes) < n_clients:
        raise ConfigError(
            f"only {len(nodes)} of {n_clients} SuperNodes connected within {timeout_s:.0f} s; start one "
            f"SuperNode per client with --node-config 'partition-id=<0..{n_clients - 1}>' or raise flower.connect_timeout_s"
        )
    msgs = [Message(RecordDict({"hello": ConfigRecord({})}), dst_node_id=n, message_type=HELLO) for n in nodes]
    replies = exchange(grid, msgs, reply_timeout_s)
    out: dict[int, int] = {}
    for m in replies:
        if m.has_error():
            continue
        pid = int(cast(int, m.content["hello"]["partition-id"]))
        src = int(m.metadata.src_node_id)
        if not 0 <= pid < n_clients:
            raise ConfigError(f"SuperNode {src} has partition-id={pid}, outside 0..{n_clients - 1} (clients = {n_clients})")
        if pid in out:
            raise ConfigError(f"SuperNodes {out[pid]} and {src} both have partition-id={pid}; give each node its own")
        out[pid] = src
    if len(out) < n_clients:
        lacking = sorted(set(range(n_clients)) - set(out))
        raise ConfigError(f"no SuperNode answered for partition-id(s) {lacking}; start them or check their --node-config")
    return out


@dataclass
class Mail:
    """The server's copy of one message in a client's inbox.

    Attributes
    ----------
    seq : int
        The server's number of the message (unique in the run).
    src : int
        The sending client.
    payload : Payload
        What was sent.
    sent : bool
        It went to the receiver's node (else it waits for the node's next message).
    resend : bool
        A resumed run sends it again (the node's new Flower run lost it); priced as
        ``resume_bits``, not as a relay.
    """

    seq: int
    src: int
    payload: Payload
    sent: bool = False
    resend: bool = False


class FlowerComm(Comm):
    """Runs tasks on Flower SuperNodes; routing and pricing are :class:`~fldistill.engine.comm.Comm`'s.

    Parameters
    ----------
    grid : flwr.serverapp.Grid
        The ServerApp's grid.
    nodes : mapping
        ``{client id: node id}`` (see :func:`discover_nodes`).
    ledger, fed, model, local, seed
        As for :class:`~fldistill.engine.comm.InProcessComm`. ``model`` is only the
        server's evaluation module here; client tasks run on the nodes.
    timeout_s : float
        How long one call waits for replies.
    """

    def __init__(
        self,
        grid: Grid,
        nodes: Mapping[int, int],
        ledger: Ledger,
        fed: Federation,
        model: torch.nn.Module,
        local: LocalConfig,
        seed: int,
        *,
        timeout_s: float,
    ) -> None:
        self.grid, self.nodes = grid, dict(nodes)
        self.ledger, self.fed, self.model, self.local, self.seed = ledger, fed, model, local, seed
        self.timeout_s = float(timeout_s)
        # Every client's inbox as the server knows it, in the node's order: what the node
        # holds (sent) followed by what waits for its next message (see Mail).
        self.mail: dict[int, list[Mail]] = {}
        self.next_seq = 0
        # Clients whose node keeps a store (client-private state the server never sees).
        self.node_stores: dict[int, list[str]] = {}
        self.relay_bits = 0
        self.relay_messages = 0
        self.resume_bits = 0
        self.resume_messages = 0
        self.resumed_after: list[int] = []  # the checkpointed round each resume continued from
        self.missing: list[int] = []  # since the last round_report
        self.missing_by_round: list[list[int]] = []
        self.call_seconds: list[float] = []

    def _execute(
        self, task_name: str, requests: Mapping[int, Payload], progress: Callable[[int], None] | None
    ) -> dict[int, Payload]:
        """One Flower message per client node; the replies that came within ``timeout_s``."""
        t0 = time.perf_counter()
        msgs: list[Message] = []
        cid_of_node: dict[int, int] = {}
        missing: list[int] = []
        for cid in sorted(requests):
            node = self.nodes.get(cid)
            if node is None:
                missing.append(cid)
                continue
            rd = RecordDict()
            put_payload(rd, "req", requests[cid], task=task_name, cid=cid)
            self._attach_mail(rd, cid)
            msgs.append(Message(rd, dst_node_id=node, message_type=message_type(task_name)))
            cid_of_node[node] = cid
        got: dict[int, Payload] = {}
        for m in exchange(self.grid, msgs, self.timeout_s):
            got_cid = cid_of_node.get(int(m.metadata.src_node_id))
            if got_cid is None:
                continue
            cid = got_cid
            if m.has_error():
                if int(m.error.code) == ErrorCode.CLIENT_APP_RAISED_EXCEPTION:
                    raise RuntimeError(f"client {cid} failed in task {task_name!r}: {m.error.reason}")
                log.warning("client %d: no result for %s (%s)", cid, task_name, m.error.reason)
                continue
            got[cid], head = get_payload(m.content, "reply", self.fed.x.device)
            self._track(cid, head)
            if progress is not None:
                progress(1)
        missing += [cid for cid in sorted(requests) if cid in self.nodes and cid not in got]
        if missing:
            log.warning("%s: no reply from client(s) %s within %.0f s", task_name, sorted(missing), self.timeout_s)
            self.missing.extend(missing)
        self.call_seconds.append(time.perf_counter() - t0)
        return got

    def _attach_mail(self, rd: RecordDict, cid: int) -> None:
        """Put what waits for ``cid``'s node into its request (``relay``), pricing each leg."""
        out = [m for m in self.mail.get(cid, []) if not m.sent]
        if not out:
            return
        put_inbox(rd, "relay", [(m.src, m.payload) for m in out], [m.seq for m in out])
        for m in out:
            bits = self.ledger.price(m.payload)
            if m.resend:
                self.resume_bits += bits
                self.resume_messages += 1
            else:
                self.relay_bits += bits
                self.relay_messages += 1
            m.sent, m.resend = True, False

    def _track(self, cid: int, head: Mapping[str, Any]) -> None:
        """Follow ``cid``'s node: which of our messages its inbox still holds, whether it keeps a store.

        A node that did not answer is not tracked: what it was sent is assumed delivered.
        """
        left = head.get("inbox")
        if left is None:  # a node of an older fldistill: nothing to follow
            return
        by_seq = {m.seq: m for m in self.mail.get(cid, []) if m.sent}
        private = [str(k) for k in head.get("store", [])]
        if any(s not in by_seq for s in left):  # a message the server never relayed (a task wrote its own inbox)
            private.append("<inbox entries the server never saw>")
        if private:
            self.node_stores[cid] = private
        else:
            self.node_stores.pop(cid, None)
        self.mail[cid] = [by_seq[s] for s in left if s in by_seq] + [m for m in self.mail.get(cid, []) if not m.sent]

    def _deliver(self, dst: int, src: int, reply: Payload) -> None:
        """Relayed: the tensors go to ``dst``'s node with its next message; the server keeps a copy."""
        self.mail.setdefault(dst, []).append(Mail(self.next_seq, src, reply))
        self.next_seq += 1

    def inbox_meta(self, cid: int) -> list[tuple[int, dict[str, Any]]]:
        """Sender and metadata of each message in client ``cid``'s inbox (the server's copy)."""
        return [(m.src, dict(m.payload.meta)) for m in self.mail.get(cid, [])]

    def round_report(self) -> dict[str, Any]:
        """Lost clients and relay counters of the round that just ended (then reset)."""
        missing = sorted(set(self.missing))
        self.missing = []
        self.missing_by_round.append(missing)
        return {
            "missing": missing, "relay_bits": self.relay_bits, "relay_messages": self.relay_messages,
            "resume_bits": self.resume_bits, "resume_messages": self.resume_messages,
        }

    def summary(self) -> dict[str, Any]:
        """The ``flower`` section of ``summary.json``."""
        return {
            "nodes": {str(c): n for c, n in sorted(self.nodes.items())},
            "relay_bits": self.relay_bits,
            "relay_messages": self.relay_messages,
            "resume_bits": self.resume_bits,
            "resume_messages": self.resume_messages,
            "resumed_after": self.resumed_after,
            "missing_by_round": self.missing_by_round,
            "timeout_s": self.timeout_s,
            "seconds_per_call": sum(self.call_seconds) / max(len(self.call_seconds), 1),
        }

    # -- checkpointing -------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The inbox mirror (InProcessComm's layout, plus the Flower bookkeeping) and the counters."""
        tensors: dict[str, torch.Tensor] = {}
        inboxes: dict[str, list[dict[str, Any]]] = {}
        for cid, box in self.mail.items():
            if not box:
                continue
            entries = []
            for j, m in enumerate(box):
                kinds = {k: Kind(v).value for k, v in m.payload.kinds.items()}
                entries.append({"src": m.src, "kinds": kinds, "meta": m.payload.meta, "seq": m.seq, "sent": m.sent or m.resend})
                for k, v in m.payload.tensors.items():
                    tensors[f"inbox/{cid}/{j}/{k}"] = v
            inboxes[str(cid)] = entries
        meta = {
            "stores": {}, "inboxes": inboxes, "next_seq": self.next_seq, "node_stores": {str(c): k for c, k in self.node_stores.items()},
            "relay_bits": self.relay_bits, "relay_messages": self.relay_messages,
            "resume_bits": self.resume_bits, "resume_messages": self.resume_messages,
            "resumed_after": self.resumed_after, "missing_by_round": self.missing_by_round,
        }
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; what the nodes held is marked to be sent to them again.

        Raises
        ------
        DataError
            A node kept a store when the checkpoint was taken: a new Flower run cannot give it back.
        """
        private = {int(c): list(k) for c, k in meta.get("node_stores", {}).items()}
        private |= {int(c): list(k) for c, k in meta.get("stores", {}).items()}  # an in-process checkpoint's
        if private:
            raise DataError(
                "this checkpoint cannot be resumed on Flower: the nodes of client(s) "
                f"{sorted(private)} kept state in their store ({sorted({k for v in private.values() for k in v})}), "
                "which only they had and a new Flower run starts without; resume it in-process (fldistill run --resume) or start again"
            )
        self.mail = {}
        for c, entries in meta.get("inboxes", {}).items():
            box = []
            for j, e in enumerate(entries):
                kinds = {k: Kind(v) for k, v in e["kinds"].items()}
                p = Payload({k: tensors[f"inbox/{c}/{j}/{k}"] for k in kinds}, kinds, e["meta"])
                # an in-process checkpoint has no seq/sent: its inboxes were all with their clients
                sent = bool(e.get("sent", True))
                box.append(Mail(int(e.get("seq", -1 - j)), int(e["src"]), p, sent=False, resend=sent))
            self.mail[int(c)] = box
        self.next_seq = int(meta.get("next_seq", sum(len(b) for b in self.mail.values())))
        self.relay_bits, self.relay_messages = int(meta.get("relay_bits", 0)), int(meta.get("relay_messages", 0))
        self.resume_bits, self.resume_messages = int(meta.get("resume_bits", 0)), int(meta.get("resume_messages", 0))
        self.missing_by_round = [list(r) for r in meta.get("missing_by_round", [])]
        self.resumed_after = [*meta.get("resumed_after", []), len(self.missing_by_round) - 1]
