"""fldistill on Flower across hosts: a SuperLink and 4 SuperNodes, each in its own network namespace.

The README's "Run on several machines", step by step, over real interfaces (veth pairs
and a bridge, see fldistill.flower.netns): certificates naming the SuperLink's address,
the SuperLink bound to that address, node keys registered from the operator's machine
(the root namespace) over the Control API, SuperNodes dialling the SuperLink's address,
and ``flwr run`` from the operator. Runs where network namespaces are allowed (root,
iproute2); skips with the reason elsewhere. Part of the ``deployment`` tier.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from fldistill.flower.local import TLSFiles  # noqa: E402
from fldistill.flower.netns import SUBNET, NamespaceDeployment, netns_inode, unavailable_reason  # noqa: E402
from fldistill.runner import Runner  # noqa: E402

# the configs and the equality check of the loopback tests (pytest puts tests/ on sys.path)
from test_flower import _assert_same_run, _fedavg, _hfldd, stop_leaving_nothing  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.deployment]

N_NODES = 4


@pytest.fixture(scope="module")
def netns_deployment(tmp_path_factory):
    """SuperLink + 4 SuperNodes on 5 namespace hosts, TLS and node authentication on.

    Stops every process by id and deletes every namespace and interface even when a
    test fails, then checks that nothing outlived it.
    """
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"needs Linux network namespaces: {reason}")
    if not (shutil.which("openssl") and shutil.which("ssh-keygen")):
        pytest.skip("needs openssl and ssh-keygen")
    root = tmp_path_factory.mktemp("flower-netns")
    certs = root / "certs"
    script = Path(__file__).resolve().parents[1] / "scripts" / "flower_certs.sh"
    # README step 2: the SuperLink's certificate names the address the others dial
    subprocess.run(["bash", str(script), str(certs), f"{SUBNET}.1", "--node-keys", str(N_NODES)], check=True, capture_output=True)
    dep = NamespaceDeployment(N_NODES, root / "deploy", tls=TLSFiles(certs / "ca.crt", certs / "server.pem", certs / "server.key"), node_keys=certs)
    started = False
    try:
        dep.start()  # if it fails, it has stopped what it started and deleted the network
        started = True
        yield dep
    finally:
        pids = stop_leaving_nothing(dep)
        assert pids or not started, "no Flower process to check"
        assert not dep.stray, f"processes {dep.stray} were left in the namespaces after stop()"
        assert not dep.net.leftovers(), "a namespace or interface outlived stop()"


def test_netns_processes_run_on_their_own_hosts(netns_deployment: NamespaceDeployment) -> None:
    """Each SuperNode and the SuperLink run in their own namespace, none in the operator's."""
    dep = netns_deployment
    assert dep.superlink is not None
    placed = {dep.superlink.pid: dep.net.link_ns} | {p.pid: dep.net.node_ns(i) for i, p in dep.nodes.items()}
    # a node started a moment ago may still be `ip netns exec` before its setns()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(netns_inode(p) != dep.net.inode(ns) for p, ns in placed.items()):
        time.sleep(0.2)
    assert {p: netns_inode(p) for p in placed} == {p: dep.net.inode(ns) for p, ns in placed.items()}
    inodes = {netns_inode(p.pid) for p in [dep.superlink, *dep.nodes.values()]} | {netns_inode(os.getpid())}
    assert len(inodes) == N_NODES + 2
    assert dep.address == f"{SUBNET}.1:9093"
    # the code the hosts run is this checkout's (the test imports it from there too)
    import fldistill

    assert dep.env["PYTHONPATH"].split(os.pathsep)[0] == str(Path(fldistill.__file__).resolve().parents[1])


def test_netns_fedavg_matches_inprocess(netns_deployment: NamespaceDeployment, tmp_path: Path, make_cfg) -> None:
    dep = netns_deployment
    cfg = _fedavg(make_cfg)
    Runner(cfg, tmp_path / "ref", quiet=True).run()
    before = sum(dep.net.rx_bytes(dep.net.node_ns(i)) for i in range(N_NODES))
    s = dep.submit(cfg, tmp_path / "fedavg", timeout_s=900)
    _assert_same_run(tmp_path / "ref", tmp_path / "fedavg")
    assert set(s["flower"]["nodes"]) == {str(i) for i in range(N_NODES)}
    # the models reached the nodes over their veths (float32 on the wire, as the ledger's B1=32 counts them)
    received = sum(dep.net.rx_bytes(dep.net.node_ns(i)) for i in range(N_NODES)) - before
    assert received >= s["bits"]["server->client"] // 8


def test_netns_hfldd_matches_inprocess(netns_deployment: NamespaceDeployment, tmp_path: Path, make_cfg) -> None:
    """HFLDD adds the members' data relayed through the server to their heads."""
    dep = netns_deployment
    cfg = _hfldd(make_cfg)
    Runner(cfg, tmp_path / "ref", quiet=True).run()
    s = dep.submit(cfg, tmp_path / "hfldd", timeout_s=900)
    _assert_same_run(tmp_path / "ref", tmp_path / "hfldd")
    assert s["bits"]["client->client"] > 0 and s["flower"]["relay_bits"] == s["bits"]["client->client"]
    log = (dep.workdir / "logs" / "superlink.log").read_text()
    assert f"running on https://{dep.address}" in log
    # the SuperLink's access log: who called it from where (uvicorn's "HOST:PORT - "POST PATH")
    calls = set(re.findall(r"(\d+\.\d+\.\d+\.\d+):\d+ - \"POST (/v1/[a-z-]+/[a-z-]+)", log))
    operator = dep.net.operator_address
    assert {(operator, "/v1/control/register-node"), (operator, "/v1/control/start-run")} <= calls
    assert {(dep.net.node_address(i), "/v1/fleet/activate-node") for i in range(N_NODES)} <= calls
    summary = json.loads((tmp_path / "hfldd" / "summary.json").read_text())
    assert summary["status"] == "completed"


def test_netns_skip_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where namespaces are not allowed the fixture skips, saying why (no fixture: runs anywhere)."""
    from fldistill.flower import netns

    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    assert unavailable_reason() == "network namespaces need root"
    monkeypatch.setattr(netns.os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns, "_ip_bin", lambda: None)
    assert unavailable_reason() == "iproute2's `ip` is not installed"
    monkeypatch.setattr(netns, "_ip_bin", lambda: "/usr/sbin/ip")
    refused = subprocess.CompletedProcess([], 1, "", "mount --make-shared /run/netns failed: Operation not permitted\n")
    monkeypatch.setattr(netns, "_ip", lambda *args, check=True: refused)
    assert unavailable_reason() == "`ip netns add` failed: mount --make-shared /run/netns failed: Operation not permitted"
