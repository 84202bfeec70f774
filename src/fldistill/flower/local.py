"""A Flower deployment on this machine: a SuperLink and N SuperNodes as real processes.

Used by ``fldistill flower deploy``, the loopback tests and the benchmarks. Every
process is started here and stopped here by its process id (and the Flower helper
processes each one spawned, found by parent id), so nothing leaks.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fldistill.config import RunConfig
from fldistill.errors import ConfigError


def free_port() -> int:
    """A TCP port that is free on the loopback interface right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


STATUS_EVERY_S = 5.0  # how often submit asks the SuperLink whether its run is still alive


def file_stamp(path: Path) -> int | None:
    """``path``'s modification time in ns, or None when it does not exist.

    Compared before and after a run, it tells a file that run wrote from a stale one of an
    earlier attempt on the same run folder (its error.txt, or the summary of a finished run
    resumed again).
    """
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def _bin(name: str) -> str:
    # Flower's console scripts live beside this interpreter (a venv) or on PATH.
    cand = Path(sys.executable).with_name(name)
    return str(cand) if cand.exists() else name


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux /proc; empty elsewhere)."""
    out = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(d.name))
    return out


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, already dead, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def descendants(pid: int) -> list[int]:
    """All processes below ``pid``."""
    out, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        out += kids
        todo += kids
    return out


@dataclass
class TLSFiles:
    """Certificates for TLS: the CA certificate, and the SuperLink's certificate and key."""

    ca: Path
    cert: Path
    key: Path


class LocalDeployment:
    """SuperLink + SuperNodes on loopback; a context manager that stops them all.

    Parameters
    ----------
    n_nodes : int
        SuperNodes to start, with ``partition-id`` 0..n_nodes-1.
    workdir : Path
        Logs, Flower's home (``FLWR_HOME``: installed apps, the CLI connection), apps.
    tls : TLSFiles, optional
        Run with TLS (see ``scripts/flower_certs.sh``); default insecure.
    node_keys : Path, optional
        With TLS: enable SuperNode authentication; the folder holds ``node-I`` (private)
        and ``node-I.pub`` for each node I (``scripts/flower_certs.sh --node-keys N``).
        Each public key is registered with the SuperLink before its node starts.
    warm : bool
        Start each SuperNode in Flower's process isolation mode beside fldistill's warm
        SuperExec (:mod:`fldistill.flower.executor`: a fresh ClientApp process per
        message, forked from one that has imported torch and fldistill); False: Flower's
        stock subprocess isolation, which starts ``flwr-clientapp`` from scratch per message.
    poll_s : float or None
        Cap on the SuperNodes' fixed waits (Flower sleeps 3 s after an empty look for a
        message): the nodes run :mod:`fldistill.flower.supernode`. None: Flower's own
        ``flower-supernode``. ``warm=False, poll_s=None`` is a stock Flower deployment.
    trace : Path, optional
        Every process appends the timestamps of its message path to this file
        (:mod:`fldistill.flower.trace`).

    Attributes
    ----------
    host : str
        The address the SuperLink listens on and everyone reaches it at (loopback here;
        a subclass that places the SuperLink on another host sets its address).
    """

    def __init__(self, n_nodes: int, workdir: str | Path, *, tls: TLSFiles | None = None, node_keys: str | Path | None = None,
                 warm: bool = True, poll_s: float | None = 0.2, trace: str | Path | None = None) -> None:
        if n_nodes < 1:
            raise ConfigError(f"a deployment needs at least one SuperNode (got {n_nodes})")
        if node_keys is not None and tls is None:
            raise ConfigError("SuperNode authentication needs TLS: pass the certificates too")
        self.n_nodes, self.tls, self.warm, self.poll_s = n_nodes, tls, warm, poll_s
        self.node_keys = Path(node_keys).resolve() if node_keys is not None else None
        self.workdir = Path(workdir).resolve()
        self.host = "127.0.0.1"
        self.port = free_port()
        self.superlink: subprocess.Popen[bytes] | None = None
        self.nodes: dict[int, subprocess.Popen[bytes]] = {}
        self.extra: list[subprocess.Popen[bytes]] = []
        self.executors: dict[int, subprocess.Popen[bytes]] = {}  # warm SuperExec of each node (warm=True)
        self.env = dict(os.environ)
        self.env["FLWR_HOME"] = str(self.workdir / "flwr-home")
        # SuperExec looks for new tasks every second by default; on loopback that is most
        # of a small task's time.
        self.env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.1")
        if trace is not None:
            self.env["FLDISTILL_FLOWER_TRACE"] = str(Path(trace).resolve())
        if poll_s is not None:
            self.env["FLDISTILL_FLOWER_POLL_S"] = str(poll_s)
        self.env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + self.env.get("PATH", "")
        # Flower's processes import fldistill: give them this interpreter's search path.
        src = str(Path(__file__).resolve().parents[2])
        self.env["PYTHONPATH"] = src + (os.pathsep + self.env["PYTHONPATH"] if self.env.get("PYTHONPATH") else "")

    @property
    def address(self) -> str:
        """The SuperLink's address (Fleet, Control and Runtime APIs share one port)."""
        return f"{self.host}:{self.port}"

    def _spawn(self, cmd: list[str], log_name: str, node: int | None = None) -> subprocess.Popen[bytes]:
        # ``node``: the client a SuperNode serves (None: the SuperLink), so that a subclass
        # can start each process on its own host; here they all share this one.
        log = open(self.workdir / "logs" / log_name, "wb")  # noqa: SIM115 (closed with the process)
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir)

    def start(self) -> LocalDeployment:
        """Start the SuperLink and the SuperNodes; write the CLI connection ``local``."""
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        home = Path(self.env["FLWR_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        link = [_bin("flower-superlink"), "--host", self.host, "--port", str(self.port), "--disable-runtime-dependency-installation"]
        link += self._tls_server_args()
        if self.node_keys is not None:
            link.append("--enable-supernode-auth")
        self.superlink = self._spawn(link, "superlink.log")
        conn = f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "{self.address}"\n'
        conn += f'root-certificates = "{self.tls.ca}"\n' if self.tls else "insecure = true\n"
        (home / "config.toml").write_text(conn)
        self._wait_for_port(60.0)
        for pid in range(self.n_nodes):
            if self.node_keys is not None:
                self.register_node(self.node_keys / f"node-{pid}.pub")
            self.start_node(pid)
        return self

    def register_node(self, public_key: Path) -> None:
        """Allow the SuperNode holding ``public_key``'s private key to join (node authentication)."""
        res = subprocess.run(
            [_bin("flwr"), "supernode", "register", str(public_key), "local"],
            env=self.env, cwd=self.workdir, capture_output=True, text=True, timeout=120,
        )
        if res.returncode != 0:
            raise RuntimeError(f"registering {public_key} failed: {res.stdout.strip()} {res.stderr.strip()}")

    def _wait_for_port(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.superlink is not None and self.superlink.poll() is not None:
                raise RuntimeError(f"the SuperLink exited; see {self.workdir / 'logs' / 'superlink.log'}")
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"the SuperLink did not open port {self.port} within {timeout_s:.0f} s")

    def _tls_server_args(self) -> list[str]:
        if self.tls is None:
            return ["--insecure"]
        return ["--ssl-ca-certfile", str(self.tls.ca), "--ssl-certfile", str(self.tls.cert), "--ssl-keyfile", str(self.tls.key)]

    def start_node(self, partition_id: int, private_key: Path | None = None) -> subprocess.Popen[bytes]:
        """Start a SuperNode serving client ``partition_id`` (with node authentication:
        signing with ``private_key``, by default ``node_keys/node-<partition_id>``)."""
        runtime_port = free_port()
        node = [sys.executable, "-m", "fldistill.flower.supernode"] if self.poll_s is not None else [_bin("flower-supernode")]
        cmd = [*node, "--superlink", self.address, "--port", str(runtime_port)]
        if self.warm:
            cmd += ["--isolation", "process"]
        cmd += ["--root-certificates", str(self.tls.ca)] if self.tls else ["--insecure"]
        cmd += ["--node-config", f"partition-id={partition_id} num-partitions={self.n_nodes}"]
        if private_key is None and self.node_keys is not None:
            private_key = self.node_keys / f"node-{partition_id}"
        if private_key is not None:
            cmd += ["--auth-supernode-private-key", str(private_key)]
        tag = f"{partition_id}-{len(self.extra) + len(self.nodes)}"
        proc = self._spawn(cmd, f"supernode-{tag}.log", node=partition_id)
        exe = None
        if self.warm:  # the node's SuperExec, on the same host, on the node's Runtime API (plain: it never leaves the host)
            ex = [sys.executable, "-m", "fldistill.flower.executor", "--runtime-api-address", f"127.0.0.1:{runtime_port}",
                  "--insecure", "--parent-pid", str(proc.pid)]
            exe = self._spawn(ex, f"superexec-{tag}.log", node=partition_id)
        if partition_id in self.nodes:  # a second node for the same client (e.g. an intruder in a test)
            self.extra += [proc, *([exe] if exe else [])]
        else:
            self.nodes[partition_id] = proc
            if exe:
                self.executors[partition_id] = exe
        return proc

    def kill_node(self, partition_id: int) -> None:
        """Kill a SuperNode abruptly (SIGKILL), as a crash or a pulled cable would."""
        procs = [self.nodes[partition_id], *([self.executors[partition_id]] if partition_id in self.executors else [])]
        kids = [k for p in procs for k in descendants(p.pid)]
        for p in procs:
            p.kill()
            p.wait()
        self._kill_pids(kids, signal.SIGKILL)

    def submit(self, cfg: RunConfig, out: str | Path, *, timeout_s: float = 600.0, resume: bool = False) -> dict[str, Any]:
        """Run ``cfg`` on this deployment (``flwr run``) and wait for its summary.

        Parameters
        ----------
        resume : bool
            Continue the run in ``out`` from its last checkpoint (a new Flower run: the
            nodes get their inboxes again); a changed config is refused before submitting.

        Raises
        ------
        RuntimeError
            The run failed (the ServerApp's error) or did not finish in ``timeout_s``.
        """
        from fldistill.flower.apps import write_app

        out = Path(out).resolve()
        app = self.workdir / "apps" / out.name
        write_app(cfg, out, app, resume=resume)
        # what an earlier attempt on this folder left (see file_stamp) is not this run's result
        before = {name: file_stamp(out / name) for name in ("error.txt", "summary.json")}
        res = subprocess.run(
            [_bin("flwr"), "run", str(app), "local", "--format", "json"],
            env=self.env, cwd=self.workdir, capture_output=True, text=True, timeout=120,
        )
        self.last_submit = res.stdout
        if res.returncode != 0 or '"success": false' in res.stdout:
            raise RuntimeError(f"flwr run failed: {res.stdout.strip()} {res.stderr.strip()}")
        run_id = str(json.loads(res.stdout).get("run-id", ""))
        deadline = time.monotonic() + timeout_s
        next_status = time.monotonic() + STATUS_EVERY_S
        while time.monotonic() < deadline:
            # A ServerApp that was killed writes nothing: the SuperLink's run status (failed
            # once its heartbeats stop, about a minute) is how we learn it. Asking costs a
            # `flwr` process, so only while no ServerApp process runs here (before it
            # starts, after it ended).
            if time.monotonic() >= next_status and not self.serverapp_pids():
                next_status = time.monotonic() + STATUS_EVERY_S
                status = self.run_status(run_id)
                ours = [file_stamp(out / n) not in (None, before[n]) for n in ("summary.json", "error.txt")]
                if status is not None and status.startswith("finished") and not any(ours):
                    raise RuntimeError(
                        f"the Flower run {run_id} ended ({status}) without a summary: its ServerApp died; "
                        f"continue it from its last checkpoint with resume (fldistill flower local --resume --out {out})"
                    )
            if file_stamp(out / "error.txt") not in (None, before["error.txt"]):
                raise RuntimeError(f"the Flower run failed: {(out / 'error.txt').read_text().strip()}")
            summary = out / "summary.json"
            if file_stamp(summary) not in (None, before["summary.json"]):
                s = json.loads(summary.read_text())
                if "flower" in s:  # written last, by the ServerApp
                    return s
            if self.superlink is not None and self.superlink.poll() is not None:
                raise RuntimeError(f"the SuperLink exited; see {self.workdir / 'logs' / 'superlink.log'}")
            time.sleep(0.5)
        raise RuntimeError(f"the Flower run did not finish within {timeout_s:.0f} s; logs in {self.workdir / 'logs'}")

    def run_status(self, run_id: str) -> str | None:
        """The SuperLink's status of run ``run_id`` (``running``, ``finished:failed``, ...); None if unknown."""
        try:
            res = subprocess.run(
                [_bin("flwr"), "ls", "local", "--run-id", run_id, "--format", "json"],
                env=self.env, cwd=self.workdir, capture_output=True, text=True, timeout=60,
            )
            runs = json.loads(res.stdout).get("runs", [])
        except (subprocess.TimeoutExpired, json.JSONDecodeError, OSError):
            return None
        return str(runs[0]["status"]) if runs else None

    def serverapp_pids(self) -> list[int]:
        """Process ids of the ServerApps running on this deployment (``flwr-serverapp``, started by the SuperLink)."""
        if self.superlink is None:
            return []
        out = []
        for pid in descendants(self.superlink.pid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(Path(a.decode(errors="replace")).name == "flwr-serverapp" for a in argv[:2]):
                out.append(pid)
        return out

    @staticmethod
    def _kill_pids(pids: list[int], sig: signal.Signals) -> None:
        for p in pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        """Stop every process started here, SuperNodes first, each by its id."""
        procs = [*self.nodes.values(), *self.extra, *self.executors.values(), *([self.superlink] if self.superlink else [])]
        kids = [k for p in procs if p.poll() is None for k in descendants(p.pid)]
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        # Flower's helpers (SuperExec, app processes) watch their parent and exit with it
        # within a few seconds; whatever has not is killed by id.
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and any(alive(k) for k in kids):
            time.sleep(0.25)
        self._kill_pids([k for k in kids if alive(k)], signal.SIGKILL)
        # SIGKILL is not instant: a niced process on a busy machine needs CPU time to exit,
        # and stop() promises that nothing outlives it.
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and any(alive(k) for k in kids):
            time.sleep(0.1)
        self.nodes, self.extra, self.executors, self.superlink = {}, [], {}, None

    def __enter__(self) -> LocalDeployment:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
