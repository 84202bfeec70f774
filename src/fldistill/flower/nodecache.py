"""A SuperNode's federation, cached on its disk between messages.

Flower's deployment runtime starts a new ClientApp process for every message; building
the federation each time (loading the dataset, partitioning) would cost seconds per
message. The node saves what it built once (safetensors + JSON, no pickle) under
``$FLDISTILL_CACHE/flower-federations/<hash of the data config>`` and loads it after.
The hash covers ``groups``; the ground-truth groups (``client_group``, ``group_test``)
are saved and loaded with the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from fldistill import __version__
from fldistill.config import RunConfig
from fldistill.data.arrays import ArrayDataset
from fldistill.data.embedded import cache_dir
from fldistill.data.federation import Federation

_DATA_KEYS = (
    "dataset", "data_dir", "dataset_size", "partition", "groups", "clients", "seed", "local_test_fraction", "public", "method", "params",
)


def _key(cfg: RunConfig) -> str:
    doc = json.loads(cfg.to_json())
    doc = {k: doc.get(k) for k in _DATA_KEYS} | {"version": __version__}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:24]


def save_federation(fed: Federation, path: Path) -> None:
    """Write ``fed`` to ``path`` (a folder), atomically."""
    arrays = {
        "x": fed.x.cpu().numpy(), "y": fed.y.cpu().numpy(), "x_test": fed.x_test.cpu().numpy(),
        "y_test": fed.y_test.cpu().numpy(), "mean": np.asarray(fed.mean), "std": np.asarray(fed.std),
    }
    for i, (tr, te) in enumerate(zip(fed.client_train, fed.client_test)):
        arrays[f"train.{i}"], arrays[f"test.{i}"] = np.asarray(tr), np.asarray(te)
    meta = {"name": fed.name, "n_classes": fed.n_classes, "input_shape": list(fed.input_shape), "partition": fed.partition,
            "n_clients": fed.n_clients, "public": None}
    if fed.public is not None:
        arrays["public.x"], arrays["public.y"] = fed.public.x, fed.public.y
        meta["public"] = {"n_classes": fed.public.n_classes, "name": fed.public.name}
    meta["groups"] = fed.groups
    if fed.client_group is not None:
        arrays["client_group"] = np.asarray(fed.client_group, dtype=np.int64)
    for g, (gx, gy) in enumerate(fed.group_test or []):
        arrays[f"group_test.{g}.x"], arrays[f"group_test.{g}.y"] = gx.cpu().numpy(), gy.cpu().numpy()
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp / "federation.safetensors"))
    (tmp / "meta.json").write_text(json.dumps(meta))
    try:
        os.replace(tmp, path)
    except OSError:  # another node on this machine saved it first
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()


def load_federation(path: Path, device: torch.device | str = "cpu") -> Federation:
    """Read a federation written by :func:`save_federation`."""
    meta = json.loads((path / "meta.json").read_text())
    a = load_file(str(path / "federation.safetensors"))
    pub = meta["public"]
    public = ArrayDataset(a["public.x"], a["public.y"], pub["n_classes"], pub["name"]) if pub else None
    n = meta["n_clients"]
    n_groups = sum(1 for k in a if k.startswith("group_test.") and k.endswith(".x"))
    group_test = [
        (torch.from_numpy(a[f"group_test.{g}.x"]).to(device), torch.from_numpy(a[f"group_test.{g}.y"]).to(device)) for g in range(n_groups)
    ]
    return Federation(
        name=meta["name"], n_classes=meta["n_classes"], input_shape=tuple(meta["input_shape"]),
        x=torch.from_numpy(a["x"]).to(device), y=torch.from_numpy(a["y"]).to(device),
        client_train=[a[f"train.{i}"] for i in range(n)], client_test=[a[f"test.{i}"] for i in range(n)],
        x_test=torch.from_numpy(a["x_test"]).to(device), y_test=torch.from_numpy(a["y_test"]).to(device),
        mean=a["mean"], std=a["std"], public=public, partition=meta["partition"],
        groups=meta.get("groups"), client_group=a.get("client_group"), group_test=group_test if meta.get("groups") else None,
    )


def node_federation(cfg: RunConfig) -> Federation:
    """The run's federation, from this machine's cache when a node already built it."""
    from fldistill.runner import federation_for

    path = cache_dir() / "flower-federations" / _key(cfg)
    if (path / "meta.json").is_file():
        return load_federation(path, torch.device(cfg.device))
    fed = federation_for(cfg)
    save_federation(fed, path)
    return fed
