"""The model catalogue: names, descriptions and sizes, without importing torch.

``fldistill list models``, ``--help`` and config errors (an unknown ``model``) read this
module only; :mod:`fldistill.models` builds the models from it. The parameter counts are
stored, not computed (that needs torch), and ``tests/test_models.py`` checks them against
the built models, so they cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass

from fldistill.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class ModelCard:
    """A registered model.

    Attributes
    ----------
    name : str
        Registry key, as given on the command line / in configs.
    description : str
        One line for ``fldistill list models``.
    default_input_shape : tuple of int
        Input shape (one sample) of the dataset the model was designed for.
    default_classes : int
        Number of classes of that dataset.
    builder : str
        ``"module:function"`` of ``builder(input_shape, n_classes) -> SplitModel``.
    parameters : int
        Trainable parameters at the default shape and classes.
    """

    name: str
    description: str
    default_input_shape: tuple[int, ...]
    default_classes: int
    builder: str
    parameters: int


_SMALL, _CIFAR = "fldistill.models.small", "fldistill.models.cifar"
_C32 = (3, 32, 32)

MODEL_CARDS: dict[str, ModelCard] = {
    c.name: c
    for c in (
        ModelCard("mlp", "Generic MLP: flatten -> 200 -> 200 -> classes", (1, 28, 28), 10, f"{_SMALL}:build_mlp", 199210),
        ModelCard("mnist1d_mlp", "MNIST-1D MLP: 40 -> 100 -> 100 -> 10", (40,), 10, f"{_SMALL}:build_mnist1d_mlp", 15210),
        ModelCard(
            "mnist1d_cnn", "MNIST-1D paper's CNN baseline (3 strided Conv1d layers, 25 channels)", (40,), 10,
            f"{_SMALL}:build_mnist1d_cnn", 5210,
        ),
        ModelCard(
            "digits_cnn", "Small CNN for sklearn digits 8x8 (2 convs, max-pool, linear)", (1, 8, 8), 10, f"{_SMALL}:build_digits_cnn", 9930
        ),
        ModelCard("mnist_cnn", "HFLDD's MNIST CNN (LeNet-5 style)", (1, 28, 28), 10, f"{_SMALL}:build_mnist_cnn", 44426),
        ModelCard(
            "cifar_cnn", "HFLDD's CIFAR-10 CNN (4 double-conv blocks with BN, reconstructed widths)", _C32, 10,
            f"{_SMALL}:build_cifar_cnn", 1020160,
        ),
        ModelCard("convnet", "DynaFed/DC ConvNet (3 x conv128 + instance norm + avg-pool)", _C32, 10, f"{_SMALL}:build_convnet", 320010),
        ModelCard("kdia_cnn", "KDIA's ModelFedMine (LeNet-style convs, 5-layer FC head)", _C32, 10, f"{_SMALL}:build_kdia_cnn", 92626),
        ModelCard("resnet18", "ResNet-18, CIFAR variant (3x3 stem)", _C32, 10, f"{_CIFAR}:build_resnet18", 11173962),
        ModelCard("mobilenetv2", "MobileNetV2, CIFAR variant", _C32, 10, f"{_CIFAR}:build_mobilenetv2", 2296922),
        ModelCard("shufflenet", "ShuffleNetV2 (net_size 1), CIFAR variant", _C32, 10, f"{_CIFAR}:build_shufflenet", 1263854),
    )
}

# Dataset name -> registry key of the model used when none is configured.
DEFAULT_MODELS: dict[str, str] = {
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


def model_card(name: str) -> ModelCard:
    """The card of model ``name``; an unknown name is a one-line :class:`ConfigError`."""
    card = MODEL_CARDS.get(name)
    if card is None:
        raise ConfigError(f"unknown model '{name}'{did_you_mean(name, MODEL_CARDS)} (valid models: {', '.join(MODEL_CARDS)})")
    return card


def default_model_for(dataset: str) -> str:
    """Registry key of the default model for ``dataset`` (``mlp`` for unknown datasets)."""
    return DEFAULT_MODELS.get(dataset, "mlp")
