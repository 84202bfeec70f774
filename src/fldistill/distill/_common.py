"""Pieces shared by the distillers: the result type and class-balanced sampling."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class DistillResult:
    """A member's distilled (synthetic) data set.

    Attributes
    ----------
    x : Tensor
        Synthetic inputs, shape ``(m, *input_shape)``, dtype and device of the real inputs.
    y : Tensor
        int64 hard labels, shape ``(m,)``; only classes the member holds.
    seconds : float
        Wall-clock time spent distilling.
    iterations : int
        Optimisation steps actually run (0 for ``none``/``random`` or a skipped run).
    info : dict of str to float
        Diagnostics (losses, flags), for logs.
    """

    x: Tensor
    y: Tensor
    seconds: float
    iterations: int
    info: dict[str, float] = field(default_factory=dict)


class ClassSampler:
    """Draws class-balanced index sets from one member's labels.

    Indices are kept on the CPU and drawn with a CPU ``torch.Generator``, so the
    same seed gives the same draws whatever device the data lives on.

    Parameters
    ----------
    y : Tensor
        int64 labels of the member's samples (any device).
    """

    def __init__(self, y: Tensor) -> None:
        y_cpu = y.detach().to("cpu", torch.int64)
        self.classes = torch.unique(y_cpu)  # sorted
        self.members = [torch.nonzero(y_cpu == c).flatten() for c in self.classes]
        self.counts = [int(m.numel()) for m in self.members]

    def allocate(self, total: int, generator: torch.Generator, *, proportional: bool) -> list[int]:
        """Split ``total`` draws over the present classes.

        Each class gets at least one draw while ``total`` allows, never more than it
        holds, and otherwise a share proportional to its count (``proportional``) or
        an equal share. Leftover draws go to the class furthest below its share,
        ties broken at random, so no total has to be divisible by the class count.
        """
        k = len(self.counts)
        total = min(total, sum(self.counts))
        n = sum(self.counts)
        share = [total * c / n if proportional else total / k for c in self.counts]
        alloc = [1 if total >= k else 0 for _ in range(k)]
        noise = torch.rand(k, generator=generator).tolist()  # random tie-breaking
        for _ in range(total - sum(alloc)):
            best = max(
                (i for i in range(k) if alloc[i] < self.counts[i]),
                key=lambda i: (share[i] - alloc[i], noise[i]),
            )
            alloc[best] += 1
        return alloc

    def draw(self, total: int, generator: torch.Generator, *, proportional: bool) -> Tensor:
        """Indices (CPU int64, grouped by class) of ``total`` samples without replacement."""
        alloc = self.allocate(total, generator, proportional=proportional)
        parts = [
            m[torch.randperm(m.numel(), generator=generator)[:a]]
            for m, a in zip(self.members, alloc)
            if a > 0
        ]
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)
