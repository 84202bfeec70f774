"""Partition schemes meet their stated properties."""

from __future__ import annotations

import numpy as np
import pytest

from fldistill.data.federation import build_federation
from fldistill.data.partition import label_counts, parse_partition, partition_indices
from fldistill.errors import ConfigError


def _labels(n_per_class: int = 160, n_classes: int = 10) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.permutation(np.repeat(np.arange(n_classes), n_per_class))


def _check_disjoint_cover(parts: list[np.ndarray], n: int) -> None:
    allix = np.concatenate(parts)
    assert len(allix) == len(np.unique(allix)), "a sample was given to two clients"
    assert allix.min() >= 0 and allix.max() < n


def test_classes_1_each_class_on_exactly_ten_clients() -> None:
    y = _labels()
    parts = partition_indices(y, parse_partition("classes:1", 10), 100, seed=3)
    counts = label_counts(y, parts, 10)
    assert ((counts > 0).sum(1) == 1).all(), "each client must hold exactly one class"
    assert ((counts > 0).sum(0) == 10).all(), "each class must land on exactly 10 clients"
    _check_disjoint_cover(parts, len(y))
    assert sum(len(p) for p in parts) == len(y)


@pytest.mark.parametrize("c", [2, 3, 10])
def test_classes_c_gives_c_classes_per_client(c: int) -> None:
    y = _labels()
    parts = partition_indices(y, parse_partition(f"classes:{c}", 10), 50, seed=1)
    counts = label_counts(y, parts, 10)
    assert ((counts > 0).sum(1) == c).all()
    _check_disjoint_cover(parts, len(y))


def test_iid_sizes_balanced_and_labels_mixed() -> None:
    y = _labels()
    parts = partition_indices(y, parse_partition("iid"), 20, seed=0)
    sizes = np.array([len(p) for p in parts])
    assert sizes.max() - sizes.min() <= 1
    assert ((label_counts(y, parts, 10) > 0).sum(1) >= 8).all()


@pytest.mark.parametrize("n, clients", [(1600, 20), (1603, 7), (50, 50)])
def test_native_iid_equals_flwr_iid_partitioner(n: int, clients: int) -> None:
    """The in-house IID split is exactly flwr-datasets' IidPartitioner on the same shuffle."""
    from flwr_datasets.partitioner import IidPartitioner

    from fldistill.data.partition import _index_dataset

    y = np.random.default_rng(5).integers(0, 10, n)
    ours = partition_indices(y, parse_partition("iid"), clients, seed=4)
    part = IidPartitioner(num_partitions=clients)
    part.dataset = _index_dataset(y, np.random.default_rng(4).permutation(n))
    theirs = [np.sort(np.asarray(part.load_partition(i)["idx"])) for i in range(clients)]
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
    _check_disjoint_cover(ours, n)
    assert sum(len(p) for p in ours) == n


def test_dirichlet_small_alpha_is_skewed_and_nonempty() -> None:
    y = _labels(400)
    parts = partition_indices(y, parse_partition("dirichlet:0.1"), 50, seed=0)
    counts = label_counts(y, parts, 10)
    assert (counts.sum(1) >= 2).all()
    # strong skew: on average a client's top class holds most of its data
    assert (counts.max(1) / counts.sum(1)).mean() > 0.5
    _check_disjoint_cover(parts, len(y))


def test_quantity_skew_sizes_grow() -> None:
    y = _labels()
    parts = partition_indices(y, parse_partition("quantity:linear"), 10, seed=0)
    sizes = [len(p) for p in parts]
    assert sizes == sorted(sizes) and sizes[-1] > 5 * sizes[0]


def test_partition_is_seeded() -> None:
    y = _labels()
    a = partition_indices(y, parse_partition("dirichlet:0.5"), 20, seed=7)
    b = partition_indices(y, parse_partition("dirichlet:0.5"), 20, seed=7)
    c = partition_indices(y, parse_partition("dirichlet:0.5"), 20, seed=8)
    assert all((u == v).all() for u, v in zip(a, b))
    assert not all(len(u) == len(v) and (u == v).all() for u, v in zip(a, c))


@pytest.mark.parametrize("bad", ["classes:11", "classes:0", "classes:x", "dirichlet:-1", "dirichlet:a", "shards", "quantity:cubic"])
def test_bad_partition_strings(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_partition(bad, 10)


def test_federation_local_split_and_global_test() -> None:
    fed = build_federation("digits", "classes:2", 10, seed=0)
    for tr, te in zip(fed.client_train, fed.client_test):
        assert len(np.intersect1d(tr, te)) == 0
        n = len(tr) + len(te)
        assert len(te) == int(np.floor(0.2 * n))
    assert len(fed.y_test) == 360
    assert fed.label_counts().shape == (10, 10)


# --------------------------------------------------------------------------- dirichlet-client


def _mnist1d_sized_labels() -> np.ndarray:
    return _labels(1600)  # 16,000 labels over 10 classes, as mnist1d's default training pool


def test_dirichlet_client_exact_sizes_and_skew_grows_as_alpha_shrinks() -> None:
    y = _mnist1d_sized_labels()
    mean_classes = []
    for alpha in (1.0, 0.1, 0.01):
        parts = partition_indices(y, parse_partition(f"dirichlet-client:{alpha}", 10, 100), 100, seed=0)
        assert [len(p) for p in parts] == [160] * 100, f"alpha={alpha}: every client gets exactly n // N samples"
        _check_disjoint_cover(parts, len(y))
        assert all(np.array_equal(p, np.sort(p)) and p.dtype == np.int64 for p in parts)
        mean_classes.append(float((label_counts(y, parts, 10) > 0).sum(1).mean()))
    assert mean_classes[0] > mean_classes[1] > mean_classes[2], f"classes per client should drop with alpha: {mean_classes}"
    assert mean_classes[2] < 3.5 < 8 < mean_classes[0]


def test_dirichlet_client_remainder_goes_to_first_clients() -> None:
    y = np.random.default_rng(2).integers(0, 10, 1605)  # 1605 = 7 * 229 + 2
    parts = partition_indices(y, parse_partition("dirichlet-client:0.05"), 7, seed=1)
    assert [len(p) for p in parts] == [230, 230, 229, 229, 229, 229, 229]
    _check_disjoint_cover(parts, len(y))
    assert sum(len(p) for p in parts) == len(y), "with the remainder spread, every sample is used"


@pytest.mark.parametrize("alpha", [1e-4, 0.01, 100.0])
def test_dirichlet_client_any_alpha_any_n_the_data_holds(alpha: float) -> None:
    # Unbalanced classes (one is rare) and as many clients as samples: still exact.
    y = np.concatenate([np.zeros(5, np.int64), np.ones(300, np.int64), np.full(95, 2)])
    for n_clients in (400, 133, 3):
        parts = partition_indices(y, parse_partition(f"dirichlet-client:{alpha}"), n_clients, seed=4)
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(y)
        _check_disjoint_cover(parts, len(y))


def test_dirichlet_client_is_seeded() -> None:
    y = _labels()
    a = partition_indices(y, parse_partition("dirichlet-client:0.3"), 20, seed=7)
    b = partition_indices(y, parse_partition("dirichlet-client:0.3"), 20, seed=7)
    c = partition_indices(y, parse_partition("dirichlet-client:0.3"), 20, seed=8)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not all(np.array_equal(u, v) for u, v in zip(a, c))


def test_dirichlet_client_runs_where_dirichlet_fails() -> None:
    """The headline case: Dir(0.01) over 100 clients of mnist1d."""
    fed = build_federation("mnist1d", "dirichlet-client:0.01", 100, seed=0)
    assert fed.partition == "dirichlet-client:0.01"
    sizes = fed.train_sizes() + np.array([len(t) for t in fed.client_test])
    assert (sizes == 160).all()
    assert ((fed.label_counts() > 0).sum(1).mean()) < 3.5


def test_dirichlet_failure_names_dirichlet_client() -> None:
    y = _labels(40)
    with pytest.raises(ConfigError, match=r"dirichlet-client:0\.01") as info:
        partition_indices(y, parse_partition("dirichlet:0.01"), 100, seed=0)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad", ["dirichlet-client:0", "dirichlet-client:-0.5", "dirichlet-client:x", "dirichlet-client"])
def test_bad_dirichlet_client_strings(bad: str) -> None:
    with pytest.raises(ConfigError, match="dirichlet-client"):
        parse_partition(bad, 10)


def test_unknown_partition_lists_dirichlet_client() -> None:
    with pytest.raises(ConfigError, match=r"dirichlet-client:ALPHA"):
        parse_partition("shards", 10)


# Digests of the federations the code built before ``groups`` and ``dirichlet-client``
# existed (commit 3831c18): labels and every client's index arrays, bit for bit.
_BEFORE = {
    ("digits", "iid", 10): "b69d597fd9f208b6",
    ("digits", "classes:2", 10): "7f22af8faa6a0b5e",
    ("digits", "dirichlet:0.5", 10): "f9bb617311b06a51",
    ("mnist1d", "dirichlet:0.3", 50): "5ce3c011aa944ab8",
}


@pytest.mark.parametrize("key", list(_BEFORE))
def test_existing_schemes_unchanged(key: tuple[str, str, int]) -> None:
    import hashlib

    ds, part, n = key
    fed = build_federation(ds, part, n, 3, dataset_size=2000 if ds == "mnist1d" else None)
    h = hashlib.sha256()
    for a in [fed.y.numpy(), fed.y_test.numpy(), *fed.client_train, *fed.client_test]:
        h.update(np.ascontiguousarray(a).astype(np.int64).tobytes())
    assert h.hexdigest()[:16] == _BEFORE[key]
