"""``fldistill flower ...``: run a method on Flower's simulation or deployment runtime.

Only argparse here: ``flwr`` is imported when a command runs, after :func:`require_flwr`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fldistill.config import RunConfig


def add_flower_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``flower sim | local | app`` to the ``fldistill`` parser."""
    from fldistill.cli import add_config_flags

    f = sub.add_parser("flower", help='run on Flower (needs: pip install "fldistill[flower]")')
    fs = f.add_subparsers(dest="flower_cmd", required=True)
    resume_help = "continue the run in --out from its last checkpoint, as a new Flower run (only a larger --rounds may change)"

    s = fs.add_parser("sim", help="Flower's simulation runtime (Ray), one virtual SuperNode per client")
    add_config_flags(s)
    s.add_argument("--cpus", type=int, default=2, help="CPUs for Ray (ClientApps running at once)")
    s.add_argument("--resume", action="store_true", help=resume_help)
    s.set_defaults(fn=cmd_sim)

    lo = fs.add_parser("local", help="deployment runtime on this machine: SuperLink + one SuperNode per client, then stop them")
    add_config_flags(lo)
    lo.add_argument("--workdir", help="logs and Flower home (default <out>.flower)")
    lo.add_argument("--tls", metavar="CERT_DIR", help="use TLS with the files of scripts/flower_certs.sh (ca.crt, server.pem, server.key)")
    lo.add_argument(
        "--node-auth",
        action="store_true",
        help="with --tls: SuperNode authentication with CERT_DIR/node-I keys (flower_certs.sh --node-keys N)",
    )
    lo.add_argument("--resume", action="store_true", help=resume_help)
    lo.add_argument(
        "--stock",
        action="store_true",
        help="Flower's own SuperNode and SuperExec: a fresh flwr-clientapp per message and Flower's fixed waits "
        "(default: fldistill's warm executor and waits capped at --poll; same numbers, several times faster per round)",
    )
    lo.add_argument("--poll", type=float, default=0.2, metavar="S", help="cap on Flower's fixed waits in seconds (default 0.2)")
    lo.set_defaults(fn=cmd_local)

    a = fs.add_parser("app", help="write a Flower app folder for `flwr run APP_DIR CONNECTION` on a running SuperLink")
    add_config_flags(a)
    a.add_argument("--app-dir", required=True, help="folder for the app's pyproject.toml")
    a.add_argument("--resume", action="store_true", help="write an app that " + resume_help.replace("continue", "continues", 1))
    a.set_defaults(fn=cmd_app)


def _setup(args: argparse.Namespace) -> tuple[RunConfig, Path]:
    """The run's config and folder; with ``--resume``, the folder's saved config (only a larger ``rounds`` may change)."""
    from fldistill.checks import check_config
    from fldistill.cli import explicit_config
    from fldistill.config import parse_config
    from fldistill.flower import require_flwr

    explicit = explicit_config(args)
    cfg = parse_config(explicit)
    if not args.resume:
        check_config(cfg)  # input errors first, before flwr and torch are imported
    require_flwr()
    from fldistill.runner import Runner

    out = Path(args.out) if args.out else Path("runs") / (cfg.run_name() + "-flower")
    # every config check before any process starts; a resume compares only what the user
    # set with config.json, as `fldistill run --resume` does
    runner = Runner(cfg, out, quiet=True, resume=args.resume, changes=explicit if args.resume else None)
    return (runner.cfg if args.resume else cfg), out


def _report(s: dict, out: Path) -> None:
    from fldistill.cli import _fmt_bits, console

    fl = s.get("flower", {})
    resent = f", + {_fmt_bits(fl['resume_bits'])} re-sent on resume" if fl.get("resume_bits") else ""
    console.print(
        f"[bold]{s['method']}[/] on Flower: final acc {s['final_accuracy']:.4f}, sent {_fmt_bits(s['total_bits'])} "
        f"(+ {_fmt_bits(fl.get('relay_bits', 0))} relayed{resent}), {s['seconds_per_round']:.2f} s/round, "
        f"missing per round {fl.get('missing_by_round')} -> {out}"
    )


def cmd_sim(args: argparse.Namespace) -> int:
    cfg, out = _setup(args)
    from fldistill.flower.sim import run_flower_simulation

    _report(run_flower_simulation(cfg, out, num_cpus=args.cpus, resume=args.resume), out)
    return 0


def cmd_local(args: argparse.Namespace) -> int:
    if not 0.01 <= args.poll <= 3.0:
        from fldistill.errors import ConfigError

        raise ConfigError(f"--poll {args.poll}: give seconds between 0.01 and 3")
    cfg, out = _setup(args)
    from fldistill.flower.local import LocalDeployment, TLSFiles

    tls = None
    if args.tls:
        d = Path(args.tls)
        tls = TLSFiles(d / "ca.crt", d / "server.pem", d / "server.key")
        for p in (tls.ca, tls.cert, tls.key):
            if not p.is_file():
                from fldistill.errors import ConfigError

                raise ConfigError(f"--tls: {p} not found; make the files with scripts/flower_certs.sh {d}")
    if args.node_auth and tls is None:
        from fldistill.errors import ConfigError

        raise ConfigError("--node-auth needs --tls CERT_DIR (with node-I keys from scripts/flower_certs.sh --node-keys N)")
    keys = Path(args.tls) if args.node_auth else None
    work = Path(args.workdir) if args.workdir else out.with_name(out.name + ".flower")
    poll = None if args.stock else float(args.poll)
    with LocalDeployment(cfg.clients, work, tls=tls, node_keys=keys, warm=not args.stock, poll_s=poll) as dep:
        s = dep.submit(cfg, out, resume=args.resume)
    _report(s, out)
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    cfg, out = _setup(args)
    from fldistill.cli import console
    from fldistill.flower.apps import write_app

    path = write_app(cfg, out.resolve(), args.app_dir, resume=args.resume)
    console.print(f"wrote {path}; submit it with: flwr run {args.app_dir} <connection>   (the run folder will be {out.resolve()})")
    return 0
