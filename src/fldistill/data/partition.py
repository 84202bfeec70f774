"""Non-IID partition schemes, through flwr-datasets partitioners.

A scheme is named by a short string:

- ``iid``: equal random shards;
- ``classes:C``: pathological label skew, C classes per client (HFLDD's setting). The
  first class of client ``i`` is ``i mod n_classes`` and the others are random, so with
  C=1, N=100 and 10 classes each class lands on exactly 10 clients;
- ``dirichlet:ALPHA``: label proportions per client drawn from Dir(ALPHA), with the
  MOON/NIID-Bench balancing KDIA uses (a client above the average size gets no more)
  and at least 10 samples per client where drawable (else 5, else 2);
- ``quantity:linear|square|exponential``: quantity skew, client sizes proportional to
  i, i^2 or e^i (labels IID).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import cast

import numpy as np

from fldistill.errors import ConfigError


@dataclass(frozen=True)
class PartitionSpec:
    """A parsed partition scheme."""

    kind: str
    value: float | str | None = None

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}:{self.value}"


_HELP = "use iid, classes:C, dirichlet:ALPHA or quantity:linear|square|exponential"


def parse_partition(text: str, n_classes: int | None = None, n_clients: int | None = None) -> PartitionSpec:
    """Parse and validate a scheme string against the task size.

    Raises
    ------
    ConfigError
        If the scheme is unknown or does not fit (``classes:11`` on 10 classes).
    """
    t = text.strip().lower()
    kind, _, arg = t.partition(":")
    if kind == "iid" and not arg:
        return PartitionSpec("iid")
    if kind == "classes":
        try:
            c = int(arg)
        except ValueError:
            raise ConfigError(f"partition '{text}': classes needs an integer, e.g. classes:2") from None
        if c < 1:
            raise ConfigError(f"partition '{text}': classes per client must be >= 1")
        if n_classes is not None and c > n_classes:
            raise ConfigError(
                f"partition '{text}' asks for {c} classes per client but the dataset has {n_classes}; "
                f"use classes:1 .. classes:{n_classes}"
            )
        return PartitionSpec("classes", c)
    if kind == "dirichlet":
        try:
            a = float(arg)
        except ValueError:
            raise ConfigError(f"partition '{text}': dirichlet needs a number, e.g. dirichlet:0.5") from None
        if not a > 0:
            raise ConfigError(f"partition '{text}': the Dirichlet alpha must be > 0")
        return PartitionSpec("dirichlet", a)
    if kind == "quantity" and arg in ("linear", "square", "exponential"):
        return PartitionSpec("quantity", arg)
    raise ConfigError(f"unknown partition '{text}'; {_HELP}")


def _index_dataset(labels: np.ndarray, order: np.ndarray):  # -> datasets.Dataset
    import datasets

    # flwr-datasets works on HF datasets; we partition indices, never copy the samples.
    datasets.disable_progress_bars()
    logging.getLogger("datasets").setLevel(logging.ERROR)
    return datasets.Dataset.from_dict({"idx": order.astype(np.int64), "label": labels[order].astype(np.int64)})


def partition_indices(labels: np.ndarray, spec: PartitionSpec, n_clients: int, seed: int) -> list[np.ndarray]:
    """Split sample indices among ``n_clients`` according to ``spec``.

    Parameters
    ----------
    labels : np.ndarray
        Labels of the training pool.
    spec : PartitionSpec
        The scheme.
    n_clients : int
        Number of clients.
    seed : int
        Seed of the partition stream.

    Returns
    -------
    list of np.ndarray
        Sorted sample indices of each client.
    """
    n = len(labels)
    if n_clients > n:
        raise ConfigError(f"{n_clients} clients but only {n} training samples; use fewer clients or more data")
    rng = np.random.default_rng(seed)
    # Shard-based partitioners are contiguous: shuffle once, from the partition seed.
    order = rng.permutation(n)
    if spec.kind == "iid":
        # flwr's IidPartitioner is contiguous equal shards of the shuffled pool (HF
        # ``Dataset.shard(contiguous=True)``: the first ``n % n_clients`` get one more),
        # i.e. ``np.array_split``; done here it skips importing flwr-datasets and HF
        # datasets (2-4 s of start-up). A test checks it equals flwr's partitioner.
        return [np.sort(part) for part in np.array_split(order, n_clients)]
    last_err: Exception | None = None
    # flwr's Dirichlet partitioner gives up after 10 draws; a few more seeds (bounded)
    # make small alphas usable without ever looping forever.
    for attempt in range(_ATTEMPTS if spec.kind == "dirichlet" else 1):
        # KDIA's code asks for >= 10 samples per client; at small alphas that is rarely
        # drawable, so the floor relaxes to 5, then 2 (each draw is flwr's own 10 tries).
        floor = (10, 10, 10, 5, 5, 5, 2, 2, 2, 2)[attempt]
        part = _make_partitioner(spec, n_clients, n, int(rng.integers(2**31 - 1)), floor)
        part.dataset = _index_dataset(labels, order)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = [np.sort(np.asarray(part.load_partition(i)["idx"], dtype=np.int64)) for i in range(n_clients)]
            break
        except ValueError as err:
            last_err = err
    else:
        raise ConfigError(
            f"partition {spec} of {n} samples over {n_clients} clients failed after {_ATTEMPTS} seeds: {last_err} "
            "(try a larger alpha, fewer clients or more data)"
        )
    empty = [i for i, ix in enumerate(out) if len(ix) == 0]
    if empty:
        raise ConfigError(
            f"partition {spec} left {len(empty)} of {n_clients} clients without data (e.g. client {empty[0]}); "
            "use fewer clients, more classes per client or more data"
        )
    return out


_ATTEMPTS = 10


def _make_partitioner(spec: PartitionSpec, n_clients: int, n: int, pseed: int, floor: int = 10):  # -> flwr Partitioner
    from flwr_datasets import partitioner as P

    if spec.kind == "iid":
        return P.IidPartitioner(num_partitions=n_clients)
    if spec.kind == "classes":
        return P.PathologicalPartitioner(
            num_partitions=n_clients,
            partition_by="label",
            num_classes_per_partition=int(cast(int, spec.value)),  # parse_partition stores an int
            class_assignment_mode="first-deterministic",
            shuffle=True,
            seed=pseed,
        )
    if spec.kind == "dirichlet":
        return P.DirichletPartitioner(
            num_partitions=n_clients,
            partition_by="label",
            alpha=float(cast(float, spec.value)),  # parse_partition stores a float
            min_partition_size=max(2, min(floor, n // (2 * n_clients))),
            self_balancing=True,  # the MOON/NIID-Bench/KDIA variant (methods.md §0)
            shuffle=True,
            seed=pseed,
        )
    if spec.kind == "quantity":
        cls = {"linear": P.LinearPartitioner, "square": P.SquarePartitioner, "exponential": P.ExponentialPartitioner}
        return cls[str(spec.value)](num_partitions=n_clients)
    raise ConfigError(f"unknown partition kind {spec.kind}")


def label_counts(labels: np.ndarray, parts: list[np.ndarray], n_classes: int) -> np.ndarray:
    """Per-client class counts, shape ``(n_clients, n_classes)``."""
    return np.stack([np.bincount(labels[ix], minlength=n_classes) for ix in parts])
