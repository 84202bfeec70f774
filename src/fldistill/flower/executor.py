"""A warm SuperExec: ClientApp processes forked from one that has imported everything.

A stock SuperNode (``--isolation subprocess``) starts ``flower-superexec``, which starts a
fresh ``flwr-clientapp`` process for every message. Each of those imports Flower, torch
and fldistill before it reads its message: 2-3 s on a quiet 2-core machine, tens of
seconds under load, and most of a deployment round's time (benchmarks/flower/overhead.py).

Flower's process isolation mode (``flower-supernode --isolation process``) leaves starting
the SuperExec to us. This module is that SuperExec: Flower's own ``run_superexec`` loop
(task polling, tokens, TLS, tracing unchanged) with one executor swapped in. At start it
forks a *zygote* before any gRPC channel exists; the zygote imports torch, Flower's
ClientApp runtime and fldistill's methods once, then waits on a pipe. For each task the
SuperExec writes the launch spec to the pipe and the zygote forks a child that runs
Flower's ``run_clientapp`` with that token: the same code ``flwr-clientapp`` runs, minus
the imports. A fresh process per message, as Flower's isolation promises (a crash or leak
in one message cannot reach the next), without paying for the imports each time.

Run by ``LocalDeployment`` (and its network-namespace subclass) beside each SuperNode::

    python -m fldistill.flower.executor --runtime-api-address 127.0.0.1:PORT --insecure \\
        --parent-pid SUPERNODE_PID
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

from fldistill.flower.flwrpatch import FLWR_VERSION, shorten_waits_from_env
from fldistill.flower.trace import mark


def _preload() -> None:
    """Import what every ClientApp of this project imports (in the zygote, once)."""
    import flwr.clientapp  # noqa: F401
    import flwr.supernode.runtime.run_clientapp  # noqa: F401
    import httpx
    import torch

    import fldistill.flower.apps  # noqa: F401
    from fldistill.methods import all_methods

    all_methods()  # registers every method and its objectives, as apps._node_objects does
    httpx.HTTPTransport().close()  # loads httpcore and h11, which Flower's Runtime API client imports on first use
    shorten_waits_from_env()  # the children's pulls from the SuperNode (set by LocalDeployment's poll_s)
    _warm_up(torch)


def _warm_up(torch: Any) -> None:
    """One training step of a tiny model with each optimiser: the first step of a process
    loads torch's lazy modules (the optimisers pull in parts of torch._dynamo), 1.7 s on a
    quiet core, once per message without this. One thread, so no thread pool exists to be
    broken by the forks that follow."""
    torch.set_num_threads(1)
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3))
    for opt in (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), torch.optim.Adam(model.parameters(), lr=1e-3)):
        loss = nn.functional.cross_entropy(model(torch.randn(4, 1, 6, 6)), torch.zeros(4, dtype=torch.long))
        loss.backward()
        opt.step()
        opt.zero_grad()


def _run_child(spec: dict[str, Any]) -> None:
    """In a forked child: run one ClientApp task exactly as ``flwr-clientapp`` would."""
    from flwr.supercore.tls import validate_and_resolve_root_certificates
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    run_clientapp(
        runtime_api_address=spec["address"],
        token=spec["token"],
        insecure=spec["insecure"],
        certificates=validate_and_resolve_root_certificates(spec["root"], spec["insecure"]),
        parent_pid=spec["parent_pid"],
        runtime_dependency_install=False,
    )


def _zygote(read_fd: int) -> None:
    """Preload, then fork one child per launch line until the SuperExec closes the pipe."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _preload()
    with os.fdopen(read_fd, "r", buffering=1) as pipe:
        for line in pipe:  # EOF: the SuperExec exited; so do we (running children go on)
            spec = json.loads(line)
            if os.fork() == 0:
                mark("child_start")
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the task may wait on its own children
                code = 0
                try:
                    _run_child(spec)
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else 1
                except BaseException:  # noqa: BLE001 (printed to the node's log, then the child exits)
                    import traceback

                    traceback.print_exc()
                    code = 1
                finally:
                    mark("child_end")
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
    os._exit(0)


class ZygoteExecutor:
    """Flower's ``Executor`` protocol: ClientApp tasks go to the zygote, others to a subprocess."""

    def __init__(self, write_fd: int, fallback: Any) -> None:
        self.pipe = os.fdopen(write_fd, "w", buffering=1)
        self.fallback = fallback  # Flower's SubprocessExecutor, for task types we do not fork

    def get_eligible_capacity(self, supported_task_types: set[Any], **kw: Any) -> tuple[set[Any], set[str]]:
        """Every task type can launch at once (as the subprocess executor)."""
        return self.fallback.get_eligible_capacity(supported_task_types, **kw)

    def wait_for_capacity(self, *args: Any, **kw: Any) -> None:
        """No capacity gate."""

    def launch(self, spec: Any) -> Any:
        """Hand a ClientApp task to the zygote (one line of JSON); anything else to Flower."""
        from flwr.supercore.constant import TaskType
        from flwr.supercore.superexec.executor import LaunchResult

        if spec.task_type != TaskType.CLIENT_APP:
            return self.fallback.launch(spec)
        line = {"address": spec.runtime_api_address, "token": spec.token, "insecure": spec.insecure,
                "root": spec.root_certificates_path, "parent_pid": spec.parent_pid}
        mark("launch", task_id=spec.task_id)
        try:
            self.pipe.write(json.dumps(line) + "\n")
        except OSError as e:  # the zygote died: say so, Flower's task expiry takes over
            return LaunchResult.failed(f"the warm executor's zygote is gone ({e})")
        return LaunchResult.accepted()

    def close(self) -> None:
        """Close the pipe: the zygote exits when it reads EOF."""
        try:
            self.pipe.close()
        except OSError:
            pass

    def reconcile(self) -> None:
        """No pool to maintain."""


def main(argv: list[str] | None = None) -> None:
    """Start the zygote, then Flower's SuperExec loop with the zygote executor."""
    ap = argparse.ArgumentParser(prog="python -m fldistill.flower.executor", description=__doc__.splitlines()[0])
    ap.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API (its --host:--port)")
    ap.add_argument("--insecure", action="store_true", help="connect to the Runtime API without TLS")
    ap.add_argument("--root-certificates", default=None, help="CA certificate of the Runtime API's TLS")
    ap.add_argument("--parent-pid", type=int, default=None, help="exit when this process (the SuperNode) exits")
    args = ap.parse_args(argv)
    read_fd, write_fd = os.pipe()
    if os.fork() == 0:  # before any import that could start threads or open channels
        os.close(write_fd)
        _zygote(read_fd)
    os.close(read_fd)

    import flwr
    from flwr.supercore.superexec import run_superexec as rs
    from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor

    if not flwr.__version__.startswith(FLWR_VERSION + "."):
        raise SystemExit(f"fldistill's warm executor is written for Flower {FLWR_VERSION}.x, found {flwr.__version__}: "
                         f"install flwr=={FLWR_VERSION}.* or start the SuperNode with --isolation subprocess")
    executor = ZygoteExecutor(write_fd, SubprocessExecutor())
    rs.get_executor = lambda *a, **kw: executor  # Flower's loop, our executor
    rs.run_superexec(runtime_api_address=args.runtime_api_address, insecure=args.insecure,
                     root_certificates_path=args.root_certificates, parent_pid=args.parent_pid)


if __name__ == "__main__":
    main()
