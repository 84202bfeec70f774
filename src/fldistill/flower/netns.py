"""A Flower deployment over real network interfaces: one Linux network namespace per host.

Rehearses "Run on several machines" on one Linux machine. The SuperLink's host is a
namespace holding a bridge at ``SUBNET.1``; every SuperNode's host is a namespace joined
to that bridge by a veth pair, at ``SUBNET.(10+i)``; the operator's machine, which
registers the node keys and runs ``flwr run`` against the Control API, is the root
namespace, joined by one more veth pair at ``SUBNET.2``. ``lo`` is up in every namespace
because each SuperNode's ClientApp processes reach it over its loopback Runtime API.
Traffic between the hosts crosses the veths and the bridge, so a bind address, a
certificate's SAN or a host name that only works on loopback fails here.

Needs root and iproute2 (``ip netns``); :func:`unavailable_reason` says why not.
Every name this module creates starts with ``fldn-`` and a random tag, and only those
names are ever deleted.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from fldistill.flower.local import LocalDeployment, TLSFiles, alive

PREFIX = "fldn-"
SUBNET = "10.77.0"
NETNS_DIR = Path("/run/netns")  # where `ip netns add` mounts a namespace by name


def _ip_bin() -> str | None:
    # root's PATH usually holds /usr/sbin, but a venv-first PATH may not
    return shutil.which("ip") or next((p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip") if Path(p).exists()), None)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS``; with ``check``, raise with ip's message when it fails."""
    ip = _ip_bin()
    if ip is None:
        raise RuntimeError("iproute2's `ip` was not found")
    res = subprocess.run([ip, *args], capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {res.stderr.strip() or res.stdout.strip()}")
    return res


def unavailable_reason(subnet: str = SUBNET) -> str | None:
    """Why a :class:`NamespaceDeployment` cannot run here, or None when it can.

    Parameters
    ----------
    subnet : str
        The first three octets of the /24 the deployment would use; it must not be in
        use on this machine already (another deployment, or a real network).

    Returns
    -------
    str or None
        A one-line reason (no root, no ``ip``, ``ip netns add`` refused, subnet taken).
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root"
    if _ip_bin() is None:
        return "iproute2's `ip` is not installed"
    probe = f"{PREFIX}probe-{secrets.token_hex(3)}"
    res = _ip("netns", "add", probe, check=False)
    if res.returncode != 0:
        return f"`ip netns add` failed: {res.stderr.strip() or res.stdout.strip()}"
    _ip("netns", "del", probe, check=False)
    taken = _ip("-4", "route", "show", f"{subnet}.0/24", check=False).stdout.strip()
    if taken:
        return f"{subnet}.0/24 is already routed on this machine ({taken.splitlines()[0]})"
    return None


def netns_inode(pid: int) -> int:
    """The inode of the network namespace process ``pid`` runs in."""
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def _describe(pid: int) -> str:
    """``ppid=P cmdline`` of a process, for messages."""
    try:
        ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "(gone)"
    return f"ppid={ppid} {cmd}"


@dataclass
class NamespaceNetwork:
    """The hosts and links of a namespace deployment; :meth:`create` and :meth:`destroy`.

    Parameters
    ----------
    n_nodes : int
        SuperNode hosts (at most 244: their addresses are ``SUBNET.10`` up).
    subnet : str
        First three octets of the /24 the hosts share.
    tag : str
        Prefix of every namespace and root-side interface name; random by default so
        that names never collide with another deployment's (interface names are
        limited to 15 characters: ``fldn-XXXX-op`` has 12).
    """

    n_nodes: int
    subnet: str = SUBNET
    tag: str = field(default_factory=lambda: f"{PREFIX}{secrets.token_hex(2)}")
    namespaces: list[str] = field(default_factory=list, init=False)  # created, not yet deleted
    root_links: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if not 1 <= self.n_nodes <= 244:
            raise ValueError(f"1..244 SuperNode hosts fit the /24 (got {self.n_nodes})")

    @property
    def link_ns(self) -> str:
        """The SuperLink's namespace (its host)."""
        return f"{self.tag}-link"

    def node_ns(self, i: int) -> str:
        """The namespace of SuperNode ``i``'s host."""
        return f"{self.tag}-n{i}"

    @property
    def operator_link(self) -> str:
        """The operator's (root namespace's) end of its veth pair to the bridge."""
        return f"{self.tag}-op"

    @property
    def superlink_address(self) -> str:
        """The SuperLink host's address (its bridge)."""
        return f"{self.subnet}.1"

    @property
    def operator_address(self) -> str:
        """The operator's (root namespace's) address."""
        return f"{self.subnet}.2"

    def node_address(self, i: int) -> str:
        """SuperNode ``i``'s host address."""
        return f"{self.subnet}.{10 + i}"

    def all_namespaces(self) -> list[str]:
        """Every namespace name of this network, made yet or not."""
        return [self.link_ns, *(self.node_ns(i) for i in range(self.n_nodes))]

    def _add_ns(self, name: str) -> None:
        _ip("netns", "add", name)
        self.namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def create(self) -> None:
        """Make the namespaces, the bridge, the veth pairs and the addresses.

        On failure whatever was made is left recorded for :meth:`destroy`, which the
        caller runs in any case.
        """
        reason = unavailable_reason(self.subnet)
        if reason is not None:
            raise RuntimeError(f"cannot build the namespace network: {reason}")
        link = self.link_ns
        self._add_ns(link)
        _ip("-n", link, "link", "add", "br0", "type", "bridge")
        _ip("-n", link, "addr", "add", f"{self.superlink_address}/24", "dev", "br0")
        _ip("-n", link, "link", "set", "br0", "up")
        for i in range(self.n_nodes):
            ns = self.node_ns(i)
            self._add_ns(ns)
            # created straight into the two namespaces: no name is ever taken in the root one
            _ip("link", "add", f"v{i}", "netns", link, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", link, "link", "set", f"v{i}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{self.node_address(i)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("link", "add", self.operator_link, "type", "veth", "peer", "name", "op", "netns", link)
        self.root_links.append(self.operator_link)
        _ip("-n", link, "link", "set", "op", "master", "br0", "up")
        _ip("addr", "add", f"{self.operator_address}/24", "dev", self.operator_link)
        _ip("link", "set", self.operator_link, "up")

    def pids(self) -> list[int]:
        """Processes running in any namespace made here (all of them started by us)."""
        out: list[int] = []
        for ns in self.namespaces:
            res = _ip("netns", "pids", ns, check=False)
            out += [int(x) for x in res.stdout.split()]
        return out

    def inode(self, ns: str) -> int:
        """The inode of namespace ``ns`` (compare with :func:`netns_inode`)."""
        return os.stat(NETNS_DIR / ns).st_ino

    def rx_bytes(self, ns: str, dev: str = "eth0") -> int:
        """Bytes received so far on interface ``dev`` of namespace ``ns``."""
        info = json.loads(_ip("-n", ns, "-s", "-j", "link", "show", "dev", dev).stdout)
        return int(info[0]["stats64"]["rx"]["bytes"])

    def leftovers(self) -> list[str]:
        """Names of this network's namespaces and root-side interfaces that still exist."""
        left = [ns for ns in self.all_namespaces() if (NETNS_DIR / ns).exists()]
        return left + [self.operator_link] * (_ip("link", "show", self.operator_link, check=False).returncode == 0)

    def destroy(self, timeout_s: float = 10.0) -> None:
        """Delete every interface and namespace made here (only those); idempotent.

        Raises
        ------
        RuntimeError
            Something made here is still there after ``timeout_s``.
        """
        # The root-side veth first: deleting it removes its peer at once, while a
        # namespace's interfaces are torn down asynchronously after `ip netns del`.
        for name in self.root_links:
            _ip("link", "del", name, check=False)
        for ns in reversed(self.namespaces):
            _ip("netns", "del", ns, check=False)
        deadline = time.monotonic() + timeout_s
        while (left := self.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.namespaces, self.root_links = [], []
        if left:
            raise RuntimeError(f"could not delete {left}")


class NamespaceDeployment(LocalDeployment):
    """A :class:`LocalDeployment` whose SuperLink and SuperNodes each run on their own host.

    The hosts are network namespaces (:class:`NamespaceNetwork`); the operator (node
    registration, ``flwr run``) is this process's namespace and reaches the SuperLink at
    ``SUBNET.1`` over a veth pair. Each host also gets its own Flower home and fldistill
    cache, as separate machines would have: the filesystem still shares the code, the
    certificates (copied to the nodes in a real deployment) and the run folder, which
    the ServerApp writes on the SuperLink's host.

    Parameters
    ----------
    n_nodes, workdir, tls, node_keys
        As :class:`LocalDeployment`. With TLS the SuperLink's certificate must name
        ``SUBNET.1`` (``scripts/flower_certs.sh DIR 10.77.0.1``).
    subnet : str
        First three octets of the hosts' /24.
    port : int
        The SuperLink's port (Fleet, Control and Runtime APIs); every host is fresh, so
        the README's fixed port is free.

    Attributes
    ----------
    net : NamespaceNetwork
        The hosts and links.
    stray : list of str
        Processes (id, parent id, command line) found still running in a namespace after
        the SuperNodes and the SuperLink were stopped, then killed by id; a correct stop
        leaves it empty.
    """

    def __init__(
        self,
        n_nodes: int,
        workdir: str | Path,
        *,
        tls: TLSFiles | None = None,
        node_keys: str | Path | None = None,
        subnet: str = SUBNET,
        port: int = 9093,
    ) -> None:
        super().__init__(n_nodes, workdir, tls=tls, node_keys=node_keys)
        self.net = NamespaceNetwork(n_nodes, subnet)
        self.host = self.net.superlink_address
        self.port = port
        self.stray: list[str] = []

    def host_env(self, ns: str) -> dict[str, str]:
        """The environment of processes on host ``ns``: its own Flower home and cache."""
        base = self.workdir / "hosts" / ns.removeprefix(self.net.tag + "-")
        env = dict(self.env, FLWR_HOME=str(base / "flwr-home"), FLDISTILL_CACHE=str(base / "cache"))
        Path(env["FLWR_HOME"]).mkdir(parents=True, exist_ok=True)
        return env

    def _spawn(self, cmd: list[str], log_name: str, node: int | None = None) -> subprocess.Popen[bytes]:
        ns = self.net.link_ns if node is None else self.net.node_ns(node)
        ip = _ip_bin()
        assert ip is not None  # create() checked
        log = open(self.workdir / "logs" / log_name, "wb")  # noqa: SIM115 (closed with the process)
        # `ip netns exec` execs the command in place, so the process id is Flower's own
        # and LocalDeployment.stop() finds its helpers by parent id as on loopback.
        cmd = [ip, "netns", "exec", ns, *cmd]
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.host_env(ns), cwd=self.workdir)

    def start(self) -> NamespaceDeployment:
        """Build the network, then start as :meth:`LocalDeployment.start`; on failure
        stop everything and delete the network before raising."""
        try:
            self.net.create()
            super().start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process (by id), then delete the namespaces and interfaces."""
        try:
            super().stop()
        finally:
            # A process inside our namespaces was started by this deployment (nothing else
            # runs there). One killed a moment ago may still be dying, or be a zombie
            # until init reaps it, so wait as LocalDeployment.stop() waits for helpers;
            # one still running then escaped the parent-id walk: record it, kill it by id.
            deadline = time.monotonic() + 10.0
            while (left := [p for p in self.net.pids() if alive(p)]) and time.monotonic() < deadline:
                time.sleep(0.2)
            self.stray += [f"{p} {_describe(p)}" for p in left]
            self._kill_pids(left, signal.SIGKILL)
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline and any(alive(p) for p in left):
                time.sleep(0.1)
            self.net.destroy()
