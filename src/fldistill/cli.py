"""The ``fldistill`` command line: run, compare, list, demo."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape  # messages hold brackets ("fldistill[flower]") that are not markup
from rich.table import Table

from fldistill.config import RunConfig, apply_overrides, load_toml, parse_config
from fldistill.errors import ConfigError, FLDistillError

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
    from fldistill.checks import check_config
    from fldistill.errors import check_output_dir

    explicit = explicit_config(args)
    cfg = parse_config(explicit)
    out = Path(args.out) if args.out else Path("runs") / cfg.run_name()
    if not args.resume:  # a new run's input errors are found before torch is imported (seconds on a busy machine)
        check_config(cfg)
        check_output_dir(out)
    from fldistill.report.compare import last_k_label
    from fldistill.runner import Runner

    changes = explicit if args.resume else None  # a resume checks only what the user set against config.json
    runner = Runner(cfg, out, resume=args.resume, quiet=args.quiet, console=err_console, changes=changes)
    s = runner.run()
    console.print(
        f"[bold]{s['method']}[/] {s['dataset']} {s['partition']} N={s['clients']}: "
        f"final acc {s['final_accuracy']:.4f} ({last_k_label(int(s['rounds']))}: {s['final_accuracy_mean5']:.4f}, "
        f"best {s['best_accuracy']:.4f} "
        f"at round {s['best_round']}), sent {_fmt_bits(s['total_bits'])}, {s['wall_s']:.1f} s "
        f"({s['seconds_per_round']:.3f} s/round) -> {out}"
    )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from fldistill.errors import check_output_dir
    from fldistill.report.compare import compare_runs, render_table
    from fldistill.report.seeds import SEED_OUTPUTS, render_seed_table

    out = check_output_dir(Path(args.out) if args.out else Path(args.runs[0]).parent / "compare")
    seed_rows: list[dict] = []
    rows = compare_runs([Path(r) for r in args.runs], out, target=args.target, seed_rows=seed_rows)
    console.print(render_table(rows, title=f"comparison ({out})"))
    written = "compare.md, compare.csv, accuracy_vs_round.png, accuracy_vs_bits.png"
    if seed_rows:  # some runs differ only in seed: their statistics over seeds follow
        console.print(render_seed_table(seed_rows, title="over seeds (runs that differ only in seed are grouped)"))
        written += ", " + ", ".join(SEED_OUTPUTS)
    console.print(f"wrote {out}/{written}")
    return 0


def _print_rows(title: str, columns: tuple[str, ...], rows: Sequence[tuple[str, ...]], markdown: bool) -> None:
    if markdown:
        esc = [tuple(c.replace("|", "\\|") for c in r) for r in rows]
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + ["| " + " | ".join(r) + " |" for r in esc]
        print("\n".join(lines))
        return
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*r)
    console.print(table)


def cmd_list(args: argparse.Namespace) -> int:
    # Catalogues only: listing must not import torch (it starts in a fraction of the time).
    if args.what == "methods":
        from fldistill.methods.catalog import method_card, method_names, param_rows

        if args.markdown:
            rows = [(n, method_card(n).description) for n in method_names()]
            _print_rows("methods", ("method", "description"), rows, True)
            return 0
        for n in method_names():
            card = method_card(n)
            console.print(f"[bold]{n}[/]: {card.description}", highlight=False)
            prows = [(f"params.{k}", t, d, desc) for k, t, d, desc in param_rows(n)]
            if prows:
                _print_rows("", ("parameter", "type", "default", "meaning"), prows, False)
            local = ", ".join(f"local.{k}={v}" for k, v in card.local_defaults.items())
            per_family: dict[str, list[str]] = {}
            for fam, over in card.family_defaults.items():
                per_family.setdefault(fam, []).extend(f"local.{k}={v}" for k, v in over.items())
            for fam, over in card.family_params.items():
                per_family.setdefault(fam, []).extend(f"params.{k}={v}" for k, v in over.items())
            fams = "".join(f"; on {fam} data: " + ", ".join(items) for fam, items in per_family.items())
            console.print(f"  local defaults: {local or 'the config defaults'}{fams}\n", highlight=False)
    elif args.what == "datasets":
        from fldistill.data.registry import DATASETS

        drows = [(d.name, str(d.n_classes or "from folder"), str(d.input_shape or "from folder"), d.description) for d in DATASETS.values()]
        _print_rows("datasets", ("dataset", "classes", "input shape", "source"), drows, args.markdown)
    elif args.what == "models":
        from fldistill.model_catalog import MODEL_CARDS

        mrows = [(c.name, f"{c.parameters:,}", c.description) for c in MODEL_CARDS.values()]
        _print_rows("models", ("model", "parameters", "description"), mrows, args.markdown)
    else:
        from fldistill.config import config_keys

        krows = [(f"`{k}`" if args.markdown else k, t, d, m) for k, t, d, m in config_keys()]
        title = "config keys (set with --set KEY=VALUE or in a --config TOML file)"
        _print_rows(title, ("key", "type", "default", "meaning"), krows, args.markdown)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from fldistill.report.show import show_run

    show_run(Path(args.run), console, rounds=args.rows)
    return 0


def _sweep_runs(args: argparse.Namespace, base: dict[str, Any], kind: str) -> tuple[Path, list[Any], list[Any], list[int]]:
    """Plan and execute the runs of a ``sweep`` or ``tune`` command: (out, runs, outcomes, seeds)."""
    from fldistill.sweep import execute, parse_grid, parse_seeds, plan

    if args.seeds and "seed" in base:
        raise ConfigError("give either --seed or --seeds, not both (--seeds 0,1,2 runs every grid point once per seed)")
    seeds = parse_seeds(args.seeds) if args.seeds else [int(base.pop("seed", 0))]
    base.pop("seed", None)
    grid = parse_grid(args.grid or [])
    out = Path(args.out) if args.out else Path("runs") / f"{kind}-{parse_config(base).run_name().rsplit('-s', 1)[0]}"
    runs = plan(base, grid, seeds, out)
    outcomes = execute(base, runs, out, workers=args.workers, console=err_console, quiet=args.quiet)
    for o in outcomes:
        if o.status == "failed":
            err_console.print(f"[red]failed:[/] {o.run.name}: {escape(o.message)} (log: {o.run.log(out)})", highlight=False)
    return out, runs, outcomes, seeds


def cmd_sweep(args: argparse.Namespace) -> int:
    base = explicit_config(args)
    out, _, outcomes, _ = _sweep_runs(args, base, "sweep")
    failed = [o for o in outcomes if o.status == "failed"]
    if len(failed) < len(outcomes):
        from fldistill.sweep import aggregate, finished_runs

        # every finished run of the folder, earlier calls' included (another grid, more seeds)
        console.print(aggregate(finished_runs(out), out, target=args.target))
        console.print(f"wrote {out}/sweep.md, sweep.csv, accuracy_bands.png; runs in {out}/<point>/s<seed>")
    return 1 if failed else 0


def cmd_tune(args: argparse.Namespace) -> int:
    from fldistill.sweep import TUNE_FRACTION, score_points, tuned_config

    base = explicit_config(args)
    if not args.grid:
        raise ConfigError("tune needs at least one --grid KEY=V1,V2 (e.g. --grid local.lr=0.01,0.05,0.15)")
    fraction_was_set = "validation_fraction" in base
    base.setdefault("validation_fraction", TUNE_FRACTION)
    if float(base["validation_fraction"]) <= 0:
        raise ConfigError("tune scores on a validation split: validation_fraction must be > 0 (default 0.1)")
    out, runs, _, seeds = _sweep_runs(args, base, "tune")
    scores = score_points(runs, last=5)
    if not scores:
        raise ConfigError(f"no grid point finished in {out} (see {out}/logs); nothing to choose from")
    k = min(5, parse_config(base).rounds)
    table = Table(title=f"tune {out}: validation accuracy (mean of the last {k} rounds; mean ± std over {len(seeds)} seed(s))")
    for c in ("point", "val accuracy", "seeds"):
        table.add_column(c)
    for sc in scores:
        table.add_row(sc.label, f"{sc.mean:.4f} ± {sc.std:.4f}", str(sc.seeds))
    console.print(table)
    best = scores[0]
    (out / "tuned.json").write_text(json.dumps(tuned_config(base, best, fraction_was_set), indent=2, sort_keys=True) + "\n")
    chosen = ", ".join(f"{key}={v}" for key, v in best.overrides)
    console.print(f"chosen: {chosen} (validation {best.mean:.4f}); run it with: fldistill run --config {out}/tuned.json", highlight=False)
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
            try:
                s = Runner(cfg, d, resume=resume, quiet=args.quiet, console=err_console).run()
            except KeyboardInterrupt:
                again = " ".join(["fldistill", *args.argv])
                raise KeyboardInterrupt(
                    f"demo interrupted in {m.strip()}; continue it with the same command: {again} "
                    "(finished methods are reused, the interrupted one resumes from its last round)"
                ) from None
            console.print(f"final acc {s['final_accuracy']:.4f}, sent {_fmt_bits(s['total_bits'])}, {s['wall_s']:.1f} s")
        dirs.append(d)
    rows = compare_runs(dirs, out / "compare")
    console.print(render_table(rows, title="fldistill demo: mnist1d, 1 class per client, 100 clients"))
    console.print(f"plots and tables in {out}/compare and {out}/<method>/plots")
    return 0


# Flags of ``run`` that set a config key: (flag, key, type); help and default come from the config models.
_CONFIG_FLAGS: tuple[tuple[str, str, type], ...] = (
    ("--method", "method", str),
    ("--dataset", "dataset", str),
    ("--data-dir", "data_dir", str),
    ("--partition", "partition", str),
    ("--groups", "groups", str),
    ("--clients", "clients", int),
    ("--rounds", "rounds", int),
    ("--seed", "seed", int),
    ("--model", "model", str),
    ("--device", "device", str),
)


def _key_help(key: str) -> str:
    field = RunConfig.model_fields[key]
    default = field.get_default(call_default_factory=True)
    return f"{field.description} (default: {'none' if default is None else default})"


def add_config_flags(r: argparse.ArgumentParser) -> None:
    """The experiment flags of ``run`` (and ``flower`` commands): see :func:`build_config`."""
    r.add_argument("--config", metavar="FILE", help="TOML file with config keys (`fldistill list keys`; docs/config.md)")
    for flag, key, typ in _CONFIG_FLAGS:
        r.add_argument(flag, dest=key, type=typ, metavar=key.upper(), help=_key_help(key))
    r.add_argument("--out", help="run folder (default: runs/<method>-<dataset>-<partition>-n<N>-s<seed>)")
    r.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override any config key, e.g. local.lr=0.1 or params.mu=0.01 (`fldistill list keys`)",
    )


def _add_sweep_flags(p: argparse.ArgumentParser) -> None:
    """The flags ``sweep`` and ``tune`` share: the run's flags, the grid, the seeds and the workers."""
    add_config_flags(p)
    p.add_argument("--grid", action="append", metavar="KEY=V1,V2", help="a config key and its values; several --grid make a product")
    p.add_argument("--seeds", help="seeds of every grid point, e.g. 0,1,2 or 0-4 (default: the config's seed)")
    p.add_argument("--workers", type=int, help="runs at once (default: the cores this process may use); threads = cores // workers")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


class _HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to options whose default means something (not None or False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if "default" not in text and action.option_strings and d not in (None, False, argparse.SUPPRESS):
            text += f" (default: {d})"
        return text


def _all_parsers(p: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``p`` and every sub-command parser below it."""
    yield p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sp in action.choices.values():
                yield from _all_parsers(sp)


def make_parser() -> argparse.ArgumentParser:
    """The ``fldistill`` argument parser (argparse only: building it imports no torch)."""
    p = argparse.ArgumentParser(prog="fldistill", description="Federated learning on non-IID clients with distillation and clustering.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run one experiment into a run folder", description="Run one experiment into a run folder.")
    add_config_flags(r)
    r.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint (only a larger --rounds may change)"
    )
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(fn=cmd_run)

    from fldistill.flower.cli import add_flower_parser  # argparse only: flwr is imported when a command runs

    add_flower_parser(sub)

    c = sub.add_parser("compare", help="compare run folders: table + overlay plots", description="Compare run folders.")
    c.add_argument("runs", nargs="+", metavar="RUN", help="run folders made by `fldistill run`")
    c.add_argument("--out", help="folder for compare.md, compare.csv and the plots (default: <first run's parent>/compare)")
    c.add_argument(
        "--target",
        type=float,
        help="target accuracy for rounds/bits-to-target (default: 0.8 x the best centralized run among them, else 0.8 x the best run)",
    )
    c.set_defaults(fn=cmd_compare)

    ls = sub.add_parser(
        "list", help="list methods (with their parameters), datasets, models or config keys", description="List what can be configured."
    )
    ls.add_argument("what", choices=["methods", "datasets", "models", "keys"], help="what to list")
    ls.add_argument("--markdown", action="store_true", help="print a Markdown table (keys: the table of docs/config.md)")
    ls.set_defaults(fn=cmd_list)

    sh = sub.add_parser("show", help="show a run: config, summary, per-round table, plots", description="Show a run folder.")
    sh.add_argument("run", metavar="RUN", help="a run folder made by `fldistill run`")
    sh.add_argument("--rows", type=int, default=20, help="at most this many per-round rows (first, last and evenly spaced)")
    sh.set_defaults(fn=cmd_show)

    sw = sub.add_parser(
        "sweep",
        help="a grid of config values x seeds, in parallel workers; aggregated over seeds",
        description="Run a grid of config values times seeds (each an ordinary run), in parallel workers that split the cores. "
        "Run the same command again to continue: finished runs are skipped, interrupted ones resume.",
    )
    _add_sweep_flags(sw)
    sw.add_argument("--target", type=float, help="target accuracy for rounds-to-target (default: as compare)")
    sw.set_defaults(fn=cmd_sweep)

    tu = sub.add_parser(
        "tune",
        help="choose config values on a validation split (never the test set): a sweep scored on val_accuracy",
        description="Run a grid of values (x seeds) with a validation split carved from each client's training data, "
        "score each point on it (mean of the last 5 rounds), and write the best config to OUT/tuned.json.",
    )
    _add_sweep_flags(tu)
    tu.set_defaults(fn=cmd_tune)

    d = sub.add_parser(
        "demo",
        help="the quickstart job: compare methods on mnist1d with 1 class per client",
        description="The quickstart job. Run it again with the same flags to continue after an interruption.",
    )
    d.add_argument("--out", default="runs/demo", help="folder of the demo's runs and comparison")
    d.add_argument("--methods", default=",".join(DEMO_METHODS), help="comma-separated methods to compare")
    d.add_argument("--rounds", type=int, help=f"rounds per method (default: {DEMO_BASE['rounds']})")
    d.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key of every method's run")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(fn=cmd_demo)
    for parser in _all_parsers(p):
        parser.formatter_class = _HelpFormatter
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fldistill`` command."""
    argv = sys.argv[1:] if argv is None else argv
    args = make_parser().parse_args(argv)
    args.argv = argv  # for hints that repeat the command (the demo's resume)
    try:
        return int(args.fn(args))
    except FLDistillError as err:
        err_console.print(f"[red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt as err:
        err_console.print(str(err) or "interrupted", soft_wrap=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
