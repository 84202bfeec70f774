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


def mlp_body(d_in: int, hidden: int, d_out: int) -> list[nn.Module]:
    """``d_in -> hidden -> hidden -> d_out``: bias-free hidden layers with BatchNorm and LeakyReLU(0.2)."""
    return [
        nn.Linear(d_in, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden, d_out),
    ]


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
            self.body = nn.Sequential(*mlp_body(d_in, hidden, math.prod(self.feature_shape)), nn.Sigmoid())

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Features ``(B, *feature_shape)`` for noise ``z`` ``(B, noise_dim)`` and labels ``y`` ``(B,)``."""
        h = torch.cat([z.flatten(1), self.embed(y)], 1)
        if self.conv:
            return self.body(h[:, :, None, None])
        return self.body(h).view(len(h), *self.feature_shape)


class InputGenerator(nn.Module):
    """Conditional generator of *inputs* (FedFTG's ``CGeneratorA``, reshaped for any input).

    ``G(z, y)``: ``[z, embed(y)]`` -> linear -> a feature map at a quarter of the input's
    spatial size -> (upsample x2 -> conv 3 -> BN -> LeakyReLU(0.2)) twice -> conv 3 ->
    Tanh -> BatchNorm without affine parameters, as in FedFTG's and DFAD's generators: the
    last layer standardises every channel, like normalised inputs.

    Bodies:

    - images ``(C, H, W)`` with ``H`` and ``W`` multiples of 4: 2-D convolutions;
    - 1-D signals ``(L,)`` or ``(1, L)`` with ``L`` a multiple of 4: 1-D convolutions
      (mnist1d: 40 samples);
    - any other shape: an MLP ``[z, embed(y)] -> hidden -> hidden -> prod(shape)`` with
      BN and LeakyReLU, then Tanh and the affine-free BN over the flat output.

    Parameters
    ----------
    input_shape : tuple of int
        Shape of one generated sample (the model's input shape).
    n_classes : int
        Number of labels (``Embedding(n_classes, n_classes)``).
    noise_dim : int
        Dimension of ``z`` (FedFTG: 100; 256 for CIFAR-100).
    width : int
        ``ngf`` of the convolutional bodies (FedFTG: 64), the hidden width of the MLP is
        ``4 * width``.
    """

    def __init__(self, input_shape: tuple[int, ...], n_classes: int, noise_dim: int = 100, width: int = 64) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.n_classes, self.noise_dim = int(n_classes), int(noise_dim)
        self.embed = nn.Embedding(self.n_classes, self.n_classes)
        d_in = self.noise_dim + self.n_classes
        shape = self.input_shape
        conv: type[nn.Module]
        bn: type[nn.Module]
        self.fc: nn.Module
        if len(shape) == 3 and shape[1] % 4 == 0 and shape[2] % 4 == 0:
            self.body_kind = "2d"
            ch, h, w = shape
            self.init_shape: tuple[int, ...] = (2 * width, h // 4, w // 4)
            conv, bn = nn.Conv2d, nn.BatchNorm2d
        elif (len(shape) == 1 or (len(shape) == 2 and shape[0] == 1)) and shape[-1] % 4 == 0:
            self.body_kind = "1d"
            ch, length = 1, shape[-1]
            self.init_shape = (2 * width, length // 4)
            conv, bn = nn.Conv1d, nn.BatchNorm1d
        else:
            self.body_kind = "mlp"
        if self.body_kind == "mlp":
            d_out = math.prod(shape)
            self.fc = nn.Sequential(*mlp_body(d_in, 4 * width, d_out))
            self.body: nn.Module = nn.Sequential(nn.Tanh(), nn.BatchNorm1d(d_out, affine=False))
        else:
            self.fc = nn.Linear(d_in, math.prod(self.init_shape))
            self.body = nn.Sequential(
                bn(2 * width),
                nn.Upsample(scale_factor=2),
                conv(2 * width, 2 * width, 3, 1, 1, bias=False),
                bn(2 * width),
                nn.LeakyReLU(0.2),
                nn.Upsample(scale_factor=2),
                conv(2 * width, width, 3, 1, 1, bias=False),
                bn(width),
                nn.LeakyReLU(0.2),
                conv(width, ch, 3, 1, 1),
                nn.Tanh(),
                bn(ch, affine=False),
            )

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Inputs ``(B, *input_shape)`` for noise ``z`` ``(B, noise_dim)`` and labels ``y`` ``(B,)``."""
        h = self.fc(torch.cat([z.flatten(1), self.embed(y)], 1))
        if self.body_kind != "mlp":
            h = h.view(len(h), *self.init_shape)
        return self.body(h).reshape(len(h), *self.input_shape)


class LatentGenerator(nn.Module):
    """FedGen's generator of latent features: ``[eps, onehot(y)] -> FC(hidden) -> BN -> ReLU -> FC(latent)``.

    ``eps ~ U(0, 1)^noise_dim``; the output is the classifier's input (FedGen's
    ``latent_layer_idx = -1``), of the model's ``feature_shape``.
    """

    def __init__(self, feature_shape: tuple[int, ...], n_classes: int, noise_dim: int = 32, hidden: int = 256) -> None:
        super().__init__()
        self.feature_shape = tuple(int(s) for s in feature_shape)
        self.n_classes, self.noise_dim = int(n_classes), int(noise_dim)
        self.body = nn.Sequential(
            nn.Linear(self.noise_dim + self.n_classes, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, math.prod(self.feature_shape)),
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Features ``(B, *feature_shape)`` for noise ``z`` and labels ``y``."""
        onehot = torch.nn.functional.one_hot(y, self.n_classes).to(z.dtype)
        return self.body(torch.cat([z.flatten(1), onehot], 1)).view(len(z), *self.feature_shape)
