"""Model registry: every model is a :class:`SplitModel` built by name.

>>> model = build_model("mnist_cnn", (1, 28, 28), 10)
>>> logits = model.classifier(model.features(x))  # same as model(x)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fldistill.errors import ConfigError
from fldistill.model_catalog import MODEL_CARDS, ModelCard, model_card
from fldistill.model_catalog import default_model_for as _default_model_for
from fldistill.models.base import SplitModel, fmt_shape

__all__ = [
    "MODELS",
    "ModelSpec",
    "SplitModel",
    "build_model",
    "count_parameters",
    "default_model_for",
    "list_models",
]


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its :class:`~fldistill.model_catalog.ModelCard` plus the builder.

    Attributes
    ----------
    name, description, default_input_shape, default_classes
        As in the card.
    builder : callable
        ``builder(input_shape, n_classes) -> SplitModel``; raises
        :class:`~fldistill.errors.ConfigError` for shapes it cannot take.
    """

    name: str
    description: str
    default_input_shape: tuple[int, ...]
    default_classes: int
    builder: Callable[[tuple[int, ...], int], SplitModel]


def _spec(card: ModelCard) -> ModelSpec:
    module, fn = card.builder.split(":")
    builder = getattr(importlib.import_module(module), fn)
    return ModelSpec(card.name, card.description, card.default_input_shape, card.default_classes, builder)


MODELS: dict[str, ModelSpec] = {name: _spec(card) for name, card in MODEL_CARDS.items()}


def build_model(name: str, input_shape: tuple[int, ...], n_classes: int) -> SplitModel:
    """Build a freshly initialised model.

    Initialisation uses PyTorch's defaults and the global RNG, so the result
    is deterministic given ``torch.manual_seed``.

    Parameters
    ----------
    name : str
        A key of :data:`MODELS`.
    input_shape : tuple of int
        Shape of one input sample, e.g. ``(1, 28, 28)`` or ``(40,)``.
    n_classes : int
        Number of output logits (at least 2).

    Returns
    -------
    SplitModel
        The model, in training mode.

    Raises
    ------
    ConfigError
        Unknown name, a shape the model cannot take, or fewer than 2 classes.
    """
    spec = MODELS[model_card(name).name]
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise ConfigError(
            f"model '{name}': input shape must be a tuple of integers, got {input_shape!r}"
        ) from None
    if any(s < 1 for s in shape):
        raise ConfigError(f"model '{name}': input shape {fmt_shape(shape)} has a non-positive size")
    if int(n_classes) < 2:
        raise ConfigError(f"model '{name}': n_classes must be at least 2, got {n_classes}")
    return spec.builder(shape, int(n_classes))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (``requires_grad``) of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def list_models() -> list[tuple[str, str, int]]:
    """``(name, description, parameter count at the default shape)`` for every model."""
    rows = []
    for spec in MODELS.values():
        # Built on the meta device: shapes only, no memory and no RNG draws.
        with torch.device("meta"):
            model = spec.builder(spec.default_input_shape, spec.default_classes)
        rows.append((spec.name, spec.description, count_parameters(model)))
    return rows


def default_model_for(dataset_name: str) -> str:
    """Registry key of the default model for ``dataset_name`` (``"mlp"`` if unknown)."""
    return _default_model_for(dataset_name.strip().lower().replace("_", "-"))
