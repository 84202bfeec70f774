"""KDIA's conditional feature generator (methods.md §1.1).

``G(z, y)`` maps noise ``z ~ N(0, I)`` and a class label ``y`` to a synthetic *feature*
of the classifier's ``feature_shape``: the input of :attr:`SplitModel.classifier`, so the
head can be trained on class-balanced generated features without any data.

Two bodies share one interface:

- ``feature_shape == (16, 5, 5)`` (KDIA's CNN on 32x32 images): the paper's code exactly,
  four bias-free transposed convolutions 1->2->3->4->5 with BatchNorm and LeakyReLU(0.2),
  890,724 parameters for 10 classes and 1,084,944 for 100.
- any other feature shape (the flat penultimate layer of the small models): the same
  idea as an MLP, ``[z, embed(y)] -> hidden -> hidden -> prod(feature_shape)``, bias-free
  hidden layers with BatchNorm and LeakyReLU(0.2). [INFERRED: the paper only has the
  convolutional body.]

Both end in a Sigmoid, as in the code: generated features are non-negative, like the
post-ReLU features they stand in for.
"""

from __future__ import annotations

import math

import torch
from torch import nn

KDIA_FEATURE_SHAPE = (16, 5, 5)


class FeatureGenerator(nn.Module):
    """Conditional generator of classifier-input features.

    Parameters
    ----------
    feature_shape : tuple of int
        Shape of one generated feature (the classifier's input).
    n_classes : int
        Number of labels; ``y`` is embedded by ``Embedding(n_classes, n_classes)``.
    noise_dim : int
        Dimension of ``z``.
    hidden : int
        Width of the MLP body (ignored by the convolutional body).
    """

    def __init__(self, feature_shape: tuple[int, ...], n_classes: int, noise_dim: int = 100, hidden: int = 256) -> None:
        super().__init__()
        self.feature_shape = tuple(int(s) for s in feature_shape)
        self.n_classes, self.noise_dim = int(n_classes), int(noise_dim)
        self.embed = nn.Embedding(self.n_classes, self.n_classes)
        d_in = self.noise_dim + self.n_classes
        self.conv = self.feature_shape == KDIA_FEATURE_SHAPE
        if self.conv:
            def up(cin: int, cout: int) -> list[nn.Module]:
                return [nn.ConvTranspose2d(cin, cout, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2)]

            self.body = nn.Sequential(
                *up(d_in, 512), *up(512, 256), *up(256, 128), nn.ConvTranspose2d(128, 16, 2, 1, bias=False), nn.Sigmoid()
            )
        else:
            d_out = math.prod(self.feature_shape)
            self.body = nn.Sequential(
                nn.Linear(d_in, hidden, bias=False),
                nn.BatchNorm1d(hidden),
                nn.LeakyReLU(0.2),
                nn.Linear(hidden, hidden, bias=False),
                nn.BatchNorm1d(hidden),
                nn.LeakyReLU(0.2),
                nn.Linear(hidden, d_out),
                nn.Sigmoid(),
            )

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Features ``(B, *feature_shape)`` for noise ``z`` ``(B, noise_dim)`` and labels ``y`` ``(B,)``."""
        h = torch.cat([z.flatten(1), self.embed(y)], 1)
        if self.conv:
            return self.body(h[:, :, None, None])
        return self.body(h).view(len(h), *self.feature_shape)
