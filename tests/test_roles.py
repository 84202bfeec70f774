"""Role-aware transport: a toy two-level protocol (clients -> 2 edges -> cloud) whose
ledger equals its closed form, on both in-process engines and across a resume."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fldistill.engine.comm import local_config_from
from fldistill.errors import ConfigError
from fldistill.ledger import CLOUD, Kind, Payload, edge, hop, role_kind
from fldistill.methods import register
from fldistill.methods.base import Method, RunContext
from fldistill.runner import Runner

K, R_E = 2, 2  # edges, edge rounds per cloud round


@register
class ToyHierarchy(Method):
    """Hierarchical FedAvg: R_E edge rounds per edge, then edges -> cloud -> edges."""

    name = "toy_hierarchy"
    description = "test-only two-level FedAvg"

    def __init__(self, ctx: RunContext, params: Any) -> None:
        super().__init__(ctx, params)
        self.groups = [g.tolist() for g in np.array_split(np.arange(self.fed.n_clients), K)]
        self.edges = self.new_bank("edges", ctx.init_state, rows=K, fill="template")

    def round(self, t: int) -> dict[str, Any]:
        free = self.cfg.ledger.init_model_free
        for r in range(R_E):
            for k, members in enumerate(self.groups):
                req = Payload().put_state("model", self.edges.get(k), self.edges.kind(k, free)).with_meta(round=t * R_E + r)
                replies = self.comm.call("train", {c: req for c in members}, phase="edge", sender=edge(k))
                self.edges.set(k, self.average(replies))
        for k in range(K):
            self.comm.send(Payload().put_state("model", self.edges.get(k), Kind.PARAM), src=edge(k), dst=CLOUD, phase="cloud")
        sizes = self.fed.train_sizes()
        from fldistill.engine.training import weighted_average

        self.set_global(weighted_average([self.edges.get(k) for k in range(K)], [float(sizes[g].sum()) for g in self.groups]))
        for k in range(K):
            self.comm.send(self.model_payload(), src=CLOUD, dst=edge(k), phase="cloud")
            self.edges.set(k, self.global_state)
        return {}


def _closed_form(n: int, w: int, rounds: int, b1: int = 32) -> dict[str, dict[str, int]]:
    """Bits per phase and hop: the first edge round's downlink is the seed (free)."""
    return {
        "edge": {"edge->client": n * w * b1 * (rounds * R_E - 1), "client->edge": n * w * b1 * rounds * R_E},
        "cloud": {"edge->cloud": K * w * b1 * rounds, "cloud->edge": K * w * b1 * rounds},
    }


@pytest.mark.parametrize("engine", ["sequential", "vectorised"])
def test_two_level_ledger_equals_closed_form(tmp_path: Path, make_cfg, engine: str) -> None:
    rounds, n = 3, 6
    r = Runner(make_cfg(method="toy_hierarchy", clients=n, rounds=rounds, engine=engine), tmp_path / engine, quiet=True)
    s = r.run()
    w = sum(v.numel() for v in r.model.state_dict().values())
    want = _closed_form(n, w, rounds)
    assert r.ledger.by_phase == want
    assert s["bits"]["server->client"] == s["bits"]["client->server"] == 0
    assert s["total_bits"] == sum(sum(d.values()) for d in want.values())
    # one message per client per edge round each way, one per edge per cloud round each way
    assert r.ledger.messages["edge->client"] == r.ledger.messages["client->edge"] == n * R_E * rounds
    assert r.ledger.messages["edge->cloud"] == r.ledger.messages["cloud->edge"] == K * rounds
    last = json.loads((tmp_path / engine / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["bits"]["edge->cloud"] == K * w * 32 * rounds and s["final_accuracy"] > 0.2


def test_two_level_resume_equals_uninterrupted(make_cfg, resume_check) -> None:
    # the edge models live in a state bank: checkpointed without code in the method
    resume_check(make_cfg(method="toy_hierarchy", clients=6, rounds=4), cut_at=2)


def test_roles_and_hops() -> None:
    assert hop("server", "client:3") == "server->client" and hop("client:0", edge(1)) == "client->edge"
    assert hop(edge(0), CLOUD) == "edge->cloud" and role_kind(edge(12)) == "edge"
    for bad in ("edge", "edge:x", "client", "satellite:1", "server:2"):
        with pytest.raises(ValueError, match="unknown role"):
            role_kind(bad)
    with pytest.raises(ValueError, match="no hop"):
        hop(CLOUD, "client:0")  # the cloud reaches clients only through their edge


def test_transport_refuses_unroutable_messages(tmp_path: Path, make_cfg) -> None:
    r = Runner(make_cfg(clients=4, rounds=1), tmp_path / "r", quiet=True)
    m = r.build()
    req = m.model_payload().with_meta(round=1)
    with pytest.raises(ValueError, match="no hop"):
        r.comm.call("train", {0: req}, phase="x", sender=CLOUD)
    with pytest.raises(ValueError, match="server-side roles"):
        r.comm.send(req, src=edge(0), dst="client:1", phase="x")
    with pytest.raises(ConfigError, match="unknown client task"):
        r.comm.call("no_such_task", {0: req}, phase="x")
    assert r.ledger.total == 0  # nothing was priced before the refusal


def test_request_local_overrides_are_validated(make_cfg) -> None:
    default = make_cfg().local
    assert local_config_from({"local": {"lr": 0.5}}, default).lr == 0.5
    with pytest.raises(ConfigError, match="local.lr"):
        local_config_from({"local": {"lr": -1.0}}, default)
    with pytest.raises(ConfigError, match="local.nope"):
        local_config_from({"local": {"nope": 1}}, default)


def test_methods_never_read_transport_internals() -> None:
    root = Path(__file__).resolve().parents[1] / "src" / "fldistill"
    offenders = []
    for f in sorted((root / "methods").glob("*.py")) + sorted((root / "cluster").glob("*.py")):
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if re.search(r"comm\.(inboxes|stores|pending|_\w+)\b", line):
                offenders.append(f"{f.name}:{i}")
    assert offenders == [], f"methods reach into the transport: {offenders}"
