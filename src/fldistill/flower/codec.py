"""Payload <-> Flower records: tensors travel as an ``ArrayRecord``, kinds and metadata as JSON.

No pickle anywhere: arrays go as raw numpy buffers with their dtype and shape, and the
small metadata as one JSON string in a ``ConfigRecord``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fldistill.ledger import Kind, Payload


def _json_default(v: Any) -> Any:
    # numpy / torch scalars that slip into metadata (sample counts, losses)
    if isinstance(v, (np.generic, torch.Tensor)) and getattr(v, "ndim", 0) == 0:
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"payload metadata value of type {type(v).__name__} is not JSON-serialisable")


def put_payload(rd: RecordDict, prefix: str, payload: Payload, **header: Any) -> None:
    """Store ``payload`` in ``rd`` under ``prefix.arrays`` / ``prefix.config``.

    ``header`` entries (task name, sender) travel beside the payload's own metadata.
    """
    arrays = {n: Array(np.ascontiguousarray(t.detach().cpu().numpy())) for n, t in payload.tensors.items()}
    rd[f"{prefix}.arrays"] = ArrayRecord(array_dict=arrays)
    doc = {"kinds": {n: Kind(k).value for n, k in payload.kinds.items()}, "meta": payload.meta, "header": header}
    rd[f"{prefix}.config"] = ConfigRecord({"json": json.dumps(doc, default=_json_default)})


def get_payload(rd: RecordDict, prefix: str, device: torch.device | str = "cpu") -> tuple[Payload, dict[str, Any]]:
    """The payload stored by :func:`put_payload` and its header."""
    doc = json.loads(str(rd[f"{prefix}.config"]["json"]))
    arrays = cast(ArrayRecord, rd[f"{prefix}.arrays"])  # put_payload stores an ArrayRecord there
    # copy: the record's buffer is read-only and tasks may write into their tensors
    tensors = {n: torch.from_numpy(np.array(arrays[n].numpy(), copy=True)).to(device) for n in doc["kinds"]}
    kinds = {n: Kind(k) for n, k in doc["kinds"].items()}
    return Payload(tensors, kinds, doc["meta"]), doc["header"]


def has_payload(rd: RecordDict, prefix: str) -> bool:
    """Whether ``rd`` holds a payload under ``prefix``."""
    return f"{prefix}.config" in rd


def put_inbox(rd: RecordDict, prefix: str, inbox: list[tuple[int, Payload]], seqs: Sequence[int | None] | None = None) -> None:
    """Store an inbox (sender, payload) list, replacing any inbox already under ``prefix``.

    ``seqs`` are the server's numbers of the messages (:class:`~fldistill.flower.comm.FlowerComm`
    mirrors every node's inbox by them, so that a resumed run can send it again).
    """
    for key in [k for k in rd if k.startswith(prefix + ".")]:
        del rd[key]
    for j, (src, p) in enumerate(inbox):
        put_payload(rd, f"{prefix}.{j}", p, src=int(src), seq=None if seqs is None else seqs[j])


def get_inbox(rd: RecordDict, prefix: str, device: torch.device | str = "cpu") -> list[tuple[int, Payload]]:
    """The inbox stored by :func:`put_inbox` (in order)."""
    return [(src, p) for src, p, _ in get_inbox_entries(rd, prefix, device)]


def get_inbox_entries(rd: RecordDict, prefix: str, device: torch.device | str = "cpu") -> list[tuple[int, Payload, int | None]]:
    """The inbox stored by :func:`put_inbox`, in order: (sender, payload, server's number or None)."""
    out = []
    j = 0
    while has_payload(rd, f"{prefix}.{j}"):
        p, head = get_payload(rd, f"{prefix}.{j}", device)
        seq = head.get("seq")
        out.append((int(head["src"]), p, None if seq is None else int(seq)))
        j += 1
    return out
