"""Shared fixtures: tiny, fast federations on the embedded datasets."""

from __future__ import annotations

import os

import pytest
import torch

# Keep tests reproducible and light on a shared 2-core machine.
torch.set_num_threads(1)
os.environ.setdefault("FLDISTILL_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache"))


def tiny_cfg(**over):
    """A seconds-long FedAvg run on digits."""
    from fldistill.config import parse_config

    base = {
        "method": "fedavg",
        "dataset": "digits",
        "partition": "classes:2",
        "clients": 10,
        "rounds": 3,
        "seed": 1,
        "local": {"amount": 1, "lr": 0.05, "batch_size": 32, "momentum": 0.9},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    return parse_config(base)


@pytest.fixture
def make_cfg():
    return tiny_cfg
