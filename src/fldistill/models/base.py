"""The split-model base class and the input-shape checks the builders share."""

from __future__ import annotations

import math

import torch
from torch import nn

from fldistill.errors import ConfigError


class SplitModel(nn.Module):
    """A classifier split into a feature extractor and a head.

    ``forward(x) == classifier(features(x))``. Methods that work on
    representations (MOON's contrastive term, KDIA's generator feeding
    synthetic features to the head) call the two halves directly; keeping them
    as the submodules ``features`` and ``classifier`` also makes the split
    visible in ``state_dict`` keys (``features.*`` / ``classifier.*``), so the
    head's parameters can be selected by prefix.

    Unless a model's docstring says otherwise, ``features`` ends at the
    penultimate layer (a flat vector per sample) and ``classifier`` is the
    last linear layer.

    Parameters
    ----------
    features : nn.Module
        Maps a batch of inputs ``(B, *input_shape)`` to ``(B, *feature_shape)``.
    classifier : nn.Module
        Maps ``(B, *feature_shape)`` to logits ``(B, n_classes)``.
    input_shape : tuple of int
        Shape of one input sample.
    feature_shape : tuple of int
        Shape of ``features(x)`` for one sample.
    n_classes : int
        Number of output logits.
    """

    def __init__(
        self,
        features: nn.Module,
        classifier: nn.Module,
        input_shape: tuple[int, ...],
        feature_shape: tuple[int, ...],
        n_classes: int,
    ) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier
        self.input_shape: tuple[int, ...] = tuple(int(s) for s in input_shape)
        self.feature_shape: tuple[int, ...] = tuple(int(s) for s in feature_shape)
        self.n_classes = int(n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits ``classifier(features(x))``."""
        return self.classifier(self.features(x))


def fmt_shape(shape: tuple[int, ...]) -> str:
    """Format a shape as ``(1, 28, 28)`` (a 1-tuple without the trailing comma)."""
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def shape_error(name: str, input_shape: tuple[int, ...], accepts: str) -> ConfigError:
    """Build the one-line error for an input shape model ``name`` cannot take."""
    return ConfigError(
        f"model '{name}' cannot take input shape {fmt_shape(input_shape)}; it accepts {accepts}"
    )


def image_shape(name: str, input_shape: tuple[int, ...], min_hw: int) -> tuple[int, int, int]:
    """Check that ``input_shape`` is ``(C, H, W)`` with ``H, W >= min_hw``.

    Raises
    ------
    ConfigError
        When the shape is not 3-D or the image is too small for the model's
        downsampling.
    """
    accepts = f"images (C, H, W) with H, W >= {min_hw}"
    if len(input_shape) != 3:
        raise shape_error(name, input_shape, accepts)
    c, h, w = (int(s) for s in input_shape)
    if c < 1 or h < min_hw or w < min_hw:
        raise shape_error(name, input_shape, accepts)
    return c, h, w


def flat_size(input_shape: tuple[int, ...]) -> int:
    """Number of values in one sample of shape ``input_shape``."""
    return int(math.prod(int(s) for s in input_shape))


class AddChannel(nn.Module):
    """Turn 1-D signals ``(B, L)`` into ``(B, 1, L)``; ``(B, 1, L)`` passes through."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return x.unsqueeze(1)
        return x


class ToImage(nn.Module):
    """Reshape flat inputs ``(B, C*H*W)`` to ``(B, C, H, W)``; images pass through."""

    def __init__(self, chw: tuple[int, int, int]) -> None:
        super().__init__()
        self.chw = chw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return x.reshape(x.shape[0], *self.chw)
        return x
