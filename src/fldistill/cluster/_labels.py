"""Validation of cluster label arrays, shared by the clustering modules."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fldistill.errors import ConfigError


def _as_labels(homog: np.ndarray | Sequence[int]) -> np.ndarray:
    labels = np.asarray(homog)
    if labels.ndim != 1 or labels.size == 0:
        raise ConfigError(f"homogeneous labels must be a non-empty 1-D array, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(f"homogeneous labels must be integers, got dtype {labels.dtype}")
    return labels.astype(np.int64)


def _check_heads(hetero: Sequence[Sequence[int]], heads: Sequence[int]) -> None:
    """One head per heterogeneous cluster (clustering files and the topology plot)."""
    if len(heads) != len(hetero):
        raise ConfigError(f"{len(hetero)} heterogeneous clusters but {len(heads)} heads")
