"""The engine benchmark's workload as a Flower 1.41 app, run by Flower's simulation runtime.

Identical work to ``fldistill run`` with FedAvg on mnist1d (or ``dataset``) IID: the same federation
(``federation_for``), the same seeded initial model (``model_for``), the same local SGD
(``local_train`` with FedAvg's resolved local config and each client's own
``("client", cid, "train", round)`` batch stream), sample-weighted averaging by Flower's
``FedAvg`` strategy, and a centralized test evaluation of the global model every round.
Only this benchmark imports ``flwr`` (install the ``flower`` extra).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

_CACHE: dict[str, Any] = {}


def _setup(clients: int, dataset_size: int | None, dataset: str = "mnist1d") -> dict[str, Any]:
    """Federation, model and resolved config, built once per process (server or Ray worker)."""
    key = f"{dataset}-{clients}-{dataset_size}"
    if key not in _CACHE:
        sys.path.insert(0, str(Path(__file__).parent))
        from engine import fedavg_cfg

        from fldistill.runner import federation_for, model_for, resolve_defaults

        torch.set_num_threads(1)
        cfg = resolve_defaults(fedavg_cfg(clients, 1, dataset_size, "cpu", dataset=dataset))
        fed = federation_for(cfg)  # exactly the in-process run's federation and seeded initial model
        model = model_for(cfg, fed)
        _CACHE[key] = {"cfg": cfg, "fed": fed, "model": model, "init": {k: v.clone() for k, v in model.state_dict().items()}}
    return _CACHE[key]


def run_flower(clients: int, rounds: int, dataset_size: int | None, workers: int = 2, dataset: str = "mnist1d") -> dict[str, Any]:
    """Run the workload through ``flwr.simulation.run_simulation``; returns timings and accuracy."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from fldistill.engine.training import evaluate, local_train, make_objective
    from fldistill.seeding import torch_gen

    # Ray workers import this module by name: make it (and the package) importable there.
    here = str(Path(__file__).parent)
    os.environ["PYTHONPATH"] = os.pathsep.join([here, *filter(None, [os.environ.get("PYTHONPATH")])])
    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        s = _setup(clients, dataset_size, dataset)
        cid = int(context.node_config["partition-id"])
        rnd = int(msg.content["config"]["server-round"])
        state = msg.content["arrays"].to_torch_state_dict()
        x, y = s["fed"].client_data(cid, "train")
        cfg = s["cfg"]
        obj = make_objective("ce", {}, state, s["model"])
        new, stats = local_train(s["model"], state, x, y, cfg.local, obj, torch_gen(cfg.seed, "client", cid, "train", rnd))
        content = RecordDict({"arrays": ArrayRecord(new), "metrics": MetricRecord({"num-examples": int(stats["n"]), "loss": stats["loss"]})})
        return Message(content=content, reply_to=msg)

    stamps: list[float] = []
    acc: list[float] = []
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        s = _setup(clients, dataset_size, dataset)
        fed = s["fed"]

        def central_eval(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            a, loss = evaluate(s["model"], arrays.to_torch_state_dict(), fed.x_test, fed.y_test)
            stamps.append(time.perf_counter())
            acc.append(a)
            return MetricRecord({"accuracy": a, "loss": loss})

        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=clients, min_train_nodes=clients)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(s["init"]), num_rounds=rounds, train_config=ConfigRecord({}),
                       evaluate_fn=central_eval, timeout=24 * 3600)

    t0 = time.perf_counter()
    run_simulation(server_app, client_app, num_supernodes=clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": workers}})
    return {"in_process_s": time.perf_counter() - t0, "round_walls": [t - t0 for t in stamps],
            "final_accuracy": acc[-1] if acc else float("nan"), "workers": workers}
