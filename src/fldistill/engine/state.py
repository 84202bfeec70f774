"""The state bank: per-client and per-cluster state, kept server-side, checkpointed for free.

Methods keep state on behalf of clients (SCAFFOLD's control variates, MOON's previous
models, KDIA's latest uploads) or of clusters (IFCA's cluster models, CFLHKD's edge
models), and traces of their own (DynaFed's trajectory). A :class:`StateBank` holds such
state as *rows* of named tensors with one fixed layout, stored compactly: one 2-D matrix
per dtype, ``rows x values``, so 1,000 clients of a 5k-parameter model are one 20 MB
tensor rather than 1,000 dictionaries, and a whole bank is a single matrix product away
from a weighted aggregate.

Every row carries

- ``present``: whether it was ever written (an absent row reads as its fill value or a
  default the caller gives, e.g. "zeros before a client's first round");
- ``version``: how many times it was written. Version 0 is the row's initial value,
  which for a model derived from the run seed travels as a seed (free on the ledger):
  :meth:`StateBank.kind` gives the pricing kind of a row's next send.

Banks created with :meth:`fldistill.methods.base.Method.new_bank` are saved and restored
by the method's checkpoint without any code in the method.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from fldistill.ledger import Kind

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Slot:
    """Where one named tensor lives in a row: its dtype's matrix, offset, shape."""

    dtype: torch.dtype
    offset: int
    numel: int
    shape: tuple[int, ...]


class Layout:
    """The fixed mapping between named tensors and flat per-dtype row vectors."""

    def __init__(self, template: Mapping[str, torch.Tensor]) -> None:
        if not template:
            raise ValueError("a state bank needs a non-empty template")
        self.slots: dict[str, Slot] = {}
        self.widths: dict[torch.dtype, int] = {}
        for k, v in template.items():
            off = self.widths.get(v.dtype, 0)
            self.slots[k] = Slot(v.dtype, off, int(v.numel()), tuple(v.shape))
            self.widths[v.dtype] = off + int(v.numel())

    @property
    def keys(self) -> list[str]:
        """The tensor names, in template order."""
        return list(self.slots)

    def flatten(self, state: Mapping[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        """The ``dtype`` part of ``state`` as one flat vector (template order)."""
        parts = [state[k].detach().reshape(-1).to(dtype) for k, s in self.slots.items() if s.dtype == dtype]
        return torch.cat(parts)

    def unflatten(self, vec: torch.Tensor, dtype: torch.dtype) -> State:
        """The named tensors of ``dtype`` read from a flat vector (views of ``vec``)."""
        return {k: vec[s.offset : s.offset + s.numel].view(s.shape) for k, s in self.slots.items() if s.dtype == dtype}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class StateBank:
    """Rows of named tensors with one layout: per client, per cluster, or appended.

    Parameters
    ----------
    template : mapping of str to Tensor
        Names, shapes and dtypes of one row; with ``fill="template"`` also its initial value.
    rows : int
        Number of rows (clients, clusters). ``0`` with :meth:`append` makes a growing
        list (a trajectory of models).
    fill : {"zeros", "template"}
        The value of a row before it is written. ``"template"`` rows count as present
        (a valid value, e.g. the initial model every client starts from), at version 0.
    device : torch.device or str, optional
        Where the rows live (default: the template's device). Large banks can live on
        the CPU while training runs elsewhere.

    Notes
    -----
    Memory is allocated when a row is first written (``"zeros"``) or at creation
    (``"template"``): ``rows x values`` per dtype of the template.
    """

    def __init__(
        self,
        template: Mapping[str, torch.Tensor],
        rows: int = 0,
        *,
        fill: Literal["zeros", "template"] = "zeros",
        device: torch.device | str | None = None,
    ) -> None:
        if rows < 0:
            raise ValueError(f"rows must be >= 0, got {rows}")
        if fill not in ("zeros", "template"):
            raise ValueError(f"fill must be 'zeros' or 'template', got {fill!r}")
        self.layout = Layout(template)
        self.fill = fill
        self.device = torch.device(device) if device is not None else next(iter(template.values())).device
        self.rows = int(rows)
        self._data: dict[torch.dtype, torch.Tensor] = {}
        self.present = torch.zeros(self.rows, dtype=torch.bool)
        self.versions = torch.zeros(self.rows, dtype=torch.int64)
        if fill == "template":
            self._fill_row = {dt: self.layout.flatten(template, dt).to(self.device) for dt in self.layout.widths}
            self._allocate()
            self.present[:] = True
        else:
            self._fill_row = {}

    # -- storage -------------------------------------------------------------------------
    def _allocate(self) -> None:
        if self._data and all(len(m) == self.rows for m in self._data.values()):
            return
        for dt, w in self.layout.widths.items():
            old = self._data.get(dt)
            if dt in self._fill_row:
                new = self._fill_row[dt].unsqueeze(0).repeat(self.rows, 1)
            else:
                new = torch.zeros(self.rows, w, dtype=dt, device=self.device)
            if old is not None:
                new[: len(old)] = old
            self._data[dt] = new

    def _check(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < self.rows:
            raise IndexError(f"row {i} outside the bank's {self.rows} rows")
        return i

    # -- rows ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.rows

    def has(self, i: int) -> bool:
        """Whether row ``i`` holds a value (written, or filled from the template)."""
        return bool(self.present[self._check(i)])

    def present_rows(self) -> list[int]:
        """Indices of the rows that hold a value."""
        return self.present.nonzero().flatten().tolist()

    def get(self, i: int, default: Mapping[str, torch.Tensor] | None = None) -> State:
        """Row ``i`` as named tensors (copies); an absent row gives ``default`` or zeros."""
        i = self._check(i)
        if not self.present[i]:
            if default is not None:
                return dict(default)
            if not self._data:
                return {k: torch.zeros(s.shape, dtype=s.dtype, device=self.device) for k, s in self.layout.slots.items()}
        out: State = {}
        for dt, m in self._data.items():
            out.update(self.layout.unflatten(m[i], dt))
        return {k: out[k].clone() for k in self.layout.keys}

    def set(self, i: int, state: Mapping[str, torch.Tensor]) -> None:
        """Write row ``i`` (every key of the layout) and bump its version."""
        i = self._check(i)
        missing = set(self.layout.slots) - set(state)
        if missing:
            raise KeyError(f"state lacks bank keys {sorted(missing)[:5]}")
        self._allocate()
        for dt, m in self._data.items():
            m[i] = self.layout.flatten(state, dt).to(self.device)
        self.present[i] = True
        self.versions[i] += 1

    def initialize(self, i: int, state: Mapping[str, torch.Tensor]) -> None:
        """Write row ``i``'s initial value: present, at version 0 (still priced as a seed).

        For rows whose initial values differ but all derive from the run seed (IFCA's
        independently initialised cluster models).
        """
        self.set(i, state)
        self.versions[int(i)] = 0

    def append(self, state: Mapping[str, torch.Tensor]) -> int:
        """Add a row at the end (growing banks); returns its index."""
        self.rows += 1
        self.present = torch.cat([self.present, torch.zeros(1, dtype=torch.bool)])
        self.versions = torch.cat([self.versions, torch.zeros(1, dtype=torch.int64)])
        self._allocate()
        self.set(self.rows - 1, state)
        return self.rows - 1

    def clear(self) -> None:
        """Drop every row (a growing bank starts again empty; frees the memory)."""
        self.rows = 0
        self._data = {}
        self.present = torch.zeros(0, dtype=torch.bool)
        self.versions = torch.zeros(0, dtype=torch.int64)

    def matrix(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """All rows' ``dtype`` values as one ``rows x values`` matrix (a view, not a copy)."""
        if dtype not in self.layout.widths:
            raise KeyError(f"the bank holds no {dtype} values")
        self._allocate()
        return self._data[dtype]

    def field(self, key: str) -> torch.Tensor:
        """One named tensor over all rows, ``rows x *shape`` (a view: writes go to the bank)."""
        s = self.layout.slots[key]
        return self.matrix(s.dtype)[:, s.offset : s.offset + s.numel].view(self.rows, *s.shape)

    def version(self, i: int) -> int:
        """How many times row ``i`` was written (0: its initial value)."""
        return int(self.versions[self._check(i)])

    def kind(self, i: int, init_free: bool) -> Kind:
        """How row ``i`` is priced when sent: a seed while it is the seeded initial value."""
        return Kind.SEED if (init_free and self.version(i) == 0) else Kind.PARAM

    # -- checkpoint --------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and JSON metadata of the whole bank."""
        tensors = {"present": self.present.clone(), "versions": self.versions.clone()}
        tensors.update({_dtype_name(dt): m for dt, m in self._data.items()})
        return tensors, {"rows": self.rows, "keys": self.layout.keys, "allocated": bool(self._data)}

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict` (the layout must be the same)."""
        if list(meta["keys"]) != self.layout.keys:
            raise ValueError("the checkpointed bank has another layout than this run's")
        self.rows = int(meta["rows"])
        self.present = tensors["present"].to("cpu", torch.bool).clone()
        self.versions = tensors["versions"].to("cpu", torch.int64).clone()
        self._data = {}
        if meta["allocated"]:
            self._data = {dt: tensors[_dtype_name(dt)].to(self.device, dt).clone() for dt in self.layout.widths}
