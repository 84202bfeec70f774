"""The in-memory dataset container shared by every loader."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fldistill.errors import DataError


@dataclass
class ArrayDataset:
    """Samples held as dense arrays.

    Attributes
    ----------
    x : np.ndarray
        float32 inputs, shape ``(n, *input_shape)``; images are ``(n, C, H, W)``
        scaled to [0, 1] by loaders (normalisation happens later, once, with
        dataset-level statistics).
    y : np.ndarray
        int64 class labels in ``[0, n_classes)``, shape ``(n,)``.
    n_classes : int
        Number of classes of the task (not only those present in ``y``).
    name : str
        Dataset name, for messages and plots.
    """

    x: np.ndarray
    y: np.ndarray
    n_classes: int
    name: str = ""

    def __post_init__(self) -> None:
        self.x = np.ascontiguousarray(self.x, dtype=np.float32)
        self.y = np.ascontiguousarray(self.y, dtype=np.int64)
        if self.x.shape[0] != self.y.shape[0]:
            raise DataError(
                f"{self.name or 'dataset'}: {self.x.shape[0]} inputs but {self.y.shape[0]} labels; "
                "the files are inconsistent, re-create them"
            )
        if self.y.size and (self.y.min() < 0 or self.y.max() >= self.n_classes):
            raise DataError(
                f"{self.name or 'dataset'}: labels must lie in [0, {self.n_classes}), "
                f"found [{self.y.min()}, {self.y.max()}]"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample."""
        return tuple(int(s) for s in self.x.shape[1:])

    def subset(self, idx: np.ndarray) -> ArrayDataset:
        """Return the samples at ``idx`` as a new dataset (copies)."""
        return ArrayDataset(self.x[idx], self.y[idx], self.n_classes, self.name)
