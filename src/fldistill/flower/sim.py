"""Flower's simulation runtime: the same apps, SuperNodes simulated in one machine (Ray)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fldistill.config import RunConfig
from fldistill.flower.apps import make_client_app, make_server_app

if TYPE_CHECKING:
    from flwr.app import ConfigRecordValues


def run_flower_simulation(cfg: RunConfig, out: str | Path, *, num_cpus: int = 2, quiet: bool = True) -> dict[str, Any]:
    """Run ``cfg`` on Flower's simulation runtime (one virtual SuperNode per client).

    Parameters
    ----------
    num_cpus : int
        CPUs Ray may use; each ClientApp takes one, so this many run at once.

    Returns
    -------
    dict
        The run's ``summary.json`` (with a ``flower`` section).
    """
    from flwr.simulation import run_simulation

    from fldistill.runner import Runner

    out = Path(out)
    resolved = Runner(cfg, out, quiet=True).cfg  # fail fast on a bad config, before Ray starts
    cj = resolved.to_json()
    backend: dict[str, dict[str, ConfigRecordValues]] = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": num_cpus, "num_gpus": 0},
    }
    run_simulation(
        make_server_app(cj, str(out), quiet=quiet), make_client_app(cj), num_supernodes=cfg.clients, backend_config=backend
    )
    if (out / "error.txt").exists():
        raise RuntimeError(f"the Flower run failed: {(out / 'error.txt').read_text().strip()}")
    if not (out / "summary.json").exists():
        raise RuntimeError(f"the Flower simulation ended without a summary in {out}; see the log above")
    return json.loads((out / "summary.json").read_text())
