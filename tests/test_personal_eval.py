"""Personalised evaluation (engine/evaluation.py, the runner's metrics) and the ``local`` baseline."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

import fldistill.runner as runner_mod
from fldistill.cluster import adjusted_rand, purity
from fldistill.engine.evaluation import PersonalEval, personal_eval, personal_eval_reference
from fldistill.engine.training import ModelState, evaluate
from fldistill.methods import METHODS
from fldistill.methods.fedavg import FedAvg
from fldistill.runner import Runner

PERSONAL_KEYS = {"personalized_accuracy", "personalized_accuracy_clients", "personalized_accuracy_worst10", "personalized_loss"}


def _records(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same(fast: PersonalEval, ref: PersonalEval) -> None:
    np.testing.assert_array_equal(fast.n, ref.n)
    np.testing.assert_array_equal(fast.correct, ref.correct)
    np.testing.assert_array_equal(fast.client_accuracy, ref.client_accuracy)  # exactly, not approximately
    np.testing.assert_allclose(fast.loss_sum, ref.loss_sum, rtol=1e-6, atol=1e-9)
    assert fast.accuracy == ref.accuracy
    assert fast.loss == pytest.approx(ref.loss, rel=1e-6)


@pytest.fixture
def trained(make_cfg, tmp_path: Path) -> tuple[Runner, FedAvg, list[ModelState]]:
    """A FedAvg method on digits (15 clients, classes:2) after two rounds, and its three models."""
    r = Runner(make_cfg(clients=15, rounds=2), tmp_path / "r", quiet=True)
    m = r.build()
    assert isinstance(m, FedAvg)
    m.setup()
    states = [m.global_state]
    for t in (1, 2):
        m.round(t)
        states.append(m.global_state)
    return r, m, states


@pytest.mark.parametrize("batch_size", [4096, 7])  # 7: chunks cut across clients' samples
def test_personal_eval_equals_per_client_loop(trained, batch_size: int) -> None:
    r, m, states = trained
    models, assign = m.personal_models()
    assert len(models) == 1 and assign.dtype == np.int64 and assign.shape == (15,) and not assign.any()
    fast = personal_eval(r.model, models, assign, r.fed, batch_size)
    ref = personal_eval_reference(r.model, models, assign, r.fed, batch_size)
    _assert_same(fast, ref)
    assert 0 < fast.correct.sum() < fast.n.sum()
    # three distinct models and a seeded random assignment
    pick = np.random.default_rng(0).integers(0, 3, size=15)
    assert len(set(pick.tolist())) == 3
    fast3 = personal_eval(r.model, states, pick, r.fed, batch_size)
    _assert_same(fast3, personal_eval_reference(r.model, states, pick, r.fed, batch_size))
    # the assignment matters: the untrained model scores worse than the trained one
    assert personal_eval(r.model, states, np.zeros(15, np.int64), r.fed).accuracy < fast.accuracy


def test_personal_eval_skips_empty_local_test_splits(trained) -> None:
    r, m, states = trained
    r.fed.client_test[3] = r.fed.client_test[3][:0]
    assign = np.array([0, 1, 2] * 5)
    fast = personal_eval(r.model, states, assign, r.fed, 64)
    _assert_same(fast, personal_eval_reference(r.model, states, assign, r.fed, 64))
    assert fast.n[3] == 0 and fast.skipped == 1 and math.isnan(fast.client_accuracy[3])
    assert fast.accuracy_clients == pytest.approx(np.delete(fast.correct / np.maximum(fast.n, 1), 3).mean())


def test_personal_eval_refuses_bad_assignments(trained) -> None:
    r, _, states = trained
    with pytest.raises(ValueError, match="shape"):
        personal_eval(r.model, states, np.zeros(14, np.int64), r.fed)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        personal_eval(r.model, states, np.full(15, 3), r.fed)


def test_aggregates_on_a_hand_made_example() -> None:
    # 21 clients: one has no local test sample; 20 evaluated -> worst 10% = worst 2
    n = np.array([10] * 20 + [0])
    correct = np.array([10] * 10 + [5] * 8 + [1, 2] + [0])
    pe = PersonalEval(correct, n, np.arange(21, dtype=np.float64))
    assert pe.skipped == 1
    assert pe.accuracy == (100 + 40 + 3) / 200  # sample-weighted
    assert pe.accuracy_clients == pytest.approx((10 * 1.0 + 8 * 0.5 + 0.1 + 0.2) / 20)
    assert pe.accuracy_worst(0.1) == pytest.approx((0.1 + 0.2) / 2)
    assert pe.loss == sum(range(21)) / 200
    # unequal sizes: weighted and plain means differ
    pe = PersonalEval(np.array([1, 90]), np.array([10, 100]), np.zeros(2))
    assert pe.accuracy == 91 / 110 and pe.accuracy_clients == pytest.approx((0.1 + 0.9) / 2)
    assert pe.accuracy_worst(0.1) == 0.1  # ceil(0.2) = 1 client
    # 30 clients: exactly 3
    acc30 = np.arange(30)
    pe = PersonalEval(acc30, np.full(30, 100), np.zeros(30))
    assert pe.accuracy_worst(0.1) == pytest.approx(0.01)  # (0 + 1 + 2) / 3 / 100
    # 11 clients: ceil(1.1) = 2
    pe = PersonalEval(np.arange(11), np.full(11, 10), np.zeros(11))
    assert pe.accuracy_worst(0.1) == pytest.approx(0.05)
    assert set(pe.metrics()) == PERSONAL_KEYS
    assert math.isnan(PersonalEval(np.zeros(2, np.int64), np.zeros(2, np.int64), np.zeros(2)).accuracy)


def test_eval_every_logs_personal_keys_on_selected_rounds(make_cfg, tmp_path: Path) -> None:
    s = Runner(make_cfg(rounds=5, eval_every=2), tmp_path / "r", quiet=True).run()
    recs = _records(tmp_path / "r")
    assert [r["round"] for r in recs if PERSONAL_KEYS <= set(r)] == [0, 2, 4, 5]
    assert all(not (PERSONAL_KEYS & set(r)) for r in recs if r["round"] in (1, 3))
    assert all("accuracy" in r and "loss" in r for r in recs)  # the global evaluation stays every round
    last = recs[-1]
    assert s["final_personalized_accuracy"] == last["personalized_accuracy"]
    assert s["final_personalized_accuracy_worst10"] == last["personalized_accuracy_worst10"]
    assert s["final_personalized_accuracy_clients"] == last["personalized_accuracy_clients"]
    assert s["personalized_clients_skipped"] == 0
    accs = s["per_client_accuracy"]
    assert len(accs) == 10 and np.mean(accs) == pytest.approx(last["personalized_accuracy_clients"])
    assert sorted(accs)[0] == pytest.approx(last["personalized_accuracy_worst10"])  # 10% of 10 clients = 1


def test_run_metrics_equal_reference_at_the_last_round(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(rounds=2, clients=12, partition="dirichlet:0.5")
    s = Runner(cfg, tmp_path / "r", quiet=True).run()
    again = Runner(cfg, tmp_path / "r", resume=True, quiet=True)  # the method as the last round left it
    m = again.build()
    again.load_checkpoint(m)
    ref = personal_eval_reference(again.model, *m.personal_models(), again.fed, cfg.eval_batch_size)
    last = _records(tmp_path / "r")[-1]
    assert last["personalized_accuracy"] == ref.accuracy
    assert last["personalized_loss"] == pytest.approx(ref.loss, rel=1e-6)
    assert last["personalized_accuracy_clients"] == pytest.approx(ref.accuracy_clients)
    assert s["per_client_accuracy"] == ref.client_accuracy.tolist()


def test_no_local_test_split_no_personal_keys(make_cfg, tmp_path: Path) -> None:
    s = Runner(make_cfg(rounds=2, local_test_fraction=0.0), tmp_path / "r", quiet=True).run()
    assert all(not (PERSONAL_KEYS & set(r)) for r in _records(tmp_path / "r"))
    assert not [k for k in s if "personal" in k] and "per_client_accuracy" not in s


def _zero_bits(s: dict) -> None:
    assert s["total_bits"] == 0 and all(v == 0 for v in s["bits"].values())
    assert all(v == 0 for ph in s["bits_by_phase"].values() for v in ph.values())


def test_local_spends_nothing_and_beats_fedavg_personally(make_cfg, tmp_path: Path) -> None:
    cfg = dict(partition="classes:2", clients=10, rounds=4)
    loc = Runner(make_cfg(method="local", **cfg), tmp_path / "local", quiet=True)
    s_loc = loc.run()
    s_avg = Runner(make_cfg(**cfg), tmp_path / "fedavg", quiet=True).run()
    _zero_bits(s_loc)
    assert all(r["bits_total"] == 0 for r in _records(tmp_path / "local"))
    assert s_avg["total_bits"] > 0
    assert loc.comm.client_runs["batched"] > 0  # engine=auto trains local's clients vectorised
    # Two classes per client: a client's own model beats the federated global model on its data.
    assert s_loc["final_personalized_accuracy"] > s_avg["final_accuracy"] + 0.1
    assert s_loc["final_personalized_accuracy"] > s_avg["final_personalized_accuracy"] + 0.1
    assert s_loc["final_personalized_accuracy_worst10"] > 0.5
    # the reported model averages clients that never talked: poor on the global test set
    assert s_loc["final_accuracy"] < s_loc["final_personalized_accuracy"] - 0.3


def test_local_engines_agree_and_partial_participation(make_cfg, tmp_path: Path) -> None:
    cfg = dict(partition="classes:2", clients=10, rounds=3, participation=0.5)
    seq = Runner(make_cfg(method="local", engine="sequential", **cfg), tmp_path / "seq", quiet=True)
    vec = Runner(make_cfg(method="local", engine="vectorised", **cfg), tmp_path / "vec", quiet=True)
    s_seq, s_vec = seq.run(), vec.run()
    _zero_bits(s_seq)
    _zero_bits(s_vec)
    assert seq.comm.client_runs["batched"] == 0 and vec.comm.client_runs["batched"] > 0
    a, b = _records(tmp_path / "seq"), _records(tmp_path / "vec")
    for ra, rb in zip(a, b):
        for k in ("accuracy", "loss", "personalized_accuracy", "personalized_loss"):
            assert ra[k] == pytest.approx(rb[k], abs=2e-3), k
    # clients train only when sampled: versions count their rounds; the rest keep the initial model
    m = seq.build()
    seq.load_checkpoint(m)
    sampled = np.zeros(10, np.int64)
    for t in (1, 2, 3):
        sampled[m.sample_clients(t)] += 1
    assert m.banks["models"].versions.tolist() == sampled.tolist() and sampled.min() < 3


def test_local_resume_equals_uninterrupted(make_cfg, resume_check) -> None:
    recs, _ = resume_check(make_cfg(method="local", rounds=4, participation=0.5), cut_at=3)
    assert all(PERSONAL_KEYS <= set(r) for r in recs)


class _Clustered(FedAvg):
    """FedAvg whose clients 'use' either the initial model or the global one, by a fixed split."""

    name = "_clustered"
    split = np.array([0, 0, 0, 1, 1, 1, 1, 1, 0, 1])
    setup_purity: float | None = None
    last: _Clustered | None = None

    def setup(self) -> dict:
        type(self).last = self
        self.init = dict(self.global_state)
        return {} if self.setup_purity is None else {"purity": self.setup_purity}

    def personal_models(self) -> tuple[list[ModelState], np.ndarray]:
        return [self.init, self.global_state], self.split.copy()

    def cluster_assignment(self) -> np.ndarray | None:
        return self.split.copy()


def _with_groups(monkeypatch: pytest.MonkeyPatch, group_test: bool = True) -> np.ndarray:
    """Make the runner's federations carry ground-truth groups (as the grouped federations will)."""
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1], dtype=np.int64)
    orig = runner_mod.federation_for

    def federation_for(cfg):  # type: ignore[no-untyped-def]
        fed = orig(cfg)
        fed.client_group = groups
        if group_test:
            parts = [np.concatenate([fed.client_test[c] for c in np.flatnonzero(groups == g)]) for g in (0, 1)]
            fed.group_test = [(fed.x[torch.from_numpy(p)], fed.y[torch.from_numpy(p)]) for p in parts]
        return fed

    monkeypatch.setattr(runner_mod, "federation_for", federation_for)
    return groups


def test_purity_ari_and_group_accuracy_with_true_groups(make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(METHODS, "_clustered", _Clustered)
    groups = _with_groups(monkeypatch)
    r = Runner(make_cfg(method="_clustered", rounds=2), tmp_path / "r", quiet=True)
    s = r.run()
    recs = _records(tmp_path / "r")
    pur = purity(_Clustered.split, [frozenset({int(g)}) for g in groups])
    ari = adjusted_rand(_Clustered.split, groups)
    assert 0 < pur < 1 and ari < 1
    for rec in recs:
        assert rec["purity"] == pur and rec["ari"] == ari
    # group 0 (clients 0-3) mostly uses model 0 (3 of 4), group 1 (clients 4-9) model 1 (5 of 6)
    m = _Clustered.last
    assert m is not None
    accs = [evaluate(r.model, st, x, y)[0] for st, (x, y) in zip([m.init, m.global_state], r.fed.group_test)]
    assert recs[-1]["group_accuracy"] == pytest.approx(float(np.mean(accs)))
    assert s["final_group_accuracy"] == recs[-1]["group_accuracy"]
    assert s["final_purity"] == pur and s["final_ari"] == ari
    # personalised accuracy follows the split too: the reference with the same models agrees
    ref = personal_eval_reference(r.model, [m.init, m.global_state], _Clustered.split, r.fed)
    assert recs[-1]["personalized_accuracy"] == ref.accuracy


def test_method_extras_win_over_computed_scores(make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(METHODS, "_clustered", _Clustered)
    monkeypatch.setattr(_Clustered, "setup_purity", 0.125)
    _with_groups(monkeypatch)
    Runner(make_cfg(method="_clustered", rounds=2), tmp_path / "r", quiet=True).run()
    recs = _records(tmp_path / "r")
    assert recs[0]["purity"] == 0.125  # the method's own round-0 value (as HFLDD logs its clustering's)
    assert recs[1]["purity"] != 0.125 and "ari" in recs[0]


def test_scores_absent_without_groups_or_assignment(make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(METHODS, "_clustered", _Clustered)
    Runner(make_cfg(method="_clustered", rounds=1), tmp_path / "a", quiet=True).run()
    assert all(not ({"purity", "ari", "group_accuracy"} & set(r)) for r in _records(tmp_path / "a"))
    _with_groups(monkeypatch, group_test=False)
    Runner(make_cfg(rounds=1), tmp_path / "b", quiet=True).run()  # FedAvg: no assignment, no group tests
    assert all(not ({"purity", "ari", "group_accuracy"} & set(r)) for r in _records(tmp_path / "b"))
    _with_groups(monkeypatch, group_test=True)
    Runner(make_cfg(rounds=1), tmp_path / "c", quiet=True).run()
    recs = _records(tmp_path / "c")
    assert all("group_accuracy" in r and "purity" not in r and "ari" not in r for r in recs)


def test_compare_and_plots_show_personal_columns(make_cfg, tmp_path: Path) -> None:
    from fldistill.report import compare_runs, plot_run, render_table

    Runner(make_cfg(method="local", rounds=2), tmp_path / "local", quiet=True).run()
    Runner(make_cfg(rounds=2, local_test_fraction=0.0), tmp_path / "plain", quiet=True).run()
    rows = compare_runs([tmp_path / "local", tmp_path / "plain"], tmp_path / "cmp")
    by = {r["method"]: r for r in rows}
    s = json.loads((tmp_path / "local" / "summary.json").read_text())
    assert by["local"]["final_personalized_accuracy"] == s["final_personalized_accuracy"]
    assert by["fedavg"]["final_personalized_accuracy"] is None
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "personalised acc" in md and "personalised worst 10%" in md
    with (tmp_path / "cmp" / "compare.csv").open() as fh:
        got = list(csv.DictReader(fh))
    assert float(got[0]["final_personalized_accuracy_worst10"]) == s["final_personalized_accuracy_worst10"]
    assert got[1]["final_personalized_accuracy"] == ""
    buf = io.StringIO()
    Console(file=buf, width=200).print(render_table(rows))
    assert "worst10" in buf.getvalue()
    # without personalised metrics in any run: the columns stay away
    compare_runs([tmp_path / "plain"], tmp_path / "cmp2")
    assert "personalised" not in (tmp_path / "cmp2" / "compare.md").read_text()
    with (tmp_path / "cmp2" / "compare.csv").open() as fh:
        assert "final_personalized_accuracy" not in fh.readline()
    assert all(p.stat().st_size > 1000 for p in plot_run(tmp_path / "local"))
