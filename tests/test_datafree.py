"""The shared data-free distillation block: samplers, weights, loop semantics, generators."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fldistill.distill.datafree import (
    GeneratorLoss,
    LoopConfig,
    Student,
    Teachers,
    class_weights,
    datafree_loop,
    exp_diversity,
    group_balanced_labels,
    proportional_labels,
    server_distill,
)
from fldistill.engine.training import fresh_state, get_state
from fldistill.models import build_model
from fldistill.models.generator import InputGenerator, LatentGenerator


def test_proportional_labels_split_as_fedftgs_generate_labels() -> None:
    counts = np.array([5.0, 0.0, 15.0, 30.0])
    g = torch.Generator().manual_seed(0)
    y = proportional_labels(counts, 50, g)
    # the code: boundaries floor(cumsum(p) * batch) = [5, 5, 20]
    assert np.bincount(y.numpy(), minlength=4).tolist() == [5, 0, 15, 30]
    y2 = proportional_labels(counts, 50, g)
    assert sorted(y2.tolist()) == sorted(y.tolist()) and y2.tolist() != y.tolist()  # only the order is random


def test_class_weights_and_group_balanced_labels() -> None:
    counts = np.array([[10.0, 0.0, 1.0], [30.0, 5.0, 0.0]])
    a = class_weights(counts)
    torch.testing.assert_close(a.sum(0), torch.ones(3))
    torch.testing.assert_close(a[:, 0], torch.tensor([0.25, 0.75]))
    assert a[1, 2] == 0 and a[0, 1] == 0
    g = torch.Generator().manual_seed(1)
    y = group_balanced_labels(np.array([[0.0, 0.0, 4.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]), 4000, g)
    freq = np.bincount(y.numpy(), minlength=3) / 4000
    # group 0 (only class 2) and group 2 (classes 0, 1) equally likely; the empty group never
    np.testing.assert_allclose(freq, [0.25, 0.25, 0.5], atol=0.03)


def test_exp_diversity_is_fedgens_formula() -> None:
    g = torch.Generator().manual_seed(2)
    z, x = torch.randn(6, 4, generator=g), torch.randn(6, 3, 5, generator=g)
    want = 0.0
    for j in range(6):
        for k in range(6):
            want += float(((z[j] - z[k]) ** 2).mean() * (x[j] - x[k]).abs().mean())
    assert exp_diversity(z, x).item() == pytest.approx(math.exp(-want / 36), rel=1e-5)


def _teachers(n: int, seed: int = 0) -> tuple[nn.Module, list[dict[str, torch.Tensor]]]:
    model = build_model("mnist1d_cnn", (40,), 10)
    return model, [fresh_state(model, seed + i) for i in range(n)]


def test_teachers_vmap_equals_one_by_one() -> None:
    model, states = _teachers(3)
    t = Teachers(model, states)
    x = torch.randn(7, 40)
    torch.testing.assert_close(t.all(x), torch.stack([t.one(k, x) for k in range(3)]))
    torch.testing.assert_close(t.one(1, x), torch.func.functional_call(model, states[1], (x,)))


def _loop(update: str, k: int, iters: int, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, float], dict[str, torch.Tensor]]:
    model, states = _teachers(k)
    torch.manual_seed(seed)
    gen = InputGenerator((40,), 10, noise_dim=8, width=8)
    student = build_model("mnist1d_cnn", (40,), 10)
    student.load_state_dict(fresh_state(student, 99))
    g = torch.Generator().manual_seed(seed)
    counts = np.ones((k, 10))

    def sampler(it: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(16, 8, generator=g), proportional_labels(counts.sum(0), 16, g)

    cfg = LoopConfig(iterations=iters, update=update, student_steps=2)  # type: ignore[arg-type]
    out = datafree_loop(gen, Teachers(model, states), class_weights(counts), sampler, GeneratorLoss(w_hard=1.0), cfg, Student(student))
    return get_state(gen), out, get_state(student)


def test_one_teacher_sequential_equals_joint() -> None:
    """With K = 1 both update orders take the same step on the same loss."""
    ga, oa, sa = _loop("sequential", 1, 3)
    gb, ob, sb = _loop("joint", 1, 3)
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=0, atol=0)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0)
    # with 3 teachers the code's order takes 3 generator steps per iteration, not one
    gs, _, _ = _loop("sequential", 3, 3)
    gj, _, _ = _loop("joint", 3, 3)
    assert any(not torch.equal(gs[k], gj[k]) for k in gs)


def _trained_teachers() -> tuple[nn.Module, list[dict[str, torch.Tensor]]]:
    """Two mnist1d CNNs, one trained on classes 0-4, one on 5-9 (a few Adam epochs)."""
    from fldistill.data.registry import load_dataset

    train, _ = load_dataset("mnist1d")
    x, y = torch.as_tensor(train.x[:4000]), torch.as_tensor(train.y[:4000]).long()
    model = build_model("mnist1d_cnn", (40,), 10)
    states = []
    for k, keep in enumerate((y < 5, y >= 5)):
        torch.manual_seed(k)
        m = build_model("mnist1d_cnn", (40,), 10)
        opt = torch.optim.Adam(m.parameters(), lr=3e-3)
        xs, ys = x[keep], y[keep]
        for _ in range(4):
            for i in range(0, len(xs), 64):
                loss = F.cross_entropy(m(xs[i : i + 64]), ys[i : i + 64])
                opt.zero_grad()
                loss.backward()
                opt.step()
        states.append(get_state(m))
    return model, states


def test_generator_learns_the_teachers_and_the_student_their_ensemble() -> None:
    model, states = _trained_teachers()
    torch.manual_seed(0)
    gen = InputGenerator((40,), 10, noise_dim=16, width=16)
    g = torch.Generator().manual_seed(0)
    counts = np.array([[5.0] * 5 + [0.0] * 5, [0.0] * 5 + [5.0] * 5])  # two teachers, disjoint classes
    alpha = class_weights(counts)
    teachers = Teachers(model, states)

    def sampler(it: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(64, 16, generator=g), proportional_labels(counts.sum(0), 64, g)

    before = datafree_loop(gen, teachers, alpha, sampler, GeneratorLoss(), LoopConfig(iterations=1, student_steps=0))
    after = datafree_loop(gen, teachers, alpha, sampler, GeneratorLoss(), LoopConfig(iterations=150, student_steps=0))
    assert after["gen_fidelity"] < 0.5 * before["gen_fidelity"]
    # the student distilled on the generator's samples agrees with the class-weighted ensemble
    student_init = fresh_state(model, 77)
    state, out = server_distill(
        model, student_init, states, counts, gen, loss=GeneratorLoss(), cfg=LoopConfig(iterations=60, student_lr=1.0),
        batch=64, noise_dim=16, gen=g,
    )  # fmt: skip
    gen.eval()
    with torch.no_grad():
        y = torch.arange(10).repeat(20)
        x = gen(torch.randn(200, 16, generator=g), y)
        q = torch.einsum("kb,kbc->bc", alpha[:, y], F.softmax(teachers.all(x), 2))
        agree = {}
        for name, st in (("before", student_init), ("after", state)):
            agree[name] = float((torch.func.functional_call(model, st, (x,)).argmax(1) == q.argmax(1)).float().mean())
    assert agree["after"] > agree["before"] + 0.3 and out["distill_s"] > 0


@pytest.mark.parametrize("shape", [(40,), (1, 8, 8), (1, 28, 28), (3, 32, 32), (7,)])
def test_input_generator_makes_inputs_of_every_shape(shape: tuple[int, ...]) -> None:
    gen = InputGenerator(shape, 10, noise_dim=8, width=8)
    x = gen(torch.randn(5, 8), torch.arange(5)).detach()
    assert x.shape == (5, *shape) and torch.isfinite(x).all()
    # the last layer standardises each channel, like normalised inputs
    assert abs(float(x.mean())) < 1e-4
    lat = LatentGenerator((125,), 10, noise_dim=8, hidden=16)
    assert lat(torch.rand(4, 8), torch.arange(4)).shape == (4, 125)
