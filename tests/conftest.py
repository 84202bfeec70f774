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


def _comparable(run_dir) -> list[dict]:
    """metrics.jsonl without timings (wall time and phase seconds differ between runs)."""
    import json

    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not (k.endswith("_s") or k == "distill_seconds_per_member")} for r in recs]


@pytest.fixture
def resume_check(tmp_path, monkeypatch):
    """``check(cfg, cut_at)``: interrupt a run at round ``cut_at`` (as Ctrl-C would),
    resume it, and assert it ends with the metrics of an uninterrupted run."""
    from fldistill.methods import get_method
    from fldistill.runner import Runner

    def check(cfg, cut_at: int = 3) -> tuple[list[dict], dict]:
        full, cut = tmp_path / "full", tmp_path / "cut"
        Runner(cfg, full, quiet=True).run()
        cls = get_method(cfg.method)
        orig = cls.round

        def interrupted(self, t: int):
            if t == cut_at:
                raise KeyboardInterrupt
            return orig(self, t)

        monkeypatch.setattr(cls, "round", interrupted)
        with pytest.raises(KeyboardInterrupt, match="--resume"):
            Runner(cfg, cut, quiet=True).run()
        assert [r["round"] for r in _comparable(cut)] == list(range(cut_at))
        monkeypatch.setattr(cls, "round", orig)
        summary = Runner(cfg, cut, resume=True, quiet=True).run()
        assert _comparable(cut) == _comparable(full)
        assert summary["status"] == "completed"
        return _comparable(full), summary

    return check
