"""Small models: MLPs, the 1-D MNIST-1D CNN and the papers' image CNNs.

Every builder has the signature ``(input_shape, n_classes) -> SplitModel`` and
raises :class:`fldistill.errors.ConfigError` for an input shape the model
cannot take. Layers use PyTorch's default initialisation and no in-place
activations, so ``torch.func.functional_call``/``vmap`` work on the BN-free
models.
"""

from __future__ import annotations

import math

from torch import nn

from fldistill.models.base import (
    AddChannel,
    SplitModel,
    ToImage,
    flat_size,
    image_shape,
    shape_error,
)


def _mlp(name: str, hidden: int, input_shape: tuple[int, ...], n_classes: int) -> SplitModel:
    d = flat_size(input_shape)
    if len(input_shape) == 0 or d < 1:
        raise shape_error(name, input_shape, "any non-empty input shape (it is flattened)")
    features = nn.Sequential(
        nn.Flatten(),
        nn.Linear(d, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
    )
    return SplitModel(features, nn.Linear(hidden, n_classes), input_shape, (hidden,), n_classes)


def build_mlp(input_shape: tuple[int, ...], n_classes: int) -> SplitModel:
    """Generic MLP: flatten -> 200 -> 200 -> ``n_classes`` (ReLU between).

    ``features`` is the flatten plus both hidden layers (200-d output).
    """
    return _mlp("mlp", 200, input_shape, n_classes)


def build_mnist1d_mlp(input_shape: tuple[int, ...], n_classes: int) -> SplitModel:
    """MNIST-1D MLP: 40 -> 100 -> 100 -> ``n_classes``; ``features`` = the hidden layers."""
    return _mlp("mnist1d_mlp", 100, input_shape, n_classes)


def build_mnist1d_cnn(input_shape: tuple[int, ...], n_classes: int) -> SplitModel:
    """The MNIST-1D paper's CNN baseline, for signals of length ``L`` (40 by default).

    Conv1d(1, 25, 5, stride 2, pad 1) -> ReLU -> Conv1d(25, 25, 3, stride 2,
    pad 1) -> ReLU -> Conv1d(25, 25, 3, stride 2, pad 1) -> ReLU -> flatten ->
    Linear(25 * 5, ``n_classes``) for ``L = 40``. Inputs may be ``(B, L)`` or
    ``(B, 1, L)``; ``features`` ends at the flatten.
    """
    accepts = "1-D signals (L,) or (1, L) with L >= 3"
    if len(input_shape) == 1:
        length = int(input_shape[0])
    elif len(input_shape) == 2 and int(input_shape[0]) == 1:
        length = int(input_shape[1])
    else:
        raise shape_error("mnist1d_cnn", input_shape, accepts)
    if length < 3:
        raise shape_error("mnist1d_cnn", input_shape, accepts)
    out = (length + 2 - 5) // 2 + 1
    for _ in range(2):
        out = (out + 2 - 3) // 2 + 1
    features = nn.Sequential(
        AddChannel(),
        nn.Conv1d(1, 25, 5, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv1d(25, 25, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv1d(25, 25, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
    )
    return SplitModel(
        features, nn.Linear(25 * out, n_classes), input_shape, (25 * out,), n_classes
    )


def build_digits_cnn(input_shape: tuple[int, ...], n_classes: int) -> SplitModel:
    """Small CNN for sklearn ``digits`` (1x8x8, 9,930 parameters for 10 classes).

    Conv(C, 16, 3, pad 1) -> ReLU -> Conv(16, 32, 3, pad 1) -> ReLU ->
    MaxPool(2) -> flatten (512 for 8x8) -> Linear(512, ``n_classes``).
    Two 3x3 convs see 5x5 neighbourhoods, enough for 8x8 strokes, and one
    pool keeps 4x4 positions so the head can still use stroke location.
    Flat inputs of a square length (64 for digits) are accepted as ``(1, s, s)``.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 1 and shape[0] >= 4 and math.isqrt(shape[0]) ** 2 == shape[0]:
        side = math.isqrt(shape[0])
        chw = (1, side, side)
    elif len(shape) == 3:
        chw = image_shape("digits_cnn", shape, 2)
    else:
        raise shape_error(
            "digits_cnn", shape, "images (C, H, W) with H, W >= 2, or flat square images (s*s,)"
        )
    c, h, w = chw
    feat = 32 * (h // 2) * (w // 2)
    features = nn.Sequential(
        ToImage(chw),
        nn.Conv2d(c, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    return SplitModel(features, nn.Linear(feat, n_classes), shape, (feat,), n_classes)


def _lenet_side(side: int) -> int:
    # conv k5 (no padding) -> pool 2 -> conv k5 -> pool 2
    return ((side - 4) // 2 - 4) // 2


def build_mnist_cnn(input_shape: tuple[int, ...], n_classes: int) -> SplitModel:
    """HFLDD's MNIST model, LeNet-5 style (44,426 parameters on 1x28x28, 10 classes).

    Conv(C, 6, 5) -> ReLU -> MaxPool(2) -> Conv(6, 16, 5) -> ReLU -> MaxPool(2)
    -> flatten (256 on 28x28, 400 on 32x32) -> FC 120 -> ReLU -> FC 84 -> ReLU
    -> FC ``n_classes``. ``features`` ends after the 84-unit layer.
    """
    c, h, w = image_shape("mnist_cnn", input_shape, 16)
    flat = 16 * _lenet_side(h) * _lenet_side(w)
    features = nn.Sequential(
        nn.Conv2d(c, 6, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(flat, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
    )
    return SplitModel(features, nn.Linear(84, n_classes), input_shape, (84,), n_classes)


def build_kdia_cnn(input_shape: tuple[int, ...], n_classes: int) -> SplitModel:
    """KDIA's ``ModelFedMine`` (92,626 parameters on 3x32x32, 10 classes).

    ``features``: Conv(C, 6, 5) -> MaxPool(2) -> ReLU -> Conv(6, 16, 5) ->
    MaxPool(2) -> ReLU, a (16, 5, 5) map for 32x32 inputs (not flattened:
    KDIA's generator produces feature maps of this shape).
    ``classifier``: Flatten -> FC 120 -> ReLU -> FC 84 -> ReLU -> FC 84 ->
    ReLU -> FC 256 -> FC ``n_classes`` (no activation between the last two).
    """
    c, h, w = image_shape("kdia_cnn", input_shape, 16)
    fh, fw = _lenet_side(h), _lenet_side(w)
    features = nn.Sequential(
        nn.Conv2d(c, 6, 5),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Conv2d(6, 16, 5),
        nn.MaxPool2d(2),
        nn.ReLU(),
    )
    classifier = nn.Sequential(
        nn.Flatten(),
        nn.Linear(16 * fh * fw, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, 84),
        nn.ReLU(),
        nn.Linear(84, 256),
        nn.Linear(256, n_classes),
    )
    return SplitModel(features, classifier, input_shape, (16, fh, fw), n_classes)


def build_convnet(input_shape: tuple[int, ...], n_classes: int) -> SplitModel:
    """DynaFed / dataset-condensation ConvNet (320,010 parameters on 3x32x32, 10 classes).

    3 x [Conv(128, 3, pad 1) -> instance norm (GroupNorm(128, 128), affine)
    -> ReLU -> AvgPool(2)] -> flatten (2048 on 32x32) -> Linear(``n_classes``).
    ``features`` ends at the flatten.
    """
    c, h, w = image_shape("convnet", input_shape, 8)
    layers: list[nn.Module] = []
    cin = c
    for _ in range(3):
        layers += [
            nn.Conv2d(cin, 128, 3, padding=1),
            nn.GroupNorm(128, 128, affine=True),
            nn.ReLU(),
            nn.AvgPool2d(2),
        ]
        cin = 128
    layers.append(nn.Flatten())
    flat = 128 * (h // 8) * (w // 8)
    return SplitModel(
        nn.Sequential(*layers), nn.Linear(flat, n_classes), input_shape, (flat,), n_classes
    )


# Channel widths of cifar_cnn's four blocks; see build_cifar_cnn for why.
CIFAR_CNN_WIDTHS: tuple[int, int, int, int] = (64, 80, 128, 208)


def build_cifar_cnn(input_shape: tuple[int, ...], n_classes: int) -> SplitModel:
    """HFLDD's CIFAR-10 CNN, reconstructed (1,020,160 parameters on 3x32x32, 10 classes).

    HFLDD describes four conv blocks of two conv layers with ReLU and batch
    normalisation followed by max-pooling, then one fully connected layer,
    and reports 1,020,160 parameters; it gives no widths. This is a
    reconstruction that hits the count exactly. Block ``i`` (width ``w_i`` in
    64, 80, 128, 208):

        Conv(w_{i-1}, w_i, 3, pad 1, no bias) -> ReLU ->
        Conv(w_i, w_i, 3, pad 1, no bias) -> BatchNorm(w_i, affine) -> ReLU ->
        MaxPool(2)

    then flatten (208 x 2 x 2 on 32x32) -> Linear(832, ``n_classes``, no bias).

    Why these choices: with the usual defaults (conv bias, affine BN after
    every conv, FC bias) and channel widths divisible by 4 the total is
    always 2 mod 4, but 1,020,160 is 0 mod 4, so the FC bias must go.
    Searching 3x3 convs, widths in steps of 16, conv bias on/off, BN after
    each conv or once per block, affine on/off, found this one as the closest
    to the usual pattern; every parameter in it receives gradients (unlike
    conv biases feeding straight into BN).
    """
    c, h, w = image_shape("cifar_cnn", input_shape, 16)
    layers: list[nn.Module] = []
    cin = c
    for width in CIFAR_CNN_WIDTHS:
        layers += [
            nn.Conv2d(cin, width, 3, padding=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        cin = width
    layers.append(nn.Flatten())
    flat = CIFAR_CNN_WIDTHS[-1] * (h // 16) * (w // 16)
    return SplitModel(
        nn.Sequential(*layers),
        nn.Linear(flat, n_classes, bias=False),
        input_shape,
        (flat,),
        n_classes,
    )
