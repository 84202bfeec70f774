"""The Flower apps: a ServerApp that runs the method through the shared Runner, and a
ClientApp that serves every registered client task.

The ServerApp never copies the round loop: it builds :class:`~fldistill.runner.Runner`
with a :class:`~fldistill.flower.comm.FlowerComm` instead of the in-process transport.
The ClientApp registers one handler per task (message type ``train.<task>``), builds the
same :class:`~fldistill.data.federation.Federation` from the run config as every other
node and the server (deterministic in the config and seed), and serves the client whose
id is its node's ``partition-id``. Its store and inbox persist in Flower's
``context.state``.

The experiment config travels as the run-config key ``fldistill-config`` (the resolved
config as JSON; :func:`write_app` puts it in the app's ``pyproject.toml``) or, in the
simulation runtime, in the app objects themselves. The ServerApp writes the run folder
named by the run-config key ``out``; with the key ``resume`` true it continues that run
from its last checkpoint (the Runner's resume), as a new Flower run whose nodes start with
an empty ``context.state``: the server sends their inboxes again (see
:mod:`fldistill.flower.comm`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fldistill.config import RunConfig, parse_config
from fldistill.data.federation import Federation
from fldistill.engine.comm import TASKS, ClientContext
from fldistill.errors import ConfigError
from fldistill.flower.codec import get_inbox_entries, get_payload, has_payload, put_inbox, put_payload
from fldistill.flower.comm import FlowerComm, discover_nodes
from fldistill.flower.trace import mark
from fldistill.ledger import Kind, Payload

log = logging.getLogger("fldistill.flower")

CONFIG_KEY = "fldistill-config"
OUT_KEY = "out"
RESUME_KEY = "resume"

# One federation per config per process: the simulation runtime reuses its workers, so
# a node builds its data once; the deployment runtime starts a process per message, which
# loads the federation from the node's disk cache (fldistill.flower.nodecache).
_NODE_CACHE: dict[str, tuple[RunConfig, Federation, torch.nn.Module]] = {}


def _run_config_value(context: Context, key: str, given: str | None) -> str:
    if given is not None:
        return given
    if key not in context.run_config:
        raise ConfigError(f"the Flower run config has no '{key}'; build the app with `fldistill flower app`")
    return str(context.run_config[key])


def _resume_flag(context: Context, given: bool | None) -> bool:
    """The ``resume`` flag: given, else the run config's (apps written before it existed: False)."""
    if given is not None:
        return given
    return bool(context.run_config.get(RESUME_KEY, False))


def _node_objects(cfg_json: str) -> tuple[RunConfig, Federation, torch.nn.Module]:
    hit = _NODE_CACHE.get(cfg_json)
    if hit is None:
        from fldistill.methods import all_methods

        # Once per process: a Ray worker unpickles the ClientApp without running the import in
        # make_client_app, and a task's local objective (MOON's, CFLHKD's KD term) registers
        # when its method's module loads.
        all_methods()
        from fldistill.flower.nodecache import node_federation
        from fldistill.runner import model_for

        cfg = parse_config(json.loads(cfg_json))
        fed = node_federation(cfg)
        hit = _NODE_CACHE[cfg_json] = (cfg, fed, model_for(cfg, fed))
    return hit


def _partition_id(context: Context) -> int:
    if "partition-id" not in context.node_config:
        raise ConfigError("this SuperNode has no partition-id; start it with --node-config 'partition-id=<client id>'")
    return int(context.node_config["partition-id"])


def make_client_app(cfg_json: str | None = None) -> ClientApp:
    """The ClientApp serving every registered fldistill task.

    Parameters
    ----------
    cfg_json : str, optional
        The resolved run config as JSON; default: the run config's ``fldistill-config``.
    """
    from fldistill.methods import all_methods

    all_methods()  # importing the methods registers their tasks
    app = ClientApp()

    @app.query("fldistill_hello")
    def hello(msg: Message, context: Context) -> Message:
        return Message(RecordDict({"hello": ConfigRecord({"partition-id": _partition_id(context)})}), reply_to=msg)

    def handle(msg: Message, context: Context) -> Message:
        task_name = msg.metadata.message_type.split(".", 1)[1]
        mark("task_start", task=task_name)
        cfg, fed, model = _node_objects(_run_config_value(context, CONFIG_KEY, cfg_json))
        torch.set_num_threads(cfg.flower.threads)
        cid = _partition_id(context)
        dev = fed.x.device
        req, head = get_payload(msg.content, "req", dev)
        if int(head["cid"]) != cid:
            raise RuntimeError(f"node with partition-id {cid} got the request of client {head['cid']}")
        st = context.state
        store = get_payload(st, "fld.store", dev)[0].tensors if has_payload(st, "fld.store") else {}
        # relayed device-to-device messages arrive with this request, before the task runs
        entries = get_inbox_entries(st, "fld.inbox", dev) + get_inbox_entries(msg.content, "relay", dev)
        inbox = [(src, p) for src, p, _ in entries]
        ctx = ClientContext(cid, fed, model, cfg.local, cfg.seed, store, inbox)
        reply = TASKS[task_name](ctx, req)
        # `entries` keeps every received payload alive, so their ids stay unique while the
        # task's pops are matched back to the server's message numbers.
        seq_of = {id(p): seq for _, p, seq in entries}
        left = [seq_of.get(id(p)) for _, p in ctx.inbox]
        put_payload(st, "fld.store", Payload(ctx.store, {k: Kind.STATE for k in ctx.store}))
        put_inbox(st, "fld.inbox", ctx.inbox, left)
        rd = RecordDict()
        # Control header, not payload (unpriced, like `cid`): which of the server's messages
        # are still in this node's inbox, and whether the task keeps a store here; the
        # server checkpoints the first and refuses to resume over the second.
        put_payload(rd, "reply", reply, inbox=left, store=sorted(ctx.store))
        mark("task_end", task=task_name)
        return Message(rd, reply_to=msg)

    for name in sorted(TASKS):
        app.train(name)(handle)
    return app


def make_server_app(
    cfg_json: str | None = None, out: str | None = None, *, quiet: bool = True, resume: bool | None = None
) -> ServerApp:
    """The ServerApp: discovers the nodes, then runs the method with the shared Runner.

    Parameters
    ----------
    cfg_json, out : str, optional
        The resolved run config as JSON and the run folder; default: the run config's
        ``fldistill-config`` and ``out``.
    resume : bool, optional
        Continue the run in ``out`` from its last checkpoint (the Runner's resume: a
        changed config is refused); default: the run config's ``resume`` (else False).
        What the nodes held (their inboxes) is sent to them again, see :class:`FlowerComm`.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        from fldistill.flower.flwrpatch import shorten_waits_from_env
        from fldistill.runner import Runner

        shorten_waits_from_env()  # set by LocalDeployment(poll_s=...); unset: Flower's own back-off
        cfg = parse_config(json.loads(_run_config_value(context, CONFIG_KEY, cfg_json)))
        out_dir = Path(_run_config_value(context, OUT_KEY, out))
        resuming = _resume_flag(context, resume)
        torch.set_num_threads(cfg.flower.threads)
        if resuming:  # the failure being resumed from is superseded by this attempt
            (out_dir / "error.txt").unlink(missing_ok=True)
        try:
            nodes = discover_nodes(grid, cfg.clients, cfg.flower.connect_timeout_s, cfg.flower.timeout_s)
            made: list[FlowerComm] = []

            def comm_factory(ledger, fed, model, local, seed):
                made.append(FlowerComm(grid, nodes, ledger, fed, model, local, seed, timeout_s=cfg.flower.timeout_s))
                return made[-1]

            summary = Runner(cfg, out_dir, resume=resuming, quiet=quiet, comm_factory=comm_factory).run()
            summary["flower"] = made[-1].summary()
            # atomically: LocalDeployment.submit polls this file and must never read half of it
            tmp = out_dir / "summary.json.tmp"
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
            os.replace(tmp, out_dir / "summary.json")
        except Exception as err:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "error.txt").write_text(f"{type(err).__name__}: {err}\n")
            raise

    return app


def write_app(cfg: RunConfig, out: str | Path, app_dir: str | Path, *, resume: bool = False) -> Path:
    """Write a Flower app project (``pyproject.toml``) that runs ``cfg`` into ``out``.

    ``flwr run APP_DIR CONNECTION`` then submits it to a SuperLink. The resolved config
    is embedded, so every SuperNode builds the same federation. With ``resume`` the app
    continues the run in ``out`` from its last checkpoint; a config that differs from the
    folder's (other than a larger ``rounds``) is refused here, before anything is submitted.
    """
    import tomli_w

    from fldistill.runner import Runner

    resolved = Runner(cfg, Path(out), quiet=True, resume=resume).cfg  # validates and resolves defaults
    app_dir = Path(app_dir)
    app_dir.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {"name": "fldistill-run", "version": "1.0.0", "dependencies": []},
        "tool": {
            "hatch": {"build": {"targets": {"wheel": {"packages": ["."]}}}},
            "flwr": {
                "app": {
                    "publisher": "fldistill",
                    "components": {
                        "serverapp": "fldistill.flower.deploy:server_app",
                        "clientapp": "fldistill.flower.deploy:client_app",
                    },
                    "config": {CONFIG_KEY: resolved.to_json(), OUT_KEY: str(Path(out).resolve()), RESUME_KEY: resume},
                }
            },
        },
    }
    path = app_dir / "pyproject.toml"
    path.write_text(tomli_w.dumps(doc))
    return path
