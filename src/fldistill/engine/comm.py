"""Roles, tasks and the in-process transport.

A method is a protocol: the server side sends :class:`Payload` requests to clients,
clients run a named *task* and reply. The transport prices every request and reply in
the :class:`~fldistill.ledger.Ledger` and may route a reply to another client (a
device-to-device transfer, e.g. member -> cluster head) instead of the server.

Client tasks are plain functions registered with :func:`task`. They see only their
:class:`ClientContext` (own data, a persistent store, seeded random streams) and the
payload, so the same function can serve a Flower ``ClientApp`` handler.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from fldistill.config import LocalConfig
from fldistill.data.federation import Federation
from fldistill.engine.training import ModelState, Objective, local_train, make_objective
from fldistill.errors import TrainingDiverged
from fldistill.ledger import Kind, Ledger, Payload
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


class InProcessComm:
    """Runs tasks directly, in this process, and prices every message.

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

    def call(
        self,
        task_name: str,
        requests: Mapping[int, Payload],
        *,
        phase: str,
        reply_to: Mapping[int, int] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> dict[int, Payload]:
        """Send ``requests[cid]`` to each client, run ``task_name``, collect replies.

        Parameters
        ----------
        reply_to : mapping, optional
            ``{sender: receiver}``: that sender's reply goes to the receiving client's
            inbox (hop ``client->client``) instead of back to the server.
        progress : callable, optional
            Called with 1 after each client, for progress bars.

        Returns
        -------
        dict
            Replies that came back to the server, by client id.
        """
        fn = TASKS[task_name]
        out: dict[int, Payload] = {}
        done = self._run_batched(task_name, requests)
        self.client_runs["batched"] += len(done)
        self.client_runs["sequential"] += len(requests) - len(done)
        for cid in sorted(requests):
            req = requests[cid]
            self.ledger.charge("server->client", req, phase)
            reply = done[cid] if cid in done else fn(self.context(cid), req)
            if reply_to is not None and cid in reply_to:
                dst = int(reply_to[cid])
                self.ledger.charge("client->client", reply, phase)
                self.inboxes.setdefault(dst, []).append((cid, reply))
            else:
                self.ledger.charge("client->server", reply, phase)
                out[cid] = reply
            if progress is not None:
                progress(1)
        return out

    def charge(self, hop: str, payload: Payload, phase: str) -> int:
        """Price a transfer between server-side roles (edge <-> cloud)."""
        return self.ledger.charge(hop, payload, phase)

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
    """The request's local-training overrides (``meta["local"]``) on top of the default."""
    over = meta.get("local")
    return default.model_copy(update=over) if over else default


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
    the model in the newest inbox message instead of the request's, consuming it).
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
    return Payload(meta={**stats}).put_state("model", new, Kind.PARAM)
