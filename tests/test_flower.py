"""fldistill on Flower: same accuracy and ledger as in-process, in both Flower runtimes.

The loopback tests share one real deployment (a SuperLink and 4 SuperNodes as
processes, with TLS and SuperNode authentication) and stop it by process id. Flower's
deployment runtime starts one process per message, so they take minutes on 2 cores: they
are the ``deployment`` tier, run by ``pytest -m deployment`` (and by CI), not by bare ``pytest``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from fldistill.flower.local import LocalDeployment, TLSFiles, alive, descendants  # noqa: E402
from fldistill.runner import Runner  # noqa: E402

pytestmark = pytest.mark.slow

HP = {"k": 2, "pretrain_epochs": 1, "pretrain_lr": 0.05, "distiller": "random", "distill_size": 20}


# Flower nodes run one client each, so the in-process reference is the sequential engine
# (the vectorised one agrees only up to float rounding).
def _fedavg(make_cfg, **over):
    return make_cfg(clients=4, rounds=2, engine="sequential", **over)


def _hfldd(make_cfg, **over):
    return make_cfg(method="hfldd", clients=4, rounds=2, params=dict(HP), public={"size": 50}, engine="sequential", **over)


def _records(d: Path) -> list[dict]:
    return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(ref: Path, got: Path) -> None:
    """Per round: accuracy within float tolerance, bits per hop identical; same ledger."""
    a, b = _records(ref), _records(got)
    assert [r["round"] for r in a] == [r["round"] for r in b]
    for ra, rb in zip(a, b):
        assert rb["accuracy"] == pytest.approx(ra["accuracy"], abs=1e-5)
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4)
        assert rb["bits"] == ra["bits"]
        assert rb["missing"] == []
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (ref, got))
    assert sb["bits"] == sa["bits"] and sb["bits_by_phase"] == sa["bits_by_phase"]
    assert sb.get("heads") == sa.get("heads")


def test_simulation_runtime_matches_inprocess(tmp_path: Path, make_cfg) -> None:
    from fldistill.flower.sim import run_flower_simulation

    cfg = _fedavg(make_cfg)
    Runner(cfg, tmp_path / "ref", quiet=True).run()
    s = run_flower_simulation(cfg, tmp_path / "sim")
    _assert_same_run(tmp_path / "ref", tmp_path / "sim")
    assert set(s["flower"]["nodes"]) == {"0", "1", "2", "3"}


# The clustered and hierarchical methods, each set to do its characteristic step within
# 2 rounds on 4 clients in two planted label-swap groups: IFCA picks clusters by loss, CFL
# splits at round 2, CFLHKD clusters after one warm-up round and runs its edges (logical
# roles of the ServerApp: edge->client hops are Flower messages, edge<->cloud are priced
# on the server) with multi-teacher KD, DisUE's client task (training, label counts, the
# encrypted update) runs on the nodes unchanged.
CLUSTERED = {
    "disue": {"iterations": 2, "batch": 16, "student_steps": 2, "noise_dim": 8, "gen_width": 8, "groups": 2},
    "ifca": {"clusters": 2},
    "cfl": {"warmup": 1, "rel_eps1": 10.0, "rel_eps2": 0.0, "min_separation": None},
    "cflhkd": {"k": 2, "edge_rounds": 2, "warmup_rounds": 1, "lam": 0.5},
}


@pytest.mark.parametrize("method", sorted(CLUSTERED))
def test_clustered_methods_on_the_simulation_runtime_match_inprocess(tmp_path: Path, make_cfg, method: str) -> None:
    """Same accuracy, bits per hop (edge hops included), ledger and cluster assignment as in-process."""
    from fldistill.flower.sim import run_flower_simulation

    cfg = _fedavg(make_cfg, method=method, params=CLUSTERED[method], partition="iid", groups="2:labelswap")
    ref = Runner(cfg, tmp_path / "ref", quiet=True).run()
    sim = run_flower_simulation(cfg, tmp_path / "sim")
    _assert_same_run(tmp_path / "ref", tmp_path / "sim")
    assert sim["bits"] == ref["bits"] and sim.get("clusters") == ref.get("clusters")
    assert set(sim["flower"]["nodes"]) == {"0", "1", "2", "3"}
    a, b = (json.loads((tmp_path / d / "clustering.json").read_text()) for d in ("ref", "sim"))
    assert a["assignment"] == b["assignment"]
    if method == "cfl":  # the split happened, so the comparison covers the clustered rounds
        assert _records(tmp_path / "sim")[-1]["n_clusters"] == 2
    if method == "cflhkd":
        assert ref["bits"]["edge->client"] > 0 and ref["bits"]["edge->cloud"] > 0


def stop_leaving_nothing(dep: LocalDeployment) -> list[int]:
    """Stop ``dep`` and assert that none of its processes, nor any they spawned, outlived it; their ids."""
    pids = [p.pid for p in [*dep.nodes.values(), *dep.extra, *dep.executors.values(), *([dep.superlink] if dep.superlink else [])]]
    pids += [k for p in pids for k in descendants(p)]
    dep.stop()
    assert not [p for p in pids if alive(p)], "a Flower process outlived stop()"
    return pids


@pytest.fixture(scope="module")
def secure_deployment(tmp_path_factory):
    """SuperLink + 4 SuperNodes with TLS and node authentication (keys from scripts/flower_certs.sh)."""
    if not (shutil.which("openssl") and shutil.which("ssh-keygen")):
        pytest.skip("needs openssl and ssh-keygen")
    root = tmp_path_factory.mktemp("flower")
    certs = root / "certs"
    script = Path(__file__).resolve().parents[1] / "scripts" / "flower_certs.sh"
    subprocess.run(["bash", str(script), str(certs), "--node-keys", "5"], check=True, capture_output=True)
    dep = LocalDeployment(4, root / "deploy", tls=TLSFiles(certs / "ca.crt", certs / "server.pem", certs / "server.key"), node_keys=certs)
    try:
        dep.start()
        dep.certs = certs  # type: ignore[attr-defined]
        yield dep
    finally:
        assert stop_leaving_nothing(dep), "no Flower process to check"


@pytest.mark.deployment
def test_loopback_deployment_matches_inprocess(secure_deployment: LocalDeployment, tmp_path: Path, make_cfg) -> None:
    """HFLDD on a real TLS deployment: same accuracy and ledger; intruders are refused.

    HFLDD covers every task kind FedAvg uses (its heads train and average as FedAvg does)
    plus the relayed D2D hop; FedAvg alone is checked on the simulation runtime above,
    which runs the same ServerApp and ClientApp (a FedAvg run here cost ~40 s of suite time).
    """
    dep = secure_deployment
    intruder = dep.start_node(1, private_key=dep.certs / "node-4")  # type: ignore[attr-defined]  # a key nobody registered
    hf_cfg = _hfldd(make_cfg)
    Runner(hf_cfg, tmp_path / "ref-hfldd", quiet=True).run()
    s = dep.submit(hf_cfg, tmp_path / "hfldd", timeout_s=600)
    _assert_same_run(tmp_path / "ref-hfldd", tmp_path / "hfldd")
    # the members' data reached the heads through the server: counted once as D2D, plus the relay
    assert s["bits"]["client->client"] > 0 and s["flower"]["relay_bits"] == s["bits"]["client->client"]
    assert intruder.wait(timeout=120) != 0, "an unregistered SuperNode was let in"
    assert "running on https://" in (dep.workdir / "logs" / "superlink.log").read_text()


@pytest.mark.deployment
def test_loopback_dropout_lost_head(secure_deployment: LocalDeployment, tmp_path: Path, make_cfg) -> None:
    """Kill the SuperNode of an HFLDD head after round 1: the run completes without it.

    Runs after the equality test on the same deployment (it leaves a node dead).
    """
    dep = secure_deployment
    cfg = _hfldd(make_cfg, flower={"timeout_s": 30})
    out = tmp_path / "hfldd"
    killed: list[int] = []

    def kill_a_head(dep: LocalDeployment) -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            m = out / "metrics.jsonl"
            if m.exists() and any(json.loads(x)["round"] == 1 for x in m.read_text().splitlines()):
                head = json.loads((out / "clustering.json").read_text())["heads"][0]
                dep.kill_node(head)
                killed.append(head)
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=kill_a_head, args=(dep,), daemon=True)
    watcher.start()
    s = dep.submit(cfg, out, timeout_s=600)
    watcher.join(timeout=5)
    assert killed, "the head was never killed"
    recs = _records(out)
    assert s["status"] == "completed" and [r["round"] for r in recs] == [0, 1, 2]
    assert recs[1]["missing"] == [] and recs[2]["missing"] == killed and recs[2]["lost_heads"] == 1
    assert s["flower"]["missing_by_round"][2] == killed
