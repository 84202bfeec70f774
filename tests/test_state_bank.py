"""The state bank: exact rows of mixed dtypes, versions priced as seeds, views, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fldistill.engine.state import StateBank
from fldistill.ledger import Kind


def _template() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(3, 4, generator=g),
        "b": torch.randn(4, generator=g),
        "bn.count": torch.tensor(7, dtype=torch.int64),  # an integer buffer stays exact
    }


def test_rows_are_exact_and_absent_rows_read_as_zeros_or_default() -> None:
    bank = StateBank(_template(), rows=5)
    assert not bank.has(2) and bank.present_rows() == []
    z = bank.get(2)
    assert all(torch.count_nonzero(v) == 0 for v in z.values()) and z["bn.count"].dtype == torch.int64
    st = {"w": torch.full((3, 4), 1.5), "b": torch.arange(4.0), "bn.count": torch.tensor(2**40 + 1)}
    bank.set(2, st)
    got = bank.get(2)
    assert all(torch.equal(got[k], st[k]) and got[k].dtype == st[k].dtype for k in st)
    got["w"].add_(1)  # get returns copies: the bank does not change
    assert torch.equal(bank.get(2)["w"], st["w"])
    dflt = _template()
    assert bank.get(3, dflt)["w"] is dflt["w"] and bank.present_rows() == [2]
    # compact: one rows x values matrix per dtype
    assert bank.matrix(torch.float32).shape == (5, 16) and bank.matrix(torch.int64).shape == (5, 1)
    with pytest.raises(IndexError):
        bank.get(5)
    with pytest.raises(KeyError, match="lacks bank keys"):
        bank.set(0, {"w": st["w"]})


def test_versions_price_the_first_send_as_a_seed() -> None:
    bank = StateBank(_template(), rows=2, fill="template")
    assert bank.has(1) and torch.equal(bank.get(1)["w"], _template()["w"])
    assert bank.kind(0, init_free=True) is Kind.SEED and bank.kind(0, init_free=False) is Kind.PARAM
    bank.set(0, bank.get(0))
    assert bank.version(0) == 1 and bank.kind(0, init_free=True) is Kind.PARAM and bank.kind(1, init_free=True) is Kind.SEED


def test_fields_are_views_and_growing_banks() -> None:
    stats = StateBank({"cnt": torch.tensor(0), "last": torch.tensor(-1)}, rows=4, fill="template")
    cnt, last = stats.field("cnt"), stats.field("last")
    cnt[[1, 3]] += 1
    last[1] = 5
    assert stats.get(1) == {"cnt": torch.tensor(1), "last": torch.tensor(5)} and stats.field("cnt").tolist() == [0, 1, 0, 1]
    traj = StateBank(_template(), rows=0)
    for i in range(3):
        assert traj.append({k: v + i if v.is_floating_point() else v for k, v in _template().items()}) == i
    assert len(traj) == 3 and torch.equal(traj.get(2)["b"], _template()["b"] + 2)
    traj.clear()
    assert len(traj) == 0 and traj.state_dict()[1]["allocated"] is False


def test_checkpoint_round_trip_through_safetensors(tmp_path: Path) -> None:
    bank = StateBank(_template(), rows=4)
    bank.set(1, _template())
    bank.set(1, {k: v * 2 for k, v in _template().items()})
    bank.set(3, _template())
    tensors, meta = bank.state_dict()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "b.safetensors"))
    back = StateBank(_template(), rows=4)
    back.load_state_dict(load_file(str(tmp_path / "b.safetensors")), meta)
    assert back.present_rows() == [1, 3] and back.version(1) == 2 and back.version(3) == 1
    for i in range(4):
        assert all(torch.equal(back.get(i)[k], bank.get(i)[k]) for k in _template())
    other = StateBank({"w": torch.zeros(3, 4)}, rows=4)
    with pytest.raises(ValueError, match="another layout"):
        other.load_state_dict(tensors, meta)
