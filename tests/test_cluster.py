"""Tests of the HFLDD clustering building blocks (fldistill.cluster)."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest
import torch

from fldistill.cluster import (
    adjusted_rand,
    agglomerative,
    choose_heads,
    cluster_sampling,
    cosine_matrix,
    kl_matrix,
    kl_matrix_reference,
    kmeans_rows,
    label_coverage,
    load_clustering,
    purity,
    save_clustering,
)
from fldistill.errors import ConfigError, DataError
from fldistill.report.topology import plot_topology


def planted_soft(label_sets: list[frozenset[int]], g: int, c: int, seed: int) -> torch.Tensor:
    """Soft labels of clients whose models favour their own classes, with per-client noise."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(len(label_sets), g, c, generator=gen)
    for i, s in enumerate(label_sets):
        logits[i, :, sorted(s)] += 3.0
    return torch.softmax(logits, dim=-1)


# --------------------------------------------------------------------------- KL matrix


def test_kl_matrix_matches_reference():
    gen = torch.Generator().manual_seed(0)
    soft = torch.softmax(2 * torch.randn(7, 13, 5, generator=gen), dim=-1)
    soft[0, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])  # hard zeros go through the eps clamp
    m = kl_matrix(soft)
    ref = kl_matrix_reference(soft)
    assert m.shape == (7, 7) and m.dtype == torch.float64
    assert torch.allclose(m, ref, atol=1e-6, rtol=0)
    assert torch.all(m.diagonal() == 0)
    assert torch.all(m >= 0)
    # chunking over rows must not change anything
    assert torch.allclose(kl_matrix(soft, max_block_bytes=1), m, atol=1e-12, rtol=0)


def test_kl_matrix_rejects_bad_input():
    with pytest.raises(ConfigError):
        kl_matrix(torch.rand(3, 4))
    bad = torch.full((2, 3, 4), 0.25)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ConfigError):
        kl_matrix(bad)


def test_kl_matrix_scale_n1000():
    gen = torch.Generator().manual_seed(1)
    soft = torch.softmax(torch.randn(1000, 1000, 10, generator=gen), dim=-1)
    t0 = time.perf_counter()
    m = kl_matrix(soft)
    dt = time.perf_counter() - t0
    print(f"\nkl_matrix N=1000 G=1000 C=10: {dt:.2f} s")
    assert m.shape == (1000, 1000)
    assert bool(torch.isfinite(m).all())


# --------------------------------------------------------------------------- K-Means


def test_planted_single_class_purity_one():
    sets = [frozenset({i % 10}) for i in range(100)]
    soft = planted_soft(sets, g=60, c=10, seed=2)
    pred = kmeans_rows(kl_matrix(soft), 10, seed=0)
    assert pred.shape == (100,) and pred.dtype == np.int64
    assert purity(pred, sets) == 1.0
    assert len(set(pred.tolist())) == 10


def test_planted_pairs_purity_one():
    # C=2 style: five distinct, partly overlapping class pairs.
    pairs = [frozenset(p) for p in [(0, 1), (1, 2), (3, 7), (5, 9), (2, 8)]]
    sets = [pairs[i % 5] for i in range(60)]
    soft = planted_soft(sets, g=60, c=10, seed=3)
    pred = kmeans_rows(kl_matrix(soft).numpy(), 5, seed=1)
    assert purity(pred, sets) == 1.0


def test_kmeans_k_too_large():
    with pytest.raises(ConfigError, match="K=5"):
        kmeans_rows(np.zeros((3, 3)), 5, seed=0)
    with pytest.raises(ConfigError):
        kmeans_rows(np.zeros((3, 3)), 0, seed=0)


def test_purity_values():
    sets = [frozenset({0}), frozenset({0}), frozenset({1}), frozenset({1})]
    assert purity(np.array([0, 0, 1, 1]), sets) == 1.0
    assert purity(np.array([0, 1, 0, 1]), sets) == 0.5
    assert purity(np.array([0, 0, 0, 0]), sets) == 0.5


# --------------------------------------------------------------------------- ClusterSampling


def test_cluster_sampling_properties():
    rng0 = np.random.default_rng(0)
    homog = rng0.integers(0, 7, size=53)
    homog[homog == 3] = 9  # non-contiguous labels
    hetero = cluster_sampling(homog, np.random.default_rng(5))

    flat = [c for h in hetero for c in h]
    assert sorted(flat) == list(range(53))  # every client exactly once
    for h in hetero:
        labs = [homog[c] for c in h]
        assert len(labs) == len(set(labs))  # at most one per homogeneous cluster
    assert len(hetero) == max(Counter(homog.tolist()).values())
    assert all(isinstance(c, int) for c in flat)

    again = cluster_sampling(homog, np.random.default_rng(5))
    assert again == hetero
    other = cluster_sampling(homog, np.random.default_rng(6))
    assert other != hetero

    heads = choose_heads(hetero, np.random.default_rng(7))
    assert len(heads) == len(hetero)
    assert all(head in h for head, h in zip(heads, hetero))
    assert heads == choose_heads(hetero, np.random.default_rng(7))


def test_cluster_sampling_balanced_single_class():
    # The paper's case: N=100, K=10 equal clusters -> 10 clusters of 10, one per class.
    homog = np.arange(100) % 10
    hetero = cluster_sampling(homog, np.random.default_rng(0))
    assert len(hetero) == 10
    assert all(sorted(homog[h].tolist()) == list(range(10)) for h in hetero)


def test_label_coverage():
    counts = np.zeros((6, 3), dtype=np.int64)
    counts[np.arange(6), np.arange(6) % 3] = 10
    hetero = [[0, 1, 2], [3, 4], [5]]
    heads = [1, 3, 5]
    cov = label_coverage(hetero, heads, counts)
    assert [c["n_classes_covered"] for c in cov] == [3, 2, 1]
    assert cov[0]["class_counts"] == [10, 10, 10]
    assert cov[1] == {"head": 3, "members": [3, 4], "size": 2, "n_classes_covered": 2,
                      "class_counts": [10, 10, 0]}
    with pytest.raises(ConfigError):
        label_coverage(hetero, [0, 3, 5][::-1], counts)


# --------------------------------------------------------------------------- plot / persistence


def test_plot_and_roundtrip(tmp_path):
    homog = np.random.default_rng(0).integers(0, 10, size=100)
    hetero = cluster_sampling(homog, np.random.default_rng(1))
    heads = choose_heads(hetero, np.random.default_rng(2))

    png = plot_topology(tmp_path / "fig" / "topology.png", hetero, heads, homog, title="N=100, K=10")
    data = png.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"

    counts = np.eye(10, dtype=np.int64)[homog] * 5
    cov = label_coverage(hetero, heads, counts)
    sets = [frozenset({int(h)}) for h in homog]
    p = purity(homog, sets)
    path = save_clustering(tmp_path / "clustering.json", homog, hetero, heads,
                           k=np.int64(10), purity=np.float64(p), coverage=cov, extra={"seed": 3})
    doc = load_clustering(path)
    assert doc["homogeneous"] == homog.tolist()
    assert doc["heterogeneous"] == hetero
    assert doc["heads"] == heads
    assert doc["k"] == 10 and doc["purity"] == p
    assert doc["coverage"] == cov
    assert doc["extra"] == {"seed": 3}

    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError):
        load_clustering(tmp_path / "bad.json")
    with pytest.raises(DataError):
        load_clustering(tmp_path / "missing.json")


def test_cosine_agglomerative_recovers_planted_update_groups() -> None:
    # 3 groups of clients whose updates share a group direction plus per-client noise
    gen = torch.Generator().manual_seed(4)
    centres = torch.randn(3, 50, generator=gen)
    truth = np.repeat(np.arange(3), [5, 7, 4])
    updates = centres[truth] + 0.3 * torch.randn(len(truth), 50, generator=gen)
    S = cosine_matrix(updates)
    assert S.shape == (16, 16) and torch.allclose(S.diagonal(), torch.ones(16, dtype=torch.float64))
    assert torch.allclose(S, S.T)
    pred = agglomerative(S, 3)
    assert adjusted_rand(pred, truth) == 1.0
    assert adjusted_rand(kmeans_rows(S, 3, seed=0), truth) == 1.0
    shuffled = np.random.default_rng(0).permutation(truth)
    assert adjusted_rand(shuffled, truth) < 0.5  # chance-level labels score low
    assert agglomerative(S, 1).tolist() == [0] * 16 and agglomerative(S, 16).tolist() == list(range(16))
    with pytest.raises(ConfigError, match="between 1 and"):
        agglomerative(S, 17)
    with pytest.raises(ConfigError, match="shape"):
        cosine_matrix(torch.zeros(4))
