"""The runner: the one round loop every method shares (above methods: it builds them).

It validates the config before any long work, builds data, model, ledger and method,
runs setup and rounds, evaluates, appends ``metrics.jsonl``, checkpoints atomically after
every round (safetensors, no pickle), resumes, and writes ``summary.json`` and plots.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fldistill.checks import check_config, method_params
from fldistill.config import RunConfig, diff_configs
from fldistill.data.federation import Federation, build_federation
from fldistill.data.registry import dataset_info, default_data_dir
from fldistill.engine.comm import Comm, InProcessComm
from fldistill.engine.evaluation import PersonalEval, personal_eval
from fldistill.engine.training import ModelState, evaluate, get_state
from fldistill.errors import ConfigError, DataError, TrainingDiverged, check_output_dir, make_output_dir
from fldistill.ledger import Ledger
from fldistill.methods import get_method
from fldistill.methods.base import Method, RunContext
from fldistill.models import build_model, default_model_for
from fldistill.seeding import seed_for

CHECKPOINT = "checkpoint/state.safetensors"
CommFactory = Callable[..., Comm]


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` laid on top, section by section."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_model_name(cfg: RunConfig) -> str:
    """The model architecture: ``cfg.model`` or the dataset's default."""
    return default_model_for(cfg.dataset) if cfg.model == "auto" else cfg.model


def local_defaults_for(method: str, dataset: str) -> dict[str, Any]:
    """A method's tuned local-training defaults on ``dataset``'s family (a run-time registered method: its class's)."""
    from fldistill.methods.catalog import dataset_family, method_spec

    return method_spec(method).defaults_for(dataset_family(dataset_info(dataset).input_shape))


def params_defaults_for(method: str, dataset: str) -> dict[str, Any]:
    """The ``params`` defaults of a method that differ on ``dataset``'s family (see ``MethodCard.family_params``)."""
    from fldistill.methods.catalog import dataset_family, method_spec

    return method_spec(method).params_for(dataset_family(dataset_info(dataset).input_shape))


def resolve_defaults(cfg: RunConfig) -> RunConfig:
    """Fill unset ``local`` fields with the method's tuned defaults; resolve ``params``."""
    defaults = local_defaults_for(cfg.method, cfg.dataset)
    unset = {k: v for k, v in defaults.items() if k not in cfg.local.model_fields_set}
    local = cfg.local.model_copy(update=unset)
    local = type(cfg.local).model_validate(local.model_dump())  # all fields now explicit
    # Method parameters are saved resolved too, so config.json alone reproduces the run
    # even if a default changes later.
    family = {k: v for k, v in params_defaults_for(cfg.method, cfg.dataset).items() if k not in cfg.params}
    if family:
        cfg = cfg.model_copy(update={"params": {**family, **cfg.params}})
    params = method_params(cfg).model_dump(mode="json")
    update: dict[str, Any] = {"local": local, "params": params}
    if cfg.data_dir is None and not dataset_info(cfg.dataset).embedded:
        update["data_dir"] = default_data_dir(cfg.dataset)  # the installed copy, recorded so config.json says what was read
    return cfg.model_copy(update=update)


def validate(cfg: RunConfig) -> None:
    """Every check that can fail fast, before data is loaded or anything is trained."""
    check_config(cfg)  # the torch-free ones first
    info = dataset_info(cfg.dataset)
    if info.input_shape:  # folder datasets of unknown shape are checked after loading
        build_model(resolve_model_name(cfg), info.input_shape, info.n_classes)
    if cfg.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{cfg.device}' requested but CUDA is not available; use --set device=cpu")
        index = int(cfg.device.split(":")[1]) if ":" in cfg.device else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device '{cfg.device}': this machine has {torch.cuda.device_count()} GPU(s) (cuda:0..); pick one of them")


def federation_for(cfg: RunConfig) -> Federation:
    """The run's federation: every engine (and every Flower node) builds the same one."""
    params = method_params(cfg)
    return build_federation(
        cfg.dataset,
        cfg.partition,
        cfg.clients,
        cfg.seed,
        data_dir=cfg.data_dir,
        dataset_size=cfg.dataset_size,
        local_test_fraction=cfg.local_test_fraction,
        public_source=cfg.public.source if get_method(cfg.method).uses_public(params) else None,
        public_size=cfg.public.size,
        public_dir=cfg.public.data_dir,
        validation_fraction=cfg.validation_fraction,
        device=torch.device(cfg.device),
        groups=cfg.groups,
    )


def model_for(cfg: RunConfig, fed: Federation) -> torch.nn.Module:
    """The seeded initial model (also the reusable worker module of the clients)."""
    torch.manual_seed(seed_for(cfg.seed, "init"))
    return build_model(resolve_model_name(cfg), fed.input_shape, fed.n_classes).to(torch.device(cfg.device))


def _no_progress(n: int = 1) -> None:
    """The progress callback when there is no bar."""


def _read_records(path: Path) -> list[dict[str, Any]]:
    """Metrics records; a line cut short by a kill is dropped (the checkpoint predates it)."""
    out = []
    for ln in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(ln))
        except json.JSONDecodeError:
            continue
    return out


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Runner:
    """Runs one experiment into a run folder.

    Parameters
    ----------
    cfg : RunConfig
        The experiment. With ``resume`` the folder's saved config wins.
    out_dir : Path
        The run folder.
    resume : bool
        Continue from the folder's last checkpoint.
    quiet : bool
        No progress bars or per-round lines.
    comm_factory : callable, optional
        ``(ledger, fed, model, local, seed) -> Comm`` (default: :class:`InProcessComm`).
        The transport's ``round_report()`` entries (e.g. clients that did not answer) go
        into each metrics record.
    changes : dict, optional
        With ``resume``: only the keys the user set (the CLI's flags, ``--config`` and
        ``--set``), laid over the saved config; without it ``cfg`` is the intended config.
        Either way a resume refuses any change but a larger ``rounds``.
    """

    def __init__(
        self,
        cfg: RunConfig,
        out_dir: str | Path,
        *,
        resume: bool = False,
        quiet: bool = False,
        console: Console | None = None,
        comm_factory: CommFactory | None = None,
        changes: dict[str, Any] | None = None,
    ) -> None:
        self.out = check_output_dir(out_dir)
        # Another transport (Flower) with InProcessComm's interface; the round loop stays here.
        self.comm_factory: CommFactory | None = comm_factory
        self.resume = resume
        self.quiet = quiet
        self.console = console or Console(stderr=True)
        self._extended_rounds = False
        if resume:
            saved = self.out / "config.json"
            if not saved.is_file():
                raise ConfigError(f"--resume: {saved} not found; point --out at an existing run folder")
            cfg = self._resumed_config(json.loads(saved.read_text()), cfg, changes)
        elif (self.out / "metrics.jsonl").exists():
            raise ConfigError(f"run folder {self.out} already holds a run; pass --resume to continue it or choose another --out")
        validate(cfg)
        self.cfg = cfg = resolve_defaults(cfg)
        self._progress: Progress | None = None
        self._personal_last: PersonalEval | None = None  # the last evaluated round's, for summary.json

    def _resumed_config(self, saved: dict[str, Any], cfg: RunConfig, changes: dict[str, Any] | None) -> RunConfig:
        """The saved config, with ``rounds`` extended if asked; any other change is refused.

        A resume must never mix two experiments in one run folder: every key that differs
        from ``config.json`` is named in the error, before anything is loaded or trained.
        """
        from fldistill.config import parse_config

        if changes is not None:
            wanted = _merge(saved, changes)
        else:
            validate(cfg)
            wanted = json.loads(resolve_defaults(cfg).to_json())
        diff = {k: v for k, v in diff_configs(saved, wanted).items() if k != "rounds"}
        if diff:
            what = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items()))
            raise ConfigError(
                f"--resume would change the run in {self.out} ({what}); a resumed run keeps its config, "
                "only a larger rounds is allowed: drop these settings, or start a new run with another --out"
            )
        rounds = int(wanted.get("rounds", saved["rounds"]))
        if rounds < int(saved["rounds"]):
            raise ConfigError(
                f"--resume: rounds can only grow ({saved['rounds']} saved, {rounds} asked); use --rounds {saved['rounds']} or more"
            )
        self._extended_rounds = rounds > int(saved["rounds"])
        return parse_config({**saved, "rounds": rounds})

    # -- progress bars -----------------------------------------------------------------
    @contextmanager
    def _bars(self) -> Iterator[None]:
        if self.quiet:
            yield
            return
        cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*cols, console=self.console, transient=False) as p:
            self._progress = p
            try:
                yield
            finally:
                self._progress = None

    def progress(self, label: str, total: int) -> Callable[[int], None]:
        """A transient sub-bar for a long phase; returns ``advance(n)``."""
        p = self._progress
        if p is None or total <= 0:
            return _no_progress
        tid = p.add_task(f"  {label}", total=total)

        def advance(n: int = 1) -> None:
            p.advance(tid, n)
            if p.tasks[[t.id for t in p.tasks].index(tid)].finished:
                p.remove_task(tid)

        return advance

    # -- building ----------------------------------------------------------------------
    def build(self) -> Method:
        """Load data, build the model, ledger, transport and method."""
        cfg = self.cfg
        cls = get_method(cfg.method)
        params = method_params(cfg)
        fed = federation_for(cfg)
        model = model_for(cfg, fed)
        self.fed, self.model = fed, model
        self.ledger = Ledger(cfg.ledger.b1, cfg.ledger.b2, cfg.ledger.label_bits)
        self.comm: Comm
        if self.comm_factory is None:
            self.comm = InProcessComm(self.ledger, fed, model, cfg.local, cfg.seed, engine=cfg.engine)
        else:
            self.comm = self.comm_factory(self.ledger, fed, model, cfg.local, cfg.seed)
        ctx = RunContext(cfg, fed, self.comm, model, get_state(model), self.progress, self.out)
        return cls(ctx, params)

    # -- checkpoint --------------------------------------------------------------------
    def save_checkpoint(self, method: Method, round_: int, wall: float, extra: dict[str, Any]) -> None:
        """Atomically write everything needed to continue after ``round_``."""
        mt, mm = method.state_dict()
        ct, cm = self.comm.state_dict()
        tensors = {f"m/{k}": v.detach().contiguous().cpu() for k, v in mt.items()}
        tensors.update({f"c/{k}": v.detach().contiguous().cpu() for k, v in ct.items()})
        meta = {"round": round_, "wall_s": wall, "method": mm, "comm": cm, "ledger": self.ledger.state_dict(), "extra": extra}
        path = self.out / CHECKPOINT
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"fldistill": json.dumps(meta)})
        os.replace(tmp, path)

    def load_checkpoint(self, method: Method) -> dict[str, Any]:
        """Restore method, client state and ledger; returns the checkpoint metadata."""
        path = self.out / CHECKPOINT
        if not path.is_file():
            raise DataError(f"--resume: no checkpoint at {path}; the run never finished its setup, start it again without --resume")
        try:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                meta = json.loads(f.metadata()["fldistill"])
            tensors = load_file(str(path), device=str(self.fed.x.device))
        except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as err:
            raise DataError(f"checkpoint {path} is corrupt ({err}); delete the run folder and start again") from None
        try:
            method.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith("m/")}, meta["method"])
            self.comm.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith("c/")}, meta["comm"])
            self.ledger.load_state_dict(meta["ledger"])
        except (KeyError, ValueError, RuntimeError) as err:
            raise DataError(
                f"checkpoint {path} does not match this run ({type(err).__name__}: {err}); it was written by another "
                "version of fldistill or another configuration: start the run again in a new --out"
            ) from None
        return meta

    # -- the loop ----------------------------------------------------------------------
    def _evaluate(self, method: Method, t: int) -> dict[str, float]:
        rec: dict[str, float] = {}
        done: dict[int, tuple[float, float]] = {}  # a state listed under two keys is evaluated once
        for key, state in method.eval_states().items():
            if id(state) not in done:
                done[id(state)] = evaluate(self.model, state, self.fed.x_test, self.fed.y_test, self.cfg.eval_batch_size)
            acc, loss = done[id(state)]
            pre = f"{key}_" if key else ""
            rec[f"{pre}accuracy"], rec[f"{pre}loss"] = acc, loss
        if self.fed.client_val is not None:
            rec.update(self._validation(method))
        if self._personal_round(t):
            rec.update(self._personal(method))
        return rec

    def _validation(self, method: Method) -> dict[str, float]:
        """The reported model (``accuracy``'s) on the union of the clients' validation splits: what tuning scores."""
        ix = np.concatenate(self.fed.client_val or [])
        if ix.size == 0:
            return {}
        t = torch.from_numpy(ix).to(self.fed.x.device)
        acc, loss = evaluate(self.model, method.eval_states()[""], self.fed.x[t], self.fed.y[t], self.cfg.eval_batch_size)
        return {"val_accuracy": acc, "val_loss": loss}

    # -- personalised evaluation -------------------------------------------------------
    def _personal_round(self, t: int) -> bool:
        """Whether round ``t`` gets the personalised evaluation (every ``eval_every``; 0 and the last always)."""
        return t == 0 or t >= self.cfg.rounds or t % self.cfg.eval_every == 0

    def _personal_eval(self, states: list[ModelState], assign: np.ndarray) -> PersonalEval | None:
        """Each client's model on its local test split; None when no client has one."""
        if self.cfg.local_test_fraction == 0:
            return None
        pe = personal_eval(self.model, states, assign, self.fed, self.cfg.eval_batch_size)
        return pe if int(pe.n.sum()) > 0 else None

    def _personal(self, method: Method) -> dict[str, float]:
        """``personalized_*`` metrics and, with ground-truth groups, ``purity``, ``ari``, ``group_accuracy``.

        These keys are computed by the runner; where a method's own extra metrics of the
        round use the same name (HFLDD logs its clustering's ``purity`` at round 0), the
        method's value is kept (:meth:`_record` writes extras last).
        """
        out: dict[str, float] = {}
        states, assign = method.personal_models()
        assign = np.asarray(assign, dtype=np.int64)
        pe = self._personal_eval(states, assign)
        if pe is not None:
            out.update(pe.metrics())
            self._personal_last = pe
        # Ground-truth groups come with some federations (planted clusters); read them
        # defensively so that federations without them need no field.
        groups = getattr(self.fed, "client_group", None)
        if groups is None:
            return out
        groups = np.asarray(groups, dtype=np.int64)
        pred = method.cluster_assignment()
        if pred is not None:
            from fldistill.cluster import adjusted_rand, purity

            out["purity"] = purity(pred, [frozenset({int(g)}) for g in groups])
            out["ari"] = adjusted_rand(pred, groups)
        group_test = getattr(self.fed, "group_test", None)
        if group_test is not None:
            out["group_accuracy"] = self._group_accuracy(states, assign, groups, group_test)
        return out

    def _group_accuracy(
        self, states: list[ModelState], assign: np.ndarray, groups: np.ndarray, group_test: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> float:
        """Mean over groups of the accuracy, on the group's test set, of the model most of its clients use.

        Ties go to the lowest model index; groups without clients or test samples are left out.
        """
        dev = self.fed.x.device
        accs = []
        for g, (xg, yg) in enumerate(group_test):
            used = assign[groups == g]
            if used.size == 0 or len(yg) == 0:
                continue
            m = int(np.bincount(used).argmax())
            accs.append(evaluate(self.model, states[m], xg.to(dev), yg.to(dev), self.cfg.eval_batch_size)[0])
        return float(np.mean(accs)) if accs else math.nan

    def _record(self, t: int, wall: float, evals: dict[str, float], extra: dict[str, Any]) -> dict[str, Any]:
        rec: dict[str, Any] = {"round": t, **evals}
        rec["bits"] = self.ledger.snapshot()
        rec["bits_total"] = self.ledger.total
        rec["wall_s"] = round(wall, 4)
        for k, v in extra.items():
            if isinstance(v, (int, float, str, bool)) or v is None:
                rec[k] = v
        rec.update(self.comm.round_report())
        return rec

    def _check(self, t: int, rec: dict[str, Any], ref_loss: float) -> None:
        loss = rec["loss"]
        if not math.isfinite(loss) or loss > self.cfg.divergence_factor * ref_loss:
            raise TrainingDiverged(
                f"round {t}: test loss {loss:.4g} diverged (initial {ref_loss:.4g}); lower local.lr "
                f"(now {self.cfg.local.lr}) or raise divergence_factor; the last good round is checkpointed"
            )

    def run(self) -> dict[str, Any]:
        """Run (or resume) the experiment; returns the summary."""
        cfg = self.cfg
        with self._cleanup_on_early_failure():
            make_output_dir(self.out)
            t0 = time.perf_counter()
            return self._run(cfg, t0)

    @contextmanager
    def _cleanup_on_early_failure(self) -> Iterator[None]:
        """A new run that fails (or is interrupted) before its round-0 checkpoint leaves nothing behind.

        Only what this run created is removed: the folder itself if it did not exist, else
        the entries that appeared in it. A resumed run is never touched.
        """
        existed = self.out.exists()
        before = set(self.out.iterdir()) if existed and self.out.is_dir() else set()
        top = self.out  # the outermost folder this run creates (make_output_dir makes parents too)
        while not top.parent.exists() and top.parent != top:
            top = top.parent
        try:
            yield
        except BaseException:
            if not self.resume and not (self.out / CHECKPOINT).exists():
                import shutil

                if not existed:
                    shutil.rmtree(top, ignore_errors=True)
                elif self.out.is_dir():
                    for p in set(self.out.iterdir()) - before:
                        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            raise

    def _run(self, cfg: RunConfig, t0: float) -> dict[str, Any]:
        with self._bars():
            method = self.method = self.build()  # kept for inspection after the run (tests, notebooks)
            metrics_path = self.out / "metrics.jsonl"
            if self.resume:
                meta = self.load_checkpoint(method)
                if self._extended_rounds:  # the one allowed change: more rounds
                    _atomic_write_text(self.out / "config.json", cfg.to_json() + "\n")
                start, wall0, setup_extra = int(meta["round"]) + 1, float(meta["wall_s"]), meta["extra"]
                records = [r for r in _read_records(metrics_path) if r["round"] < start]
                _atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in records))
            else:
                _atomic_write_text(self.out / "config.json", cfg.to_json() + "\n")
                setup_extra = method.setup()
                wall0 = 0.0
                rec = self._record(0, time.perf_counter() - t0, self._evaluate(method, 0), setup_extra)
                records = [rec]
                _atomic_write_text(metrics_path, json.dumps(rec) + "\n")
                self.save_checkpoint(method, 0, rec["wall_s"], setup_extra)
                start = 1
            ref_loss = max(records[0]["loss"], math.log(max(self.fed.n_classes, 2)))
            bar = self._progress.add_task(f"{cfg.method} rounds", total=cfg.rounds, completed=start - 1) if self._progress else None
            try:
                for t in range(start, cfg.rounds + 1):
                    extra = method.round(t)
                    wall = wall0 + (time.perf_counter() - t0)
                    rec = self._record(t, wall, self._evaluate(method, t), extra)
                    self._check(t, rec, ref_loss)
                    records.append(rec)
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(rec) + "\n")
                    self.save_checkpoint(method, t, rec["wall_s"], setup_extra)
                    if bar is not None and self._progress is not None:
                        self._progress.update(bar, advance=1, description=f"{cfg.method} rounds  acc {rec['accuracy']:.4f}")
            except KeyboardInterrupt:
                done = records[-1]["round"]
                raise KeyboardInterrupt(
                    f"interrupted after round {done}; continue with: fldistill run --resume --out {self.out}"
                ) from None
        summary = self._summary(method, records, setup_extra)
        _atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
        self._write_assignment(method, records)
        self._plots()
        return summary

    def _write_assignment(self, method: Method, records: list[dict[str, Any]]) -> None:
        """A clustered method's final client -> cluster assignment in ``clustering.json``.

        Written only for methods with a :meth:`Method.cluster_assignment` (HFLDD writes its
        own clustering file in its setup). With ground-truth groups, the true group of every
        client and the purity and ARI of each evaluated round are written beside it.
        """
        assign = method.cluster_assignment()
        if assign is None:
            return
        groups = getattr(self.fed, "client_group", None)
        doc: dict[str, Any] = {
            "format": "fldistill.assignment/1",
            "method": self.cfg.method,
            "round": records[-1]["round"],
            "assignment": [int(a) for a in assign],
            "clusters": int(len(set(int(a) for a in assign))),
        }
        if groups is not None:
            doc["groups"] = getattr(self.fed, "groups", None)
            doc["true_group"] = [int(g) for g in groups]
            doc["by_round"] = [{"round": r["round"], "purity": r["purity"], "ari": r["ari"]} for r in records if "ari" in r]
        _atomic_write_text(self.out / "clustering.json", json.dumps(doc) + "\n")

    def _summary(self, method: Method, records: list[dict[str, Any]], setup_extra: dict[str, Any]) -> dict[str, Any]:
        rounds = [r for r in records if r["round"] >= 1]
        accs = [r["accuracy"] for r in rounds] or [records[0]["accuracy"]]
        best = max(range(len(accs)), key=lambda i: accs[i])
        last = records[-1]
        setup_s = records[0]["wall_s"]
        s: dict[str, Any] = {
            "method": self.cfg.method,
            "dataset": self.cfg.dataset,
            "partition": self.fed.partition,
            "clients": self.cfg.clients,
            "participation": self.cfg.participation,
            "rounds": len(rounds),
            "seed": self.cfg.seed,
            "model": resolve_model_name(self.cfg),
            "final_accuracy": accs[-1],
            "final_accuracy_mean5": sum(accs[-5:]) / len(accs[-5:]),
            "best_accuracy": accs[best],
            "best_round": rounds[best]["round"] if rounds else 0,
            "total_bits": self.ledger.total,
            "total_bytes": self.ledger.total // 8,
            "bits": dict(self.ledger.bits),
            "bits_by_phase": self.ledger.by_phase,
            "wall_s": last["wall_s"],
            "setup_s": setup_s,
            "seconds_per_round": (last["wall_s"] - setup_s) / max(len(rounds), 1),
            "status": "completed",
        }
        for k, v in records[-1].items():
            if k.endswith("accuracy") and k != "accuracy":
                s[f"final_{k}"] = v
        s.update(self._personal_summary(method, records[-1]))
        s.update(method.summary_extra())
        return s

    def _personal_summary(self, method: Method, last: dict[str, Any]) -> dict[str, Any]:
        """summary.json's personalised entries, from the last round (always evaluated)."""
        s: dict[str, Any] = {k: last[k] for k in ("personalized_accuracy_worst10", "personalized_accuracy_clients") if k in last}
        s = {f"final_{k}": v for k, v in s.items()}
        s.update({f"final_{k}": last[k] for k in ("purity", "ari") if k in last})
        pe = self._personal_last
        if pe is None and "personalized_accuracy" in last:  # resumed after the last round: the method holds its state
            pe = self._personal_eval(*method.personal_models())
        if pe is not None and "personalized_accuracy" in last:
            # None for clients with an empty local test split (JSON has no NaN)
            s["per_client_accuracy"] = [None if k == 0 else float(a) for a, k in zip(pe.client_accuracy, pe.n)]
            s["personalized_clients_skipped"] = pe.skipped
        return s

    def _plots(self) -> None:
        from fldistill.report.plots import plot_label_heatmap, plot_run

        plot_run(self.out)
        plot_label_heatmap(
            self.fed.label_counts(), self.out / "plots" / "label_distribution.png", title=f"{self.cfg.dataset} {self.fed.partition}"
        )
