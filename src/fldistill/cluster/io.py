"""Clustering results on disk (JSON, plain ints and floats)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fldistill.cluster._labels import _as_labels, _check_heads
from fldistill.errors import DataError

_FORMAT = "fldistill.clustering/1"


def _plain(obj: Any) -> Any:
    """Convert NumPy/torch scalars and containers to JSON-native types."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj) if isinstance(obj, (set, frozenset)) else obj
        return [_plain(v) for v in items]
    if isinstance(obj, torch.Tensor):
        return _plain(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj)
    if obj is None or isinstance(obj, str):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a clustering file")


def save_clustering(
    path: Path | str,
    homog: np.ndarray | Sequence[int],
    hetero: Sequence[Sequence[int]],
    heads: Sequence[int],
    *,
    k: int | None = None,
    purity: float | None = None,
    coverage: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a clustering result as JSON (plain ints/floats only).

    Parameters
    ----------
    path : Path
        Output ``.json`` file; written atomically, parents created.
    homog, hetero, heads
        Homogeneous labels, heterogeneous clusters, heads.
    k : int, optional
        ``K`` of K-Means; defaults to the number of distinct homogeneous labels.
    purity : float, optional
        K-Means purity, if known.
    coverage : list of dict, optional
        Output of :func:`label_coverage`.
    extra : dict, optional
        Further JSON-able metadata (seed, dataset, ...).

    Returns
    -------
    Path
        ``path``.
    """
    labels = _as_labels(homog)
    _check_heads(hetero, heads)
    doc = {
        "format": _FORMAT,
        "k": int(k) if k is not None else int(np.unique(labels).size),
        "homogeneous": labels,
        "heterogeneous": [list(m) for m in hetero],
        "heads": list(heads),
        "purity": None if purity is None else float(purity),
        "coverage": coverage,
        "extra": extra or {},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_plain(doc), indent=1) + "\n")
    os.replace(tmp, path)  # never leave a half-written file behind
    return path


def load_clustering(path: Path | str) -> dict[str, Any]:
    """Read a file written by :func:`save_clustering`.

    Returns
    -------
    dict
        Keys ``format``, ``k``, ``homogeneous`` (list of int), ``heterogeneous``
        (list of list of int), ``heads``, ``purity``, ``coverage``, ``extra``.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"clustering file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise DataError(f"clustering file {path} is not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise DataError(f"{path} is not a fldistill clustering file (expected format {_FORMAT!r})")
    missing = {"k", "homogeneous", "heterogeneous", "heads"} - doc.keys()
    if missing:
        raise DataError(f"clustering file {path} lacks keys {sorted(missing)}")
    return doc
