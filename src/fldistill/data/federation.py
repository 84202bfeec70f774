"""The federation's data: one tensor pool, index views per client, a global test set.

Clients never own copies of their samples: they hold index arrays into one pool, so
memory stays flat in the number of clients.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from fldistill.data.arrays import ArrayDataset
from fldistill.data.groups import assign_groups, parse_groups, transform
from fldistill.data.partition import label_counts, parse_partition, partition_indices
from fldistill.data.registry import dataset_info, load_dataset
from fldistill.errors import ConfigError, DataError
from fldistill.seeding import np_rng, seed_for


@dataclass
class Federation:
    """Data of a simulated federation.

    Attributes
    ----------
    x, y : torch.Tensor
        The normalised training pool and its labels.
    client_train, client_test : list of np.ndarray
        Each client's local train (80%) and local test (20%) indices into the pool.
    x_test, y_test : torch.Tensor
        The global test set (the dataset's own test split).
    public : ArrayDataset or None
        The public auxiliary set, normalised like the pool, disjoint from both.
    groups : str or None
        The ground-truth groups spec, normalised (``"4:rotate"``); None without groups.
    client_group : np.ndarray or None
        int64 ``(n_clients,)``: each client's true group. Its local train and test
        samples in ``x``/``y`` are already transformed by its group's transform.
    group_test : list of (torch.Tensor, torch.Tensor) or None
        Per group, the global test set under that group's transform (same device and
        normalisation as ``x_test``; an unchanged tensor is ``x_test``/``y_test`` itself).
    """

    name: str
    n_classes: int
    input_shape: tuple[int, ...]
    x: torch.Tensor
    y: torch.Tensor
    client_train: list[np.ndarray]
    client_test: list[np.ndarray]
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: np.ndarray
    std: np.ndarray
    public: ArrayDataset | None = None
    partition: str = ""
    groups: str | None = None
    client_group: np.ndarray | None = None
    group_test: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    client_val: list[np.ndarray] | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def n_clients(self) -> int:
        return len(self.client_train)

    def client_data(self, cid: int, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """A client's local samples (``split`` = ``train`` or ``test``)."""
        ix = (self.client_train if split == "train" else self.client_test)[cid]
        t = torch.from_numpy(ix)
        return self.x[t], self.y[t]

    def train_sizes(self) -> np.ndarray:
        """Local training sample counts of all clients."""
        return np.array([len(ix) for ix in self.client_train], dtype=np.int64)

    def label_counts(self) -> np.ndarray:
        """``(n_clients, n_classes)`` class counts of the local training data."""
        if "counts" not in self._cache:
            self._cache["counts"] = label_counts(self.y.cpu().numpy(), self.client_train, self.n_classes)
        return self._cache["counts"]

    def all_train_indices(self) -> np.ndarray:
        """Indices of every client's local training data (the centralized union)."""
        return np.sort(np.concatenate(self.client_train))


def _norm_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Per channel for images (n, C, H, W); one scalar for flat/1-D data.
    axes = (0, 2, 3) if x.ndim == 4 else tuple(range(x.ndim))
    mean = x.mean(axis=axes, keepdims=True)[0]
    std = x.std(axis=axes, keepdims=True)[0] + 1e-8
    return mean.astype(np.float32), std.astype(np.float32)


DEFAULT_PUBLIC_SIZE = 1000


def shared_samples(a: np.ndarray, b: np.ndarray) -> int:
    """How many samples (rows) of ``a`` also occur in ``b``, by content hash of their bytes."""
    import hashlib

    def digests(x: np.ndarray) -> list[bytes]:
        rows = np.ascontiguousarray(x).reshape(len(x), -1)
        return [hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in rows]

    seen = set(digests(b))
    return sum(d in seen for d in digests(a))


def build_public(
    source: str,
    size: int | None,
    dataset: str,
    pool: ArrayDataset,
    data_dir: str | None,
    seed: int,
    public_dir: str | None = None,
) -> tuple[ArrayDataset, np.ndarray]:
    """Build the public auxiliary set.

    ``size=None`` is :data:`DEFAULT_PUBLIC_SIZE`, capped at a tenth of the training pool
    when the set is held out of it (so small datasets such as ``digits`` keep 90% for the
    clients). Returns the set and the pool indices it consumed (``holdout`` removes them
    from the clients' pool so the public set stays disjoint). ``dataset:NAME`` reads NAME
    from ``public_dir`` (or where a system package installed it), never from the clients'
    ``data_dir``, and refuses a set that shares any sample with the clients' pool.
    """
    src = source
    if src == "auto":
        src = "shifted" if dataset == "mnist1d" else "holdout"
    if size is None:
        size = min(DEFAULT_PUBLIC_SIZE, len(pool) // 10) if src == "holdout" else DEFAULT_PUBLIC_SIZE
    if src == "holdout":
        if size < 1:
            raise DataError(f"the training pool has {len(pool)} samples, too few to hold out a public set; use public.source=noise")
        if size >= len(pool) // 2:
            raise ConfigError(
                f"public.size={size} is too large to hold out of {len(pool)} training samples; "
                f"use at most {len(pool) // 2 - 1}, or leave public.size unset ({min(DEFAULT_PUBLIC_SIZE, len(pool) // 10)} here)"
            )
        ix = np_rng(seed, "public").choice(len(pool), size, replace=False)
        return pool.subset(np.sort(ix)), np.sort(ix)
    if src == "shifted":
        if dataset != "mnist1d":
            raise ConfigError("public.source=shifted exists only for mnist1d; use holdout, noise or dataset:NAME")
        from fldistill.data.embedded import mnist1d_shifted

        return mnist1d_shifted(size), np.array([], dtype=np.int64)
    if src == "noise":
        g = np_rng(seed, "public-noise")
        x = g.standard_normal((size, *pool.input_shape)).astype(np.float32) * pool.x.std() + pool.x.mean()
        return ArrayDataset(x, np.zeros(size, np.int64), pool.n_classes, "noise"), np.array([], dtype=np.int64)
    if src.startswith("dataset:"):
        other = src.split(":", 1)[1]
        if other == dataset:
            raise ConfigError(f"public.source={src} is the clients' own dataset; use public.source=holdout to hold a disjoint part out")
        tr, _ = load_dataset(other, public_dir)  # its own folder: never the clients' --data-dir
        if tr.input_shape != pool.input_shape:
            raise ConfigError(
                f"public.source={src} has inputs of shape {tr.input_shape}, the clients' data {pool.input_shape}; "
                "pick a dataset of the same shape"
            )
        ix = np_rng(seed, "public").choice(len(tr), min(size, len(tr)), replace=False)
        public = tr.subset(np.sort(ix))
        shared = shared_samples(public.x, pool.x)
        if shared:
            raise DataError(
                f"public.source={src}: {shared} of its {len(public)} samples are also in the clients' training data "
                f"(same content); point public.data_dir at the {other} files, not at the clients' ({data_dir})"
            )
        return public, np.array([], dtype=np.int64)
    raise ConfigError(f"unknown public.source '{source}'; use auto, holdout, shifted, noise or dataset:NAME")


def build_federation(
    dataset: str,
    partition: str,
    n_clients: int,
    seed: int,
    *,
    data_dir: str | None = None,
    dataset_size: int | None = None,
    local_test_fraction: float = 0.2,
    public_source: str | None = None,
    public_size: int | None = None,
    public_dir: str | None = None,
    validation_fraction: float = 0.0,
    device: str | torch.device = "cpu",
    groups: str | None = None,
) -> Federation:
    """Load, partition and split a dataset into a :class:`Federation`.

    Parameters
    ----------
    public_source : str or None
        Build the public auxiliary set from this source (see :class:`PublicConfig`);
        None when the method needs none.
    groups : str or None
        Ground-truth groups ``G:KIND`` (:mod:`fldistill.data.groups`): each client's
        local samples are transformed by its group's transform after normalisation, and
        ``group_test`` holds the transformed global test sets. None: no groups (the
        federation is exactly the one built without this argument).
    """
    info = dataset_info(dataset)
    parse_partition(partition, info.n_classes or None, n_clients)  # fail fast, before loading
    if groups is not None:
        parse_groups(groups, n_classes=info.n_classes or None, input_shape=info.input_shape or None, n_clients=n_clients)
    train, test = load_dataset(dataset, data_dir, dataset_size)
    spec = parse_partition(partition, train.n_classes, n_clients)
    gspec = None if groups is None else parse_groups(groups, n_classes=train.n_classes, input_shape=train.input_shape, n_clients=n_clients)
    public = None
    keep = np.arange(len(train))
    if public_source is not None:
        public, used = build_public(public_source, public_size, dataset, train, data_dir, seed, public_dir)
        keep = np.setdiff1d(keep, used)
    pool = train.subset(keep) if len(keep) != len(train) else train
    parts = partition_indices(pool.y, spec, n_clients, seed_for(seed, "partition"))
    tr_parts, te_parts, val_parts = [], [], []
    for cid, ix in enumerate(parts):
        perm = np_rng(seed, "local-split", cid).permutation(ix)
        n_test = int(np.floor(len(ix) * local_test_fraction))
        if len(ix) - n_test < 1:
            raise ConfigError(f"client {cid} has {len(ix)} samples, too few for a local train/test split")
        train_ix = perm[n_test:]
        if validation_fraction > 0:  # only then: without it the split is exactly the one built before
            n_val = int(np.floor(len(train_ix) * validation_fraction))
            if len(train_ix) - n_val < 1:
                raise ConfigError(f"client {cid} has {len(train_ix)} training samples, too few to carve a validation split")
            val_parts.append(np.sort(train_ix[:n_val]))
            train_ix = train_ix[n_val:]
        tr_parts.append(np.sort(train_ix))
        te_parts.append(np.sort(perm[:n_test]))
    mean, std = _norm_stats(pool.x)
    dev = torch.device(device)

    def norm(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((a - mean) / std).to(dev)

    if public is not None:
        public = ArrayDataset((public.x - mean) / std, public.y, public.n_classes, public.name)
    x, y = norm(pool.x), torch.from_numpy(pool.y).to(dev)
    x_test, y_test = norm(test.x), torch.from_numpy(test.y).to(dev)
    client_group, group_test = None, None
    if gspec is not None:
        client_group = assign_groups(n_clients, gspec.n_groups, seed)
        # ``x`` is a fresh array, but on CPU ``y`` shares memory with the loaded labels.
        y = y.clone()
        group_test = []
        for g in range(gspec.n_groups):
            # A pool sample belongs to one client only, so it is transformed once, in place.
            members = np.flatnonzero(client_group == g)
            own = [tr_parts, te_parts, *([val_parts] if val_parts else [])]
            ix = np.concatenate([parts[c] for parts in own for c in members])
            t = torch.from_numpy(ix).to(dev)
            x[t], y[t] = transform(x[t], y[t], gspec.kind, g, train.n_classes, seed)
            group_test.append(transform(x_test, y_test, gspec.kind, g, train.n_classes, seed))
    return Federation(
        name=dataset,
        n_classes=train.n_classes,
        input_shape=train.input_shape,
        x=x,
        y=y,
        client_train=tr_parts,
        client_test=te_parts,
        x_test=x_test,
        y_test=y_test,
        mean=mean,
        std=std,
        public=public,
        partition=str(spec),
        groups=None if gspec is None else str(gspec),
        client_group=client_group,
        group_test=group_test,
        client_val=val_parts if validation_fraction > 0 else None,
    )
