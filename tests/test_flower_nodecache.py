"""A SuperNode's cached federation is the federation (exactly), so cached nodes compute the same numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fldistill.flower.nodecache import load_federation, node_federation, save_federation
from fldistill.runner import federation_for, resolve_defaults


def test_saved_federation_loads_identical(tmp_path: Path, make_cfg, monkeypatch) -> None:
    monkeypatch.setenv("FLDISTILL_CACHE", str(tmp_path / "cache"))
    cfg = resolve_defaults(make_cfg(method="hfldd", clients=4, public={"size": 50}))
    fed = federation_for(cfg)
    save_federation(fed, tmp_path / "f")
    got = load_federation(tmp_path / "f")
    for a in ("x", "y", "x_test", "y_test"):
        assert torch.equal(getattr(got, a), getattr(fed, a)) and getattr(got, a).dtype == getattr(fed, a).dtype
    assert all(np.array_equal(a, b) for a, b in zip(got.client_train + got.client_test, fed.client_train + fed.client_test))
    assert np.array_equal(got.public.x, fed.public.x) and np.array_equal(got.public.y, fed.public.y)
    assert (got.name, got.n_classes, got.input_shape, got.partition) == (fed.name, fed.n_classes, fed.input_shape, fed.partition)
    first = node_federation(cfg)  # builds and caches
    again = node_federation(cfg)  # loads
    assert torch.equal(first.x, again.x) and np.array_equal(first.label_counts(), again.label_counts())
    assert len(list((tmp_path / "cache" / "flower-federations").iterdir())) == 1
