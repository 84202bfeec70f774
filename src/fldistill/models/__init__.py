"""Model registry: every model is a :class:`SplitModel` built by name.

>>> model = build_model("mnist_cnn", (1, 28, 28), 10)
>>> logits = model.classifier(model.features(x))  # same as model(x)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fldistill.errors import ConfigError
from fldistill.models.base import SplitModel, fmt_shape
from fldistill.models.cifar import build_mobilenetv2, build_resnet18, build_shufflenet
from fldistill.models.small import (
    build_cifar_cnn,
    build_convnet,
    build_digits_cnn,
    build_kdia_cnn,
    build_mlp,
    build_mnist1d_cnn,
    build_mnist1d_mlp,
    build_mnist_cnn,
)

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
    """A registered model.

    Attributes
    ----------
    name : str
        Registry key, as given on the command line / in configs.
    description : str
        One line for ``fldistill models`` listings.
    default_input_shape : tuple of int
        Input shape (one sample) of the dataset the model was designed for.
    default_classes : int
        Number of classes of that dataset.
    builder : callable
        ``builder(input_shape, n_classes) -> SplitModel``; raises
        :class:`~fldistill.errors.ConfigError` for shapes it cannot take.
    """

    name: str
    description: str
    default_input_shape: tuple[int, ...]
    default_classes: int
    builder: Callable[[tuple[int, ...], int], SplitModel]


def _spec(
    name: str,
    description: str,
    shape: tuple[int, ...],
    classes: int,
    builder: Callable[[tuple[int, ...], int], SplitModel],
) -> tuple[str, ModelSpec]:
    return name, ModelSpec(name, description, shape, classes, builder)


MODELS: dict[str, ModelSpec] = dict(
    [
        _spec("mlp", "Generic MLP: flatten -> 200 -> 200 -> classes", (1, 28, 28), 10, build_mlp),
        _spec("mnist1d_mlp", "MNIST-1D MLP: 40 -> 100 -> 100 -> 10", (40,), 10, build_mnist1d_mlp),
        _spec(
            "mnist1d_cnn",
            "MNIST-1D paper's CNN baseline (3 strided Conv1d layers, 25 channels)",
            (40,),
            10,
            build_mnist1d_cnn,
        ),
        _spec(
            "digits_cnn",
            "Small CNN for sklearn digits 8x8 (2 convs, max-pool, linear)",
            (1, 8, 8),
            10,
            build_digits_cnn,
        ),
        _spec(
            "mnist_cnn", "HFLDD's MNIST CNN (LeNet-5 style)", (1, 28, 28), 10, build_mnist_cnn
        ),
        _spec(
            "cifar_cnn",
            "HFLDD's CIFAR-10 CNN (4 double-conv blocks with BN, reconstructed widths)",
            (3, 32, 32),
            10,
            build_cifar_cnn,
        ),
        _spec(
            "convnet",
            "DynaFed/DC ConvNet (3 x conv128 + instance norm + avg-pool)",
            (3, 32, 32),
            10,
            build_convnet,
        ),
        _spec(
            "kdia_cnn",
            "KDIA's ModelFedMine (LeNet-style convs, 5-layer FC head)",
            (3, 32, 32),
            10,
            build_kdia_cnn,
        ),
        _spec("resnet18", "ResNet-18, CIFAR variant (3x3 stem)", (3, 32, 32), 10, build_resnet18),
        _spec(
            "mobilenetv2", "MobileNetV2, CIFAR variant", (3, 32, 32), 10, build_mobilenetv2
        ),
        _spec(
            "shufflenet",
            "ShuffleNetV2 (net_size 1), CIFAR variant",
            (3, 32, 32),
            10,
            build_shufflenet,
        ),
    ]
)

# Dataset name -> registry key of the model used when none is configured.
_DEFAULT_MODELS: dict[str, str] = {
    "mnist1d": "mnist1d_cnn",
    "digits": "digits_cnn",
    "mnist": "mnist_cnn",
    "fashion-mnist": "mnist_cnn",
    "cifar10": "cifar_cnn",
    "svhn": "cifar_cnn",
    "cifar100": "cifar_cnn",
    "cinic10": "convnet",
    "imagefolder": "convnet",
}


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
    spec = MODELS.get(name)
    if spec is None:
        raise ConfigError(f"unknown model '{name}'; valid models: {', '.join(MODELS)}")
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
    key = dataset_name.strip().lower().replace("_", "-")
    return _DEFAULT_MODELS.get(key, "mlp")
