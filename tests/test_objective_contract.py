"""The vectorised engine enforces the Objective contract: one client's loss serves a batch.

A loss that closes over a per-client (or per-cluster) tensor must not be batched with
clients holding other values (it would silently train them all with client 0's), and
``Objective.shared`` tensors are passed once, never copied per client.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fldistill.engine.vectorised as V
import fldistill.methods.moon  # noqa: F401  (registers the "moon" objective)
from fldistill.config import LocalConfig
from fldistill.engine import fastchain
from fldistill.engine.comm import Unsupported
from fldistill.engine.training import (
    Net,
    Objective,
    frozen_forward,
    local_train,
    make_objective,
    objective,
)
from fldistill.engine.vectorised import ClientJob, ValueKeys, group_jobs, train_many
from fldistill.ledger import Kind
from fldistill.models import build_model
from fldistill.runner import Runner

SEEN_PTRS: list[int] = []  # data pointers a loss saw (module-level: not a closure cell)


# -- the trap: a per-client tensor captured by the loss closure ---------------------------
@objective("test_captured_offset")
def _captured_offset(args, ref, model, tensors, gen) -> Objective:
    offset = tensors["offset"]  # per client, and wrongly left in the closure

    def loss(net: Net, x: torch.Tensor, y: torch.Tensor, inp: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(net.logits(x) + offset, y)

    return Objective("test_captured_offset", loss)


# -- a teacher common to every client, in ``shared`` --------------------------------------
@objective("test_shared_teacher")
def _shared_teacher(args, ref, model, tensors, gen) -> Objective:
    lam = float(args.get("lam", 0.5))
    keys = [k[len("teacher."):] for k in tensors if k.startswith("teacher.")]
    shared = {k: v.detach() for k, v in tensors.items() if k.startswith("teacher.")}
    # a per-client input too, so that stacked and shared tensors meet in one loss
    inputs = {"anchor." + k: v.detach() for k, v in ref.items()}
    probe = str(args.get("probe", ""))

    def loss(net: Net, x: torch.Tensor, y: torch.Tensor, inp: dict[str, torch.Tensor]) -> torch.Tensor:
        if probe:
            try:
                SEEN_PTRS.append(inp["teacher." + probe].data_ptr())
            except RuntimeError:  # a per-client (batched) copy under vmap has no storage of its own
                SEEN_PTRS.append(-1)
        s = net.logits(x)
        t = frozen_forward(model, {k: inp["teacher." + k] for k in keys}, x)
        kl = F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), reduction="batchmean", log_target=True)
        prox = sum(((p - inp["anchor." + k]) ** 2).sum() for k, p in net.params().items())
        return F.cross_entropy(s, y) + lam * kl + 0.01 * prox

    return Objective("test_shared_teacher", loss, inputs=inputs, shared=shared)


# -- FedProx with the anchor common to all clients in ``shared`` (fused kernels) ----------
@objective("test_shared_prox")
def _shared_prox(args, ref, model, tensors, gen) -> Objective:
    mu = float(args.get("mu", 0.5))
    anchor = {"anchor." + k[len("anchor."):]: v.detach() for k, v in tensors.items() if k.startswith("anchor.")}

    def loss(net: Net, x: torch.Tensor, y: torch.Tensor, inp: dict[str, torch.Tensor]) -> torch.Tensor:
        prox = sum(((p - inp["anchor." + k]) ** 2).sum() for k, p in net.params().items())
        return F.cross_entropy(net.logits(x), y) + 0.5 * mu * prox

    return Objective("test_shared_prox", loss, shared=anchor, fused={"kind": "ce+prox", "mu": mu})


# -- ValueKeys ------------------------------------------------------------------------------
def test_value_keys_compare_by_value_and_conservatively() -> None:
    k = ValueKeys()
    a = torch.randn(5, 3)
    assert k.key(a) == k.key(a.detach()) == k.key(a[:]) == k.key(a.clone())  # same memory, or same bytes
    assert k.key(a) != k.key(a + 1)
    assert k.key(a.T.contiguous().T) == k.key(a)  # other strides, same values
    assert k.key(a[0]) != k.key(a[1]) and k.key(a) != k.key(a.double()) and k.key(a) != k.key(a.reshape(3, 5))
    assert k.key(torch.tensor([0.0])) != k.key(torch.tensor([-0.0]))  # not bit-equal
    assert k.key(torch.tensor([math.nan])) != k.key(torch.tensor([math.nan]))  # torch.equal says no
    assert k.key(1) != k.key(1.0) != k.key(True) and k.key(0.0) != k.key(-0.0) and k.key(0.5) == k.key(0.5)
    assert k.key({"a": 1, "b": 2}) != k.key({"b": 2, "a": 1})  # iteration order can change a sum's bits
    m1, m2 = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    assert k.key(m1) == k.key(m1) and k.key(m1) != k.key(m2)  # modules by identity

    def factory(t: torch.Tensor, w: float):
        def inner(z: torch.Tensor) -> torch.Tensor:
            return z * t * w

        def outer(z: torch.Tensor) -> torch.Tensor:
            return inner(z) + (outer(z) if False else 0)  # recursive: a cycle through its own cell

        return outer

    f1, f2, f3, f4 = factory(a, 2.0), factory(a.clone(), 2.0), factory(a + 1, 2.0), factory(a, 3.0)
    assert k.key(f1) == k.key(f2) and k.key(f1) != k.key(f3) and k.key(f1) != k.key(f4)
    assert k.key(functools.partial(f1, a)) == k.key(functools.partial(f2, a))
    assert k.key(f1) != k.key(lambda z: z * a * 2.0)  # other code


def test_existing_objectives_group_as_one() -> None:
    """FedProx with per-client starts, MOON with per-client previous models: one group each."""
    model = build_model("mnist1d_cnn", (40,), 10)
    glob = {k: v.detach().clone() for k, v in model.state_dict().items()}
    jobs = []
    for c in range(6):
        start = {k: v + 0.01 * c for k, v in glob.items()}
        jobs.append(ClientJob(c, start, torch.arange(4), make_objective("fedprox", {"mu": 0.1}, start, model), torch.Generator()))
    assert group_jobs(jobs) == [list(range(6))]
    prev = [{"prev." + k: v + 0.1 * c for k, v in glob.items() if k.startswith("features.")} for c in range(6)]
    jobs = [ClientJob(c, glob, torch.arange(4), make_objective("moon", {"mu": 5.0}, glob, model, prev[c]), torch.Generator()) for c in range(6)]
    assert group_jobs(jobs) == [list(range(6))]


# -- (a) a per-client tensor in the loss closure -------------------------------------------
def _offset_jobs(model: torch.nn.Module, offsets: list[torch.Tensor], start: dict[str, torch.Tensor]) -> list[ClientJob]:
    return [
        ClientJob(c, start, torch.arange(20 * c, 20 * c + 20), make_objective("test_captured_offset", {}, start, model, {"offset": o}),
                  torch.Generator().manual_seed(c))
        for c, o in enumerate(offsets)
    ]


def test_train_many_refuses_differing_closures_and_names_the_variable() -> None:
    torch.manual_seed(0)
    model = build_model("mnist1d_cnn", (40,), 10)
    x, y = torch.randn(80, 40), torch.randint(0, 10, (80,))
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    local = LocalConfig(unit="epochs", amount=1, lr=0.1, momentum=0.9, batch_size=8)
    offsets = [3.0 * torch.randn(10, generator=torch.Generator().manual_seed(c)) for c in range(4)]
    with pytest.raises(Unsupported, match=r"closure variable\(s\) 'offset'.*Objective\.inputs"):
        train_many(model, x, y, _offset_jobs(model, offsets, start), local)
    # equal values (copies) are fine: batched, and equal to the sequential engine
    same = [offsets[0].clone() for _ in range(4)]
    got = train_many(model, x, y, _offset_jobs(model, same, start), local)
    for c, j in enumerate(_offset_jobs(model, same, start)):
        want, _ = local_train(model, start, x[j.index], y[j.index], local, j.obj, j.gen)
        for k in want:
            torch.testing.assert_close(got[c][0][k], want[k], rtol=1e-4, atol=1e-5)


def test_the_trap_is_real_without_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the check disabled, train_many trains every client with client 0's offset: the
    comparisons in this file would fail (this guards them against a harmless trap)."""
    torch.manual_seed(0)
    model = build_model("mnist1d_cnn", (40,), 10)
    x, y = torch.randn(80, 40), torch.randint(0, 10, (80,))
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    local = LocalConfig(unit="epochs", amount=1, lr=0.1, momentum=0.9, batch_size=8)
    offsets = [3.0 * torch.randn(10, generator=torch.Generator().manual_seed(c)) for c in range(4)]
    monkeypatch.setattr(V, "group_jobs", lambda jobs: [list(range(len(jobs)))])
    got = train_many(model, x, y, _offset_jobs(model, offsets, start), local)
    j = _offset_jobs(model, offsets, start)[1]
    want, _ = local_train(model, start, x[j.index], y[j.index], local, j.obj, j.gen)
    assert max(float((got[1][0][k] - want[k]).abs().max()) for k in want) > 1e-3


def _compare_engines(tmp_path: Path, make_cfg, name: str, per_client, args: dict | None = None, n: int = 6) -> dict[str, int]:
    """Replies of the ``train`` task on both engines for requests ``per_client(c, method)``."""
    replies, runs = {}, {}
    for eng in ("sequential", "vectorised"):
        method = Runner(make_cfg(engine=eng, clients=n), tmp_path / eng, quiet=True).build()
        base = method.model_payload().with_meta(round=2, objective=name, objective_args=args or {})
        reqs = {c: per_client(c, method, base.with_meta()) for c in range(n)}
        replies[eng] = method.comm.call("train", reqs, phase="train")
        runs[eng] = dict(method.comm.client_runs)
    for c in range(n):
        s, v = replies["sequential"][c], replies["vectorised"][c]
        assert s.meta["steps"] == v.meta["steps"]
        assert v.meta["loss"] == pytest.approx(s.meta["loss"], rel=1e-5)
        for k, t in s.tensors.items():
            torch.testing.assert_close(v.tensors[k], t, rtol=1e-4, atol=1e-5)
    return runs["vectorised"]


@pytest.mark.parametrize("kind", ["clusters", "per-client"])
def test_captured_tensors_train_like_the_sequential_engine(tmp_path: Path, make_cfg, kind: str) -> None:
    """Per-cluster offsets batch per cluster (one of them as equal copies); per-client ones
    run sequentially. Either way each client trains with its own offset."""
    centres = [3.0 * torch.randn(10, generator=torch.Generator().manual_seed(s)) for s in range(6)]

    def req(c, method, p):
        o = centres[c % 2].clone() if kind == "clusters" else centres[c]
        return p.put("offset", o, Kind.FLOAT)

    runs = _compare_engines(tmp_path, make_cfg, "test_captured_offset", req)
    assert runs["batched"] == (6 if kind == "clusters" else 0)


# -- (b) shared inputs -----------------------------------------------------------------------
def _teacher(method, c: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + c)
    return {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in method.global_state.items()}


@pytest.mark.parametrize("copies", [False, True], ids=["same-tensors", "equal-copies"])
def test_shared_teacher_equals_sequential(tmp_path: Path, make_cfg, copies: bool) -> None:
    teacher: dict[str, torch.Tensor] = {}

    def req(c, method, p):
        if not teacher:
            teacher.update(_teacher(method))
        return p.put_state("teacher", {k: v.clone() for k, v in teacher.items()} if copies else teacher, Kind.PARAM)

    runs = _compare_engines(tmp_path, make_cfg, "test_shared_teacher", req, {"lam": 0.7})
    assert runs["batched"] == 6


def test_shared_inputs_are_passed_once_not_stacked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loss inside train_many reads the shared tensor's own memory; only the per-client
    inputs are stacked."""
    torch.manual_seed(0)
    model = build_model("mnist1d_cnn", (40,), 10)
    x, y = torch.randn(60, 40), torch.randint(0, 10, (60,))
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    teacher = {"teacher." + k: v + 0.1 for k, v in start.items()}
    probe = "classifier.0.weight" if "classifier.0.weight" in start else next(iter(start))
    stacked: list[str] = []
    real = V._stack

    def spy(dicts, what):  # type: ignore[no-untyped-def]
        stacked.extend(dicts[0])
        return real(dicts, what)

    monkeypatch.setattr(V, "_stack", spy)
    jobs = [
        ClientJob(c, start, torch.arange(15 * c, 15 * c + 15), make_objective("test_shared_teacher", {"probe": probe}, start, model, teacher),
                  torch.Generator().manual_seed(c))
        for c in range(4)
    ]
    SEEN_PTRS.clear()
    train_many(model, x, y, jobs, LocalConfig(unit="steps", amount=2, lr=0.1, batch_size=8))
    assert SEEN_PTRS and set(SEEN_PTRS) == {teacher["teacher." + probe].data_ptr()}
    assert stacked and not any(k.startswith("teacher.") for k in stacked)


def test_unequal_shared_inputs_are_refused_or_regrouped(tmp_path: Path, make_cfg) -> None:
    model = build_model("mnist1d_cnn", (40,), 10)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(40, 40), torch.randint(0, 10, (40,))
    t0 = {"teacher." + k: v + 0.1 for k, v in start.items()}
    first = next(iter(t0))
    t1 = {**t0, first: t0[first] + 1}  # one tensor of the teacher differs
    jobs = [ClientJob(c, start, torch.arange(10 * c, 10 * c + 10), make_objective("test_shared_teacher", {}, start, model, t),
                      torch.Generator().manual_seed(c)) for c, t in enumerate([t0, t1, t0, t1])]
    assert group_jobs(jobs) == [[0, 2], [1, 3]]
    with pytest.raises(Unsupported, match="shared inputs differ"):
        train_many(model, x, y, jobs, LocalConfig(unit="steps", amount=1, batch_size=4))

    # through the train task: two teachers, two batches, each client with its own teacher
    teachers: list[dict[str, torch.Tensor]] = []

    def req(c, method, p):
        if not teachers:
            teachers.extend([_teacher(method, 0), _teacher(method, 1)])
        return p.put_state("teacher", teachers[c % 2], Kind.PARAM)

    runs = _compare_engines(tmp_path, make_cfg, "test_shared_teacher", req)
    assert runs["batched"] == 6


def test_fused_kernels_read_shared_anchors(monkeypatch: pytest.MonkeyPatch) -> None:
    """A shared proximal anchor broadcasts in the fused CE+prox step: the same bits as the
    per-client (stacked) anchors of FedProx, and the sequential engine's result."""
    torch.manual_seed(0)
    model = build_model("mnist1d_cnn", (40,), 10)
    x, y = torch.randn(120, 40), torch.randint(0, 10, (120,))
    glob = {k: v.detach().clone() for k, v in model.state_dict().items()}
    local = LocalConfig(unit="epochs", amount=2, batch_size=16, lr=0.1, momentum=0.9, weight_decay=1e-3)
    sizes = [40, 23, 50, 7]

    def jobs(name: str) -> list[ClientJob]:
        out, a = [], 0
        for cid, n in enumerate(sizes):
            tensors = {"anchor." + k: v for k, v in glob.items()}
            obj = make_objective(name, {"mu": 0.5}, glob, model, tensors)
            out.append(ClientJob(cid, glob, torch.arange(a, a + n), obj, torch.Generator().manual_seed(cid)))
            a += n
        return out

    calls = {"n": 0}
    real = fastchain.ce_grad

    def counting(*a, **k):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(V, "ce_grad", counting)
    shared = train_many(model, x, y, jobs("test_shared_prox"), local)
    assert calls["n"] > 0, "the fused path was not taken"
    stacked = train_many(model, x, y, jobs("fedprox"), local)
    ref = train_many(model, x, y, jobs("test_shared_prox"), local, kernels="autograd")
    for c, ((s1, m1), (s2, m2), (s3, _)) in enumerate(zip(shared, stacked, ref)):
        assert m1 == m2
        for k in s1:
            assert torch.equal(s1[k], s2[k])
            torch.testing.assert_close(s1[k], s3[k], rtol=1e-4, atol=1e-5)
        j = jobs("test_shared_prox")[c]
        want, _ = local_train(model, glob, x[j.index], y[j.index], local, j.obj, j.gen)
        for k in want:
            torch.testing.assert_close(s1[k], want[k], rtol=1e-4, atol=1e-5)


def test_step_inputs_merge_order() -> None:
    """shared, then inputs, then the step's draws: later keys win."""
    one, two, three = torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0)
    obj = Objective("o", lambda net, x, y, inp: x.sum(), inputs={"a": two, "b": two}, shared={"a": one, "s": one})
    assert obj.step_inputs(4) == {"a": two, "s": one, "b": two}
    obj.sample = lambda b: {"b": three}
    assert obj.step_inputs(4) == {"a": two, "s": one, "b": three}
    assert Objective("o", obj.loss, inputs={"a": two}).step_inputs(4) == {"a": two}


@pytest.mark.parametrize("method, extra", [("moon", {"rounds": 2}), ("kdia", {"rounds": 1, "params": {"gen_epochs": 1, "gen_iters": 2, "gen_batch": 8, "noise_dim": 4, "gen_hidden": 16}})])
def test_real_objectives_still_batch_every_client(tmp_path: Path, make_cfg, method: str, extra: dict) -> None:
    r = Runner(make_cfg(method=method, engine="vectorised", **extra), tmp_path / method, quiet=True)
    r.run()
    assert r.comm.client_runs["sequential"] == 0 and r.comm.client_runs["batched"] > 0
