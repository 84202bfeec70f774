"""The vectorised engine gives the sequential engine's results, and falls back where it must."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from fldistill.config import LocalConfig
from fldistill.engine.training import Net, Objective, local_train, make_objective, objective
from fldistill.engine.vectorised import ClientJob, model_unsupported, train_many
from fldistill.errors import ConfigError, TrainingDiverged
from fldistill.ledger import Kind
from fldistill.models import build_model
from fldistill.runner import Runner


# -- a stand-in for KDIA's objective: per-client teacher in ``inputs``, sampled features --
@objective("test_teacher_gen")
def _teacher_gen(args, ref, model, tensors, gen) -> Objective:
    lam, lam_gen = float(args["lam"]), float(args["lam_gen"])
    teacher = {k[len("teacher."):]: v.detach() for k, v in tensors.items() if k.startswith("teacher.")}
    keys = list(teacher)  # the loss closes over the names only: the per-client values are inputs
    feat = model.feature_shape
    n_cls = model.n_classes

    def sample(b: int) -> dict[str, torch.Tensor]:
        # generated features and uniform labels, drawn outside the loss from the seeded stream
        return {"h": torch.randn(b, *feat, generator=gen), "yg": torch.randint(0, n_cls, (b,), generator=gen)}

    def loss(net: Net, x: torch.Tensor, y: torch.Tensor, inp: dict[str, torch.Tensor]) -> torch.Tensor:
        out = net.logits(x)
        with torch.no_grad():
            t_out = functional_call(model, {k: inp["teacher." + k] for k in keys}, (x,))
        kl = F.kl_div(F.log_softmax(out, 1), F.log_softmax(t_out, 1), reduction="batchmean", log_target=True)
        return F.cross_entropy(out, y) + lam * kl + lam_gen * F.cross_entropy(net.head(inp["h"]), inp["yg"])

    return Objective("test_teacher_gen", loss, inputs={"teacher." + k: v for k, v in teacher.items()}, sample=sample)


@objective("test_not_vectorisable")
def _not_vec(args, ref, model, tensors, gen) -> Objective:
    return Objective("test_not_vectorisable", lambda net, x, y, inp: F.cross_entropy(net.logits(x), y), vectorisable=False)


@objective("test_vmap_breaks")
def _vmap_breaks(args, ref, model, tensors, gen) -> Objective:
    def loss(net: Net, x: torch.Tensor, y: torch.Tensor, inp: dict[str, torch.Tensor]) -> torch.Tensor:
        out = net.logits(x)
        scale = 1.0 if float(out.mean()) < 1e9 else 0.5  # data-dependent Python: fails under vmap
        return scale * F.cross_entropy(out, y)

    return Objective("test_vmap_breaks", loss)  # wrongly claims to be vectorisable


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_same_metrics(a: list[dict], b: list[dict], rel: float = 1e-4) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert set(ra) == set(rb)
        for k, v in ra.items():
            if k.endswith("_s") or k == "distill_seconds_per_member":  # timings
                continue
            if isinstance(v, float):
                assert rb[k] == pytest.approx(v, rel=rel, abs=1e-5), (ra["round"], k)
            else:
                assert rb[k] == v, (ra["round"], k)  # bits, participants: exactly equal


def _both_engines(tmp_path: Path, cfg_of) -> tuple[list[dict], list[dict], dict]:
    out = {}
    runs = {}
    for eng in ("sequential", "vectorised"):
        r = Runner(cfg_of(eng), tmp_path / eng, quiet=True)
        r.run()
        out[eng], runs[eng] = _records(tmp_path / eng), r.comm.client_runs
    assert runs["sequential"]["batched"] == 0
    return out["sequential"], out["vectorised"], runs["vectorised"]


@pytest.mark.parametrize(
    "over",
    [
        {},  # FedAvg, digits classes:2, 1 epoch (uneven client sizes, short last batches)
        {"method": "fedprox", "params": {"mu": 0.5}},
        {"partition": "dirichlet:0.3", "participation": 0.5, "local": {"amount": 2, "weight_decay": 1e-3}},
        {"local": {"unit": "steps", "amount": 5, "batch_size": 16, "momentum": 0.0}},
        {"method": "moon", "rounds": 2},  # frozen functional_call features of two other models in the loss
    ],
    ids=["fedavg", "fedprox", "dirichlet-partial-wd", "steps-no-momentum", "moon"],
)
def test_vectorised_equals_sequential(tmp_path: Path, make_cfg, over) -> None:
    seq, vec, runs = _both_engines(tmp_path, lambda eng: make_cfg(engine=eng, **over))
    assert runs["sequential"] == 0 and runs["batched"] > 0
    _assert_same_metrics(seq, vec)


@pytest.mark.parametrize("chunk", [None, 2])
def test_train_many_matches_local_train_per_client(chunk) -> None:
    """Uneven sizes (5, 37, 64 samples), epochs with short last batches, momentum and weight decay.

    ``chunk=2`` also splits buckets and makes non-contiguous client rows (gathers/scatters).
    """
    torch.manual_seed(0)
    model = build_model("digits_cnn", (1, 8, 8), 10)
    x, y = torch.randn(200, 1, 8, 8), torch.randint(0, 10, (200,))
    local = LocalConfig(unit="epochs", amount=2, lr=0.1, momentum=0.9, weight_decay=0.01, batch_size=16)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    index = [torch.arange(0, 5), torch.arange(10, 47), torch.arange(100, 164)]
    # clients start from different states, as with per-client models
    starts = [{k: v + 0.01 * i for k, v in base.items()} for i in range(3)]
    jobs = [ClientJob(i, starts[i], index[i], make_objective("ce", {}, starts[i], model), torch.Generator().manual_seed(i)) for i in range(3)]
    got = train_many(model, x, y, jobs, local, chunk=chunk)
    for i in range(3):
        want, stats = local_train(model, starts[i], x[index[i]], y[index[i]], local, make_objective("ce", {}, starts[i], model),
                                  torch.Generator().manual_seed(i))
        assert got[i][1]["steps"] == stats["steps"] and got[i][1]["n"] == stats["n"]
        assert got[i][1]["loss"] == pytest.approx(stats["loss"], rel=1e-5)
        for k in want:
            torch.testing.assert_close(got[i][0][k], want[k], rtol=1e-4, atol=1e-5)


def test_objective_with_sample_and_inputs(tmp_path: Path, make_cfg) -> None:
    """A KDIA stand-in: per-client frozen teachers (inputs), generated features (sample)."""
    cfg = make_cfg(partition="dirichlet:0.5", clients=8)
    replies, ledgers = {}, {}
    for eng in ("sequential", "vectorised"):
        runner = Runner(cfg.model_copy(update={"engine": eng}), tmp_path / eng, quiet=True)
        method = runner.build()
        base = method.model_payload().with_meta(round=3, objective="test_teacher_gen", objective_args={"lam": 0.7, "lam_gen": 0.3})
        reqs = {}
        for c in range(8):
            teacher = {k: v + 0.05 * torch.randn(v.shape, generator=torch.Generator().manual_seed(c)) for k, v in method.global_state.items()}
            reqs[c] = base.with_meta().put_state("teacher", teacher, Kind.PARAM)
        replies[eng] = method.comm.call("train", reqs, phase="train")
        ledgers[eng] = (runner.ledger.total, dict(runner.ledger.bits))
        assert method.comm.client_runs["batched"] == (8 if eng == "vectorised" else 0)
    assert ledgers["sequential"] == ledgers["vectorised"]
    for c in range(8):
        s, v = replies["sequential"][c], replies["vectorised"][c]
        assert s.meta["steps"] == v.meta["steps"] and s.meta["n"] == v.meta["n"]
        assert v.meta["loss"] == pytest.approx(s.meta["loss"], rel=1e-5)
        for k, t in s.tensors.items():
            torch.testing.assert_close(v.tensors[k], t, rtol=1e-4, atol=1e-5)


def test_hfldd_soft_labels_and_head_training(tmp_path: Path, make_cfg) -> None:
    """HFLDD: the batched soft_labels task and the heads' training on inbox data."""
    hp = {"k": 5, "pretrain_epochs": 2, "pretrain_lr": 0.05, "pretrain_momentum": 0.9, "distiller": "random", "distill_size": 20}
    seq, vec, runs = _both_engines(
        tmp_path, lambda eng: make_cfg(method="hfldd", partition="classes:1", clients=12, rounds=2, params=hp, public={"size": 50}, engine=eng)
    )
    # soft labels (12 clients) and both rounds' heads ran batched; distillation did not
    assert runs["batched"] >= 12 + 2 * 2
    _assert_same_metrics(seq, vec)


def test_auto_falls_back_for_unsupported_objective(tmp_path: Path, make_cfg) -> None:
    for eng in ("auto", "vectorised"):
        method = Runner(make_cfg(engine=eng), tmp_path / eng, quiet=True).build()
        req = method.model_payload().with_meta(round=1, objective="test_not_vectorisable")
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            method.comm.call("train", {c: req for c in range(4)}, phase="train")
        assert method.comm.client_runs == {"batched": 0, "sequential": 4}
        notices = [str(x.message) for x in w if issubclass(x.category, RuntimeWarning)]
        # auto falls back silently; a forced vectorised engine says so, once
        assert notices == ([] if eng == "auto" else ["engine=vectorised: task 'train' runs sequentially (objective 'test_not_vectorisable' is not vectorisable)"])


def test_unexpected_vmap_failure(tmp_path: Path, make_cfg) -> None:
    """auto reruns the call sequentially (same replies); a forced vectorised engine raises."""
    replies = {}
    for eng in ("sequential", "auto"):
        method = Runner(make_cfg(engine=eng), tmp_path / eng, quiet=True).build()
        req = method.model_payload().with_meta(round=1, objective="test_vmap_breaks")
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            replies[eng] = method.comm.call("train", {c: req for c in range(3)}, phase="train")
        assert method.comm.client_runs == {"batched": 0, "sequential": 3}
        assert any("running it sequentially" in str(x.message) for x in w) == (eng == "auto")
    for c in range(3):
        for k, t in replies["sequential"][c].tensors.items():
            assert torch.equal(replies["auto"][c].tensors[k], t)
    method = Runner(make_cfg(engine="vectorised"), tmp_path / "vec", quiet=True).build()
    req = method.model_payload().with_meta(round=1, objective="test_vmap_breaks")
    with pytest.raises(RuntimeError):
        method.comm.call("train", {c: req for c in range(3)}, phase="train")


def test_batchnorm_models_fall_back() -> None:
    assert model_unsupported(build_model("cifar_cnn", (3, 32, 32), 10)) is not None  # BN running statistics
    assert model_unsupported(build_model("mnist1d_cnn", (40,), 10)) is None


def test_vectorised_divergence_is_reported(tmp_path: Path, make_cfg) -> None:
    with pytest.raises(TrainingDiverged, match="vectorised"):
        Runner(make_cfg(engine="vectorised", local={"lr": 1e6, "momentum": 0.0}, divergence_factor=1e30), tmp_path / "r", quiet=True).run()


def test_engine_switch_is_validated(make_cfg) -> None:
    assert make_cfg().engine == "auto"
    with pytest.raises(ConfigError, match="engine"):
        make_cfg(engine="gpu")
