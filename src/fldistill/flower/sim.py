"""Flower's simulation runtime: the same apps, SuperNodes simulated in one machine (Ray)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fldistill.config import RunConfig
from fldistill.flower.apps import make_client_app, make_server_app
from fldistill.flower.local import file_stamp

if TYPE_CHECKING:
    from flwr.app import ConfigRecordValues


def run_flower_simulation(
    cfg: RunConfig, out: str | Path, *, num_cpus: int = 2, quiet: bool = True, resume: bool = False
) -> dict[str, Any]:
    """Run ``cfg`` on Flower's simulation runtime (one virtual SuperNode per client).

    Parameters
    ----------
    num_cpus : int
        CPUs Ray may use; each ClientApp takes one, so this many run at once.
    resume : bool
        Continue the run in ``out`` from its last checkpoint (as ``Runner(resume=True)``:
        a config that differs from the folder's, but for a larger ``rounds``, is refused
        before Ray starts).

    Raises
    ------
    RuntimeError
        The ServerApp failed (its error) or ended without a summary.

    Returns
    -------
    dict
        The run's ``summary.json`` (with a ``flower`` section).
    """
    from flwr.simulation import run_simulation

    from fldistill.runner import Runner

    out = Path(out)
    resolved = Runner(cfg, out, quiet=True, resume=resume).cfg  # fail fast on a bad config, before Ray starts
    cj = resolved.to_json()
    # Only what this attempt writes counts: an earlier attempt's error.txt (the failure
    # being resumed from) or summary.json (a finished run resumed again) must not be read as ours.
    before = {name: file_stamp(out / name) for name in ("error.txt", "summary.json")}
    backend: dict[str, dict[str, ConfigRecordValues]] = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": num_cpus, "num_gpus": 0},
    }
    run_simulation(
        make_server_app(cj, str(out), quiet=quiet, resume=resume), make_client_app(cj), num_supernodes=cfg.clients,
        backend_config=backend,
    )
    if file_stamp(out / "error.txt") not in (None, before["error.txt"]):
        raise RuntimeError(f"the Flower run failed: {(out / 'error.txt').read_text().strip()}")
    if file_stamp(out / "summary.json") in (None, before["summary.json"]):
        raise RuntimeError(f"the Flower simulation ended without a summary in {out}; see the log above")
    return json.loads((out / "summary.json").read_text())

