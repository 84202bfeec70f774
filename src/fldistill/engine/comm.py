"""Roles, tasks and the transports.

A method is a protocol between roles: the server (or an edge server, or the cloud)
sends :class:`Payload` requests to clients, clients run a named *task* and reply. Every
transport is a :class:`Comm`: it prices every request and reply in the
:class:`~fldistill.ledger.Ledger` on the hop between the two roles, and may route a reply
to another client (a device-to-device transfer, e.g. member -> cluster head) instead of
back to the sender. The routing and pricing are written once, in :meth:`Comm.call`; a
transport only says how tasks run (:meth:`Comm._execute`: in this process, or on Flower
SuperNodes) and how a device-to-device message reaches its receiver (:meth:`Comm._deliver`).

Client tasks are plain functions registered with :func:`task`. They see only their
:class:`ClientContext` (own data, a persistent store, seeded random streams) and the
payload, so the same function can serve a Flower ``ClientApp`` handler.
"""

from __future__ import annotations

import json
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import ValidationError

from fldistill.config import LocalConfig
from fldistill.data.federation import Federation
from fldistill.engine.training import ModelState, Objective, local_train, make_objective
from fldistill.errors import ConfigError, TrainingDiverged
from fldistill.ledger import SERVER, Kind, Ledger, Payload, hop
from fldistill.seeding import torch_gen

TaskFn = Callable[["ClientContext", Payload], Payload]
TASKS: dict[str, TaskFn] = {}
# Batched twins of tasks (the vectorised engine): (comm, requests) -> replies for the
# clients they could batch; the rest run through TASKS one by one.
BatchedTaskFn = Callable[["InProcessComm", Mapping[int, Payload]], dict[int, Payload]]
BATCHED_TASKS: dict[str, BatchedTaskFn] = {}
Engine = Literal["sequential", "vectorised", "auto"]


class Unsupported(Exception):
    """Raised by a batched task for requests it cannot batch (they run sequentially)."""


def task(name: str) -> Callable[[TaskFn], TaskFn]:
    """Register a client-side task handler under ``name``."""

    def deco(fn: TaskFn) -> TaskFn:
        TASKS[name] = fn
        return fn

    return deco


def batched_task(name: str) -> Callable[[BatchedTaskFn], BatchedTaskFn]:
    """Register the batched implementation of task ``name`` (used by the vectorised engine).

    It must give every client the reply the sequential task would give (up to float
    rounding); it may leave clients out of its result or raise :class:`Unsupported`.
    """

    def deco(fn: BatchedTaskFn) -> BatchedTaskFn:
        BATCHED_TASKS[name] = fn
        return fn

    return deco


@dataclass
class ClientContext:
    """What a client sees while it runs a task.

    Attributes
    ----------
    store : dict
        Persistent client state across rounds (tensors only, so it checkpoints).
    inbox : list of (sender, Payload)
        Device-to-device messages delivered to this client.
    """

    cid: int
    fed: Federation
    model: torch.nn.Module
    local: LocalConfig
    seed: int
    store: dict[str, torch.Tensor]
    inbox: list[tuple[int, Payload]] = field(default_factory=list)

    def data(self, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """This client's own samples."""
        return self.fed.client_data(self.cid, split)

    def gen(self, *keys: int | str) -> torch.Generator:
        """A seeded torch generator private to this client and ``keys``."""
        return torch_gen(self.seed, "client", self.cid, *keys, device=self.fed.x.device)


class Comm(ABC):
    """The transport a method talks to: the one declared interface of every engine.

    Methods use only :meth:`call`, :meth:`send`, :meth:`inbox_meta` and the attributes
    below; they never read a transport's internals.

    Attributes
    ----------
    ledger : Ledger
        Where every message is priced.
    fed : Federation
        The clients' data (the server side reads only what a server may: test sets,
        the public set, sample counts).
    model : torch.nn.Module
        The worker module (architecture of every client).
    local : LocalConfig
        Default local-training settings handed to tasks.
    seed : int
        The run seed (client streams derive from it).
    """

    ledger: Ledger
    fed: Federation
    model: torch.nn.Module
    local: LocalConfig
    seed: int

    def call(
        self,
        task_name: str,
        requests: Mapping[int, Payload],
        *,
        phase: str,
        sender: str = SERVER,
        reply_to: Mapping[int, int] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> dict[int, Payload]:
        """Send ``requests[cid]`` from role ``sender`` to each client, run ``task_name``, route replies.

        Parameters
        ----------
        task_name : str
            A registered client task (:func:`task`).
        requests : mapping
            ``{client id: request}``.
        phase : str
            The ledger phase the messages are booked under.
        sender : str
            The role that sends the requests and receives the replies: ``"server"``
            (hops ``server->client`` / ``client->server``) or an edge ``"edge:<k>"``
            (``edge->client`` / ``client->edge``), see :func:`fldistill.ledger.edge`.
        reply_to : mapping, optional
            ``{sender client: receiving client}``: that client's reply goes to the
            receiver's inbox (hop ``client->client``) instead of back to ``sender``.
        progress : callable, optional
            Called with 1 after each client, for progress bars.

        Returns
        -------
        dict
            The replies that came back to ``sender``, by client id. A client that did
            not answer (a lost Flower node) is absent; its request is still priced.
        """
        if task_name not in TASKS:
            raise ConfigError(f"unknown client task {task_name!r}; known: {', '.join(sorted(TASKS))}")
        down, up = hop(sender, "client:0"), hop("client:0", sender)
        for cid in sorted(requests):
            self.ledger.charge(down, requests[cid], phase)
        replies = self._execute(task_name, requests, progress)
        out: dict[int, Payload] = {}
        # Routed in client order, so ledgers and inbox orders are the same on every transport.
        for cid in sorted(requests):
            if cid not in replies:
                continue
            reply = replies[cid]
            if reply_to is not None and cid in reply_to:
                self.ledger.charge("client->client", reply, phase)
                self._deliver(int(reply_to[cid]), cid, reply)
            else:
                self.ledger.charge(up, reply, phase)
                out[cid] = reply
        return out

    def send(self, payload: Payload, *, src: str, dst: str, phase: str) -> int:
        """Price a transfer between two server-side roles (``edge:<k>`` <-> ``cloud``); returns its bits.

        Server-side roles live in the server process (or the ServerApp), so nothing
        moves; the ledger books the hop as a real deployment would send it.
        """
        h = hop(src, dst)
        if "client" in h:
            raise ValueError(f"send() is for server-side roles; clients are reached with call() (got {src!r} -> {dst!r})")
        return self.ledger.charge(h, payload, phase)

    def inbox_meta(self, cid: int) -> list[tuple[int, dict[str, Any]]]:
        """Sender and metadata of each device-to-device message delivered to client ``cid``."""
        return [(src, dict(p.meta)) for src, p in self.inboxes.get(cid, [])]

    def round_report(self) -> dict[str, Any]:
        """Entries for the metrics record of the round that just ended (e.g. lost clients)."""
        return {}

    # -- what a transport provides ---------------------------------------------------
    inboxes: dict[int, list[tuple[int, Payload]]]

    @abstractmethod
    def _execute(
        self, task_name: str, requests: Mapping[int, Payload], progress: Callable[[int], None] | None
    ) -> dict[int, Payload]:
        """Run ``task_name`` on each requested client; the replies that came, by client id."""

    @abstractmethod
    def _deliver(self, dst: int, src: int, reply: Payload) -> None:
        """Hand client ``src``'s reply to client ``dst`` (its inbox, before its next task)."""

    @abstractmethod
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Transport state for checkpoints: tensors plus JSON metadata."""

    @abstractmethod
    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""


class InProcessComm(Comm):
    """Runs tasks directly, in this process; routing and pricing are :class:`Comm`'s.

    Parameters
    ----------
    ledger : Ledger
        Where bits are counted.
    fed : Federation
        The clients' data.
    model : torch.nn.Module
        One reusable worker module: clients load states into it, never keep their own.
    local : LocalConfig
        Default local-training settings handed to tasks.
    seed : int
        The run seed (client streams derive from it).
    engine : {"sequential", "vectorised", "auto"}
        How a call's clients run: one after the other, or batched where the task has a
        batched implementation (:data:`BATCHED_TASKS`) that supports the call. ``auto``
        falls back silently; ``vectorised`` falls back too, with a one-time warning. If a
        batched implementation fails unexpectedly (a loss that ``vmap`` cannot run),
        ``auto`` warns and reruns the call sequentially, ``vectorised`` raises.

    Attributes
    ----------
    client_runs : dict
        How many client tasks ran ``batched`` and ``sequential`` (tests, benchmarks).
    """

    def __init__(
        self, ledger: Ledger, fed: Federation, model: torch.nn.Module, local: LocalConfig, seed: int, engine: Engine = "sequential"
    ) -> None:
        self.ledger, self.fed, self.model, self.local, self.seed = ledger, fed, model, local, seed
        self.engine = engine
        self.stores: dict[int, dict[str, torch.Tensor]] = {}
        self.inboxes: dict[int, list[tuple[int, Payload]]] = {}
        self.client_runs = {"batched": 0, "sequential": 0}
        self._warned: set[str] = set()

    def _fallback(self, task_name: str, reason: str) -> None:
        if self.engine == "vectorised" and task_name not in self._warned:
            self._warned.add(task_name)
            warnings.warn(f"engine=vectorised: task {task_name!r} runs sequentially ({reason})", RuntimeWarning, stacklevel=3)

    def _run_batched(self, task_name: str, requests: Mapping[int, Payload]) -> dict[int, Payload]:
        """Replies of the clients the batched implementation of ``task_name`` handled."""
        if self.engine == "sequential" or len(requests) < 2:
            return {}
        from fldistill.engine import vectorised  # noqa: F401  (registers the batched tasks)

        fn = BATCHED_TASKS.get(task_name)
        if fn is None:
            self._fallback(task_name, "no batched implementation")
            return {}
        try:
            done = fn(self, requests)
        except Unsupported as why:
            self._fallback(task_name, str(why))
            return {}
        except TrainingDiverged:
            raise
        except Exception as err:  # e.g. a loss vmap cannot run (.item(), data-dependent branches)
            if self.engine == "vectorised":
                raise
            # auto: nothing was charged or changed and every client stream is keyed, so the
            # sequential engine can simply do the call again
            warnings.warn(
                f"engine=auto: batched {task_name!r} failed ({type(err).__name__}: {str(err)[:200]}); running it sequentially; "
                "mark the objective vectorisable=False to silence this",
                RuntimeWarning,
                stacklevel=3,
            )
            return {}
        if len(done) < len(requests):
            self._fallback(task_name, f"{len(requests) - len(done)} of {len(requests)} clients not batchable")
        return done

    def context(self, cid: int) -> ClientContext:
        """The context of client ``cid`` (its store persists across calls)."""
        return ClientContext(
            cid, self.fed, self.model, self.local, self.seed, self.stores.setdefault(cid, {}), self.inboxes.setdefault(cid, [])
        )

    def _execute(
        self, task_name: str, requests: Mapping[int, Payload], progress: Callable[[int], None] | None
    ) -> dict[int, Payload]:
        fn = TASKS[task_name]
        done = self._run_batched(task_name, requests)
        self.client_runs["batched"] += len(done)
        self.client_runs["sequential"] += len(requests) - len(done)
        out: dict[int, Payload] = {}
        for cid in sorted(requests):
            out[cid] = done[cid] if cid in done else fn(self.context(cid), requests[cid])
            if progress is not None:
                progress(1)
        return out

    def _deliver(self, dst: int, src: int, reply: Payload) -> None:
        self.inboxes.setdefault(dst, []).append((src, reply))

    # -- checkpointing of client-side state --------------------------------------------
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Client stores and inboxes as flat tensors plus JSON metadata."""
        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {"stores": {}, "inboxes": {}}
        for cid, st in self.stores.items():
            if st:
                meta["stores"][str(cid)] = sorted(st)
                for k, v in st.items():
                    tensors[f"store/{cid}/{k}"] = v
        for cid, box in self.inboxes.items():
            if box:
                entries = []
                for j, (src, p) in enumerate(box):
                    entries.append({"src": src, "kinds": {k: v.value for k, v in p.kinds.items()}, "meta": p.meta})
                    for k, v in p.tensors.items():
                        tensors[f"inbox/{cid}/{j}/{k}"] = v
                meta["inboxes"][str(cid)] = entries
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self.stores = {int(c): {k: tensors[f"store/{c}/{k}"] for k in keys} for c, keys in meta["stores"].items()}
        self.inboxes = {}
        for c, entries in meta["inboxes"].items():
            box = []
            for j, e in enumerate(entries):
                kinds = {k: Kind(v) for k, v in e["kinds"].items()}
                box.append((int(e["src"]), Payload({k: tensors[f"inbox/{c}/{j}/{k}"] for k in kinds}, kinds, e["meta"])))
            self.inboxes[int(c)] = box


def local_config_from(meta: Mapping[str, Any], default: LocalConfig) -> LocalConfig:
    """The request's local-training overrides (``meta["local"]``) on top of the default, validated.

    Raises
    ------
    ConfigError
        If an override is not a valid local-training setting (a negative lr, an unknown key).
    """
    over = meta.get("local")
    if not over:
        return default
    key = json.dumps(over, sort_keys=True, default=str)
    cached = _LOCAL_CACHE.get((id(default), key))
    if cached is not None and cached[0] is default:
        return cached[1]
    try:
        cfg = type(default).model_validate({**default.model_dump(), **over})
    except ValidationError as err:
        e = err.errors()[0]
        raise ConfigError(f"invalid local.{'.'.join(str(p) for p in e['loc'])} in a request: {e['msg']} (got {e.get('input')!r})") from None
    if len(_LOCAL_CACHE) > 256:  # one entry per distinct override set of a run: a handful
        _LOCAL_CACHE.clear()
    _LOCAL_CACHE[(id(default), key)] = (default, cfg)
    return cfg


# Validated override sets, so that 1,000 clients with the same request validate once.
_LOCAL_CACHE: dict[tuple[int, str], tuple[LocalConfig, LocalConfig]] = {}


def train_streams(ctx: ClientContext, req: Payload, state: ModelState) -> tuple[Objective, torch.Generator]:
    """A train request's objective (with its own seeded stream) and its batch-order stream.

    Shared by the sequential task and the vectorised engine, so both draw the same numbers.
    """
    rnd = int(req.meta.get("round", 0))
    obj = make_objective(
        req.meta.get("objective", "ce"), req.meta.get("objective_args", {}), state, ctx.model, req.tensors, ctx.gen("objective", rnd)
    )
    return obj, ctx.gen("train", rnd)


@task("train")
def train_task(ctx: ClientContext, req: Payload) -> Payload:
    """Local training from the model in ``req`` (prefix ``model``).

    Request metadata: ``round`` (for the random stream), ``objective`` and
    ``objective_args`` (default plain cross-entropy), ``local`` (overrides of the
    local-training config), ``use_inbox`` (also train on data received from other
    clients: tensors ``x`` and ``y`` of inbox payloads), ``init_from_inbox`` (start from
    the model in the newest inbox message instead of the request's, consuming it),
    ``histogram`` (also upload the client's label counts, tensor ``hist``, ``C`` floats).
    Other request tensors are handed to the objective (teacher models, control variates).

    Reply: the trained model (prefix ``model``), metadata ``n``, ``loss``, ``steps``.
    """
    if req.meta.get("init_from_inbox"):
        # A device-to-device chain (FedSeq): start from the model the previous client sent.
        if not ctx.inbox:
            raise RuntimeError(f"client {ctx.cid}: init_from_inbox but the inbox is empty")
        _, msg = ctx.inbox.pop()
        state = msg.get_state("model")
    else:
        state = req.get_state("model")
    x, y = ctx.data("train")
    if req.meta.get("use_inbox") and ctx.inbox:
        xs = [x] + [p.tensors["x"].to(x) for _, p in ctx.inbox]
        ys = [y] + [p.tensors["y"].to(y) for _, p in ctx.inbox]
        x, y = torch.cat(xs), torch.cat(ys)
    local = local_config_from(req.meta, ctx.local)
    obj, gen = train_streams(ctx, req, state)
    new, stats = local_train(ctx.model, state, x, y, local, obj, gen, where=f"client {ctx.cid}")
    reply = Payload(meta={**stats}).put_state("model", new, Kind.PARAM)
    if req.meta.get("histogram"):
        reply.put("hist", label_histogram(ctx.data("train")[1], ctx.fed.n_classes), Kind.FLOAT)
    return reply


def label_histogram(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """A client's label counts ``(C,)`` as float32 (what FedFTG, FedGen and DisUE upload)."""
    return torch.bincount(y.reshape(-1).to(torch.int64).cpu(), minlength=n_classes).to(torch.float32)
