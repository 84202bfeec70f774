"""Dataset distillation for HFLDD's "IID dataset generation" phase.

A cluster member condenses its local data into a small synthetic set that it
sends to its cluster head. ``distill(method, ...)`` is the entry point; the
methods are ``kip`` (HFLDD's), ``dm``, and the baselines ``random`` (a real,
class-stratified subset, the same one KIP and DM start from) and ``none`` (all
data). Inputs are expected to be normalised with fixed dataset-level statistics,
so synthetic sets from different members live in one space.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from fldistill.distill._common import ClassSampler, DistillResult
from fldistill.distill.dm import DMConfig, dm_distill
from fldistill.distill.kernels import fc_kernel, rbf_kernel
from fldistill.distill.kip import KIPConfig, kip_distill, krr_solve
from fldistill.errors import ConfigError, DataError

Progress = Callable[[int, int], None] | None


def _config(cls: type, params: dict[str, Any], method: str) -> Any:
    """Build ``cls`` from ``params``; ``preset: "fast"`` / ``"paper"`` starts from ``cls.fast()`` / ``cls.paper()``."""
    params = dict(params)
    preset = params.pop("preset", None)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ConfigError(f"unknown {method} parameter(s) {unknown}; valid: {sorted(names)}")
    if preset is None:
        return cls(**params)
    make = getattr(cls, preset, None) if preset in ("fast", "paper") else None
    if make is None:
        have = [p for p in ("fast", "paper") if hasattr(cls, p)]
        raise ConfigError(f"unknown {method} preset {preset!r}; use one of {have}")
    return dataclasses.replace(make(), **params)


def _kip(x, y, n_classes, n_support, params, generator, progress) -> DistillResult:
    return kip_distill(x, y, n_classes, n_support, _config(KIPConfig, params, "kip"), generator, progress)


def _dm(x, y, n_classes, n_support, params, generator, progress) -> DistillResult:
    return dm_distill(x, y, n_classes, n_support, _config(DMConfig, params, "dm"), generator, progress)


def _random(x, y, n_classes, n_support, params, generator, progress) -> DistillResult:
    start = time.perf_counter()
    idx = ClassSampler(y).draw(n_support, generator, proportional=True).to(x.device)
    return DistillResult(x[idx].clone(), y[idx].to(torch.int64), time.perf_counter() - start, 0)


def _none(x, y, n_classes, n_support, params, generator, progress) -> DistillResult:
    return DistillResult(x, y.to(torch.int64), 0.0, 0)


DISTILLERS: dict[str, Callable[..., DistillResult]] = {
    "kip": _kip,
    "dm": _dm,
    "random": _random,
    "none": _none,
}
"""Method name -> ``fn(x, y, n_classes, n_support, params, generator, progress)``."""


def distill(
    method: str,
    x: Tensor,
    y: Tensor,
    n_classes: int,
    n_support: int | None,
    params: dict[str, Any],
    generator: torch.Generator,
    progress: Progress = None,
) -> DistillResult:
    """Distil one member's local data.

    Parameters
    ----------
    method : {"kip", "dm", "random", "none"}
        Distillation method.
    x : Tensor
        Float inputs ``(n, *input_shape)``, normalised with dataset-level statistics.
    y : Tensor
        int64 labels ``(n,)`` in ``[0, n_classes)``; a member may hold few classes.
    n_classes : int
        Classes of the task.
    n_support : int or None
        Synthetic samples wanted, capped at ``n``; ``None`` means ``n``.
        Ignored by ``none``, which returns all data.
    params : dict
        Fields of :class:`KIPConfig` / :class:`DMConfig` (plus ``preset: "fast"``
        for KIP); must be empty for ``random`` and ``none``.
    generator : torch.Generator
        CPU generator; the only source of randomness, so a seed fixes the output.
    progress : callable, optional
        ``progress(step, total)``, called after each optimisation step.

    Returns
    -------
    DistillResult
        ``min(n, n_support)`` samples with int64 labels from the member's classes.
    """
    if method not in DISTILLERS:
        raise ConfigError(f"unknown distillation method {method!r}; choose one of {sorted(DISTILLERS)}")
    if method in ("random", "none") and params:
        raise ConfigError(f"distillation method {method!r} takes no parameters, got {sorted(params)}")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"distill: {x.shape[0]} inputs but {y.shape[0]} labels")
    if not x.is_floating_point():
        raise DataError(f"distill: inputs must be a float tensor, got {x.dtype}")
    n = int(x.shape[0])
    if n and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise DataError(f"distill: labels must lie in [0, {n_classes})")
    if n_support is not None and n_support < 1:
        raise ConfigError(f"n_support must be >= 1 (or None for all data), got {n_support}")
    n_support = n if n_support is None else min(n_support, n)
    if n == 0:
        return DistillResult(x, y.to(torch.int64), 0.0, 0)
    return DISTILLERS[method](x, y, n_classes, n_support, params, generator, progress)


__all__ = [
    "DISTILLERS",
    "DMConfig",
    "DistillResult",
    "KIPConfig",
    "distill",
    "dm_distill",
    "fc_kernel",
    "kip_distill",
    "krr_solve",
    "rbf_kernel",
]
