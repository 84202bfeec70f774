"""The ``fldistill`` command line: run, compare, list, demo."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fldistill.config import RunConfig, apply_overrides, load_toml, parse_config
from fldistill.errors import FLDistillError

# Piped or logged output gets 120 columns instead of rich's 80, so tables stay whole.
console = Console(width=None if Console().is_terminal else 120)
err_console = Console(stderr=True)

# The main job of the README quickstart: the paper's hardest setting on an embedded set.
DEMO_METHODS = ("centralized", "fedavg", "fedprox", "hfldd")
DEMO_BASE: dict[str, Any] = {"dataset": "mnist1d", "partition": "classes:1", "clients": 100, "rounds": 40, "seed": 0}


def build_config(args: argparse.Namespace) -> RunConfig:
    """defaults <- --config file <- explicit flags <- --set overrides."""
    return parse_config(explicit_config(args))


def explicit_config(args: argparse.Namespace) -> dict[str, Any]:
    """Only what the user set: the ``--config`` file, explicit flags and ``--set`` overrides."""
    data: dict[str, Any] = load_toml(args.config) if args.config else {}
    flags = {
        "method": args.method,
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "partition": args.partition,
        "groups": args.groups,
        "clients": args.clients,
        "rounds": args.rounds,
        "seed": args.seed,
        "model": args.model,
        "device": args.device,
    }
    data.update({k: v for k, v in flags.items() if v is not None})
    return apply_overrides(data, args.set or [])


def _fmt_bits(bits: int) -> str:
    from fldistill.report.compare import format_bits

    return format_bits(bits)


def cmd_run(args: argparse.Namespace) -> int:
    from fldistill.runner import Runner

    explicit = explicit_config(args)
    cfg = parse_config(explicit)
    out = Path(args.out) if args.out else Path("runs") / cfg.run_name()
    changes = explicit if args.resume else None  # a resume checks only what the user set against config.json
    runner = Runner(cfg, out, resume=args.resume, quiet=args.quiet, console=err_console, changes=changes)
    s = runner.run()
    console.print(
        f"[bold]{s['method']}[/] {s['dataset']} {s['partition']} N={s['clients']}: "
        f"final acc {s['final_accuracy']:.4f} (mean of last 5: {s['final_accuracy_mean5']:.4f}, best {s['best_accuracy']:.4f} "
        f"at round {s['best_round']}), sent {_fmt_bits(s['total_bits'])}, {s['wall_s']:.1f} s "
        f"({s['seconds_per_round']:.3f} s/round) -> {out}"
    )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from fldistill.errors import check_output_dir
    from fldistill.report.compare import compare_runs, render_table

    out = check_output_dir(Path(args.out) if args.out else Path(args.runs[0]).parent / "compare")
    rows = compare_runs([Path(r) for r in args.runs], out, target=args.target)
    console.print(render_table(rows, title=f"comparison ({out})"))
    console.print(f"wrote {out}/compare.md, compare.csv, accuracy_vs_round.png, accuracy_vs_bits.png")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    table = Table(title=args.what)
    if args.what == "methods":
        from fldistill.methods import all_methods

        table.add_column("method")
        table.add_column("description")
        for name, cls in all_methods().items():
            table.add_row(name, cls.description)
    elif args.what == "datasets":
        from fldistill.data.registry import DATASETS

        for c in ("dataset", "classes", "input shape", "source"):
            table.add_column(c)
        for d in DATASETS.values():
            table.add_row(d.name, str(d.n_classes or "from folder"), str(d.input_shape or "from folder"), d.description)
    else:
        from fldistill.models import list_models

        for c in ("model", "parameters", "description"):
            table.add_column(c)
        for name, desc, n in list_models():
            table.add_row(name, f"{n:,}", desc)
    console.print(table)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the quickstart comparison: methods on mnist1d, 1 class per client, then compare."""
    from fldistill.report.compare import compare_runs, render_table
    from fldistill.runner import Runner

    out = Path(args.out)
    dirs = []
    for m in args.methods.split(","):
        base = dict(DEMO_BASE, method=m.strip())
        if args.rounds:
            base["rounds"] = args.rounds
        cfg = parse_config(apply_overrides(base, args.set or []))
        d = out / m.strip()
        console.rule(f"{m}: {cfg.dataset} {cfg.partition}, {cfg.clients} clients, {cfg.rounds} rounds")
        resume = not (d / "summary.json").exists() and (d / "metrics.jsonl").exists()
        if (d / "summary.json").exists():
            console.print(f"{d} already complete, reusing it")
        else:
            s = Runner(cfg, d, resume=resume, quiet=args.quiet, console=err_console).run()
            console.print(f"final acc {s['final_accuracy']:.4f}, sent {_fmt_bits(s['total_bits'])}, {s['wall_s']:.1f} s")
        dirs.append(d)
    rows = compare_runs(dirs, out / "compare")
    console.print(render_table(rows, title="fldistill demo: mnist1d, 1 class per client, 100 clients"))
    console.print(f"plots and tables in {out}/compare and {out}/<method>/plots")
    return 0


def add_config_flags(r: argparse.ArgumentParser) -> None:
    """The experiment flags of ``run`` (and ``flower`` commands): see :func:`build_config`."""
    r.add_argument("--config", help="TOML file with config keys (see docs/config.md)")
    r.add_argument("--method")
    r.add_argument("--dataset")
    r.add_argument("--data-dir", dest="data_dir")
    r.add_argument("--partition", help="iid | classes:C | dirichlet:ALPHA | dirichlet-client:ALPHA | quantity:linear|square|exponential")
    r.add_argument("--groups", metavar="G:KIND", help="ground-truth client groups: G groups, KIND labelswap | rotate | signal")
    r.add_argument("--clients", type=int)
    r.add_argument("--rounds", type=int)
    r.add_argument("--seed", type=int)
    r.add_argument("--model")
    r.add_argument("--device")
    r.add_argument("--out", help="run folder (default runs/<method>-<dataset>-<partition>-n<N>-s<seed>)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key, e.g. local.lr=0.1 or params.mu=0.01")


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fldistill", description="Federated learning on non-IID clients with distillation and clustering.")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run one experiment into a run folder")
    add_config_flags(r)
    r.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(fn=cmd_run)

    from fldistill.flower.cli import add_flower_parser  # argparse only: flwr is imported when a command runs

    add_flower_parser(sub)

    c = sub.add_parser("compare", help="compare run folders: table + overlay plots")
    c.add_argument("runs", nargs="+")
    c.add_argument("--out")
    c.add_argument("--target", type=float, help="target accuracy for rounds/bits-to-target (default 0.8 x centralized)")
    c.set_defaults(fn=cmd_compare)

    ls = sub.add_parser("list", help="list methods, datasets or models")
    ls.add_argument("what", choices=["methods", "datasets", "models"])
    ls.set_defaults(fn=cmd_list)

    d = sub.add_parser("demo", help="the quickstart job: compare methods on mnist1d with 1 class per client")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--methods", default=",".join(DEMO_METHODS))
    d.add_argument("--rounds", type=int)
    d.add_argument("--set", action="append", metavar="KEY=VALUE")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fldistill`` command."""
    args = make_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except FLDistillError as err:
        from rich.markup import escape  # messages hold brackets ("fldistill[flower]") that are not markup

        err_console.print(f"[red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt as err:
        err_console.print(str(err) or "interrupted", soft_wrap=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
