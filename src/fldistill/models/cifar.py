"""CIFAR-size ResNet-18, MobileNetV2 and ShuffleNetV2.

These follow the layer layout of the widely used kuangliu/pytorch-cifar
definitions (3x3 stride-1 stem, no initial max-pool, so 32x32 inputs are
downsampled 8x to a 4x4 map), written here from that description. The final
4x4 average pool is an adaptive average pool to 1x1, identical on 32x32 inputs
and valid for other sizes. ``features`` ends at the pooled, flattened vector;
``classifier`` is the last linear layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fldistill.models.base import SplitModel, image_shape


class _GlobalPool(nn.Module):
    """Average over the spatial dimensions: ``(B, C, H, W) -> (B, C)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    # Conv without bias (the following BN has its own shift) + BN.
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    )


# --------------------------------------------------------------------------- ResNet-18


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, 3, stride)
        self.conv2 = _conv_bn(cout, cout, 3)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = _conv_bn(cin, cout, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        out = self.conv2(out)
        return F.relu(out + self.shortcut(x))


class _ResNetTrunk(nn.Module):
    def __init__(self, cin: int, blocks: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = _conv_bn(cin, 64, 3)
        layers: list[nn.Module] = []
        width_in = 64
        for i, n in enumerate(blocks):
            width = 64 * 2**i
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(_BasicBlock(width_in, width, stride))
                width_in = width
        self.layers = nn.Sequential(*layers)
        self.pool = _GlobalPool()
        self.out_dim = width_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.layers(F.relu(self.stem(x))))


def build_resnet18(input_shape: tuple[int, ...], n_classes: int) -> SplitModel:
    """CIFAR ResNet-18 (11,173,962 parameters on 3x32x32, 10 classes).

    3x3 stem with 64 channels, four stages of two basic blocks (64, 128, 256,
    512 channels; stride 2 at the start of stages 2-4, 1x1 conv + BN
    shortcuts where the shape changes), global average pool, linear head.
    """
    c, _, _ = image_shape("resnet18", input_shape, 8)
    trunk = _ResNetTrunk(c, (2, 2, 2, 2))
    return SplitModel(
        trunk, nn.Linear(trunk.out_dim, n_classes), input_shape, (trunk.out_dim,), n_classes
    )


# --------------------------------------------------------------------------- MobileNetV2

# (expansion, out_channels, num_blocks, stride); the second row's stride is 1
# instead of ImageNet's 2, the CIFAR adaptation.
_MOBILENETV2_CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = expansion * cin
        self.stride = stride
        self.expand = _conv_bn(cin, hidden, 1)
        self.depthwise = _conv_bn(hidden, hidden, 3, stride, groups=hidden)
        self.project = _conv_bn(hidden, cout, 1)
        # Residual only at stride 1; a 1x1 conv + BN matches channels when needed
        # (kuangliu's variant, which also keeps the expand conv at expansion 1).
        self.shortcut: nn.Module | None = None
        if stride == 1:
            self.shortcut = nn.Identity() if cin == cout else _conv_bn(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.expand(x))
        out = F.relu(self.depthwise(out))
        out = self.project(out)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return out


class _MobileNetV2Trunk(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.stem = _conv_bn(cin, 32, 3)
        blocks: list[nn.Module] = []
        width_in = 32
        for expansion, width, n, stride in _MOBILENETV2_CFG:
            for j in range(n):
                blocks.append(_InvertedResidual(width_in, width, expansion, stride if j == 0 else 1))
                width_in = width
        self.blocks = nn.Sequential(*blocks)
        self.head = _conv_bn(width_in, 1280, 1)
        self.pool = _GlobalPool()
        self.out_dim = 1280

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(F.relu(self.stem(x)))
        return self.pool(F.relu(self.head(out)))


def build_mobilenetv2(input_shape: tuple[int, ...], n_classes: int) -> SplitModel:
    """CIFAR MobileNetV2 (2,296,922 parameters on 3x32x32, 10 classes).

    3x3 stride-1 stem with 32 channels, the seven inverted-residual stages
    (stride 1 in the 24-channel stage for 32x32 inputs), 1x1 conv to 1280,
    global average pool, linear head.
    """
    c, _, _ = image_shape("mobilenetv2", input_shape, 8)
    trunk = _MobileNetV2Trunk(c)
    return SplitModel(
        trunk, nn.Linear(trunk.out_dim, n_classes), input_shape, (trunk.out_dim,), n_classes
    )


# --------------------------------------------------------------------------- ShuffleNetV2


def _channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class _ShuffleUnit(nn.Module):
    """Stride-1 unit: half the channels pass through, the other half is transformed."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.split = half  # not self.half: that would shadow nn.Module.half()
        self.conv1 = _conv_bn(half, half, 1)
        self.conv2 = _conv_bn(half, half, 3, groups=half)
        self.conv3 = _conv_bn(half, half, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep, branch = x[:, : self.split], x[:, self.split :]
        out = F.relu(self.conv1(branch))
        out = self.conv2(out)
        out = F.relu(self.conv3(out))
        return _channel_shuffle(torch.cat([keep, out], dim=1))


class _ShuffleDown(nn.Module):
    """Stride-2 unit: both branches downsample, channels go from ``cin`` to ``cout``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        self.left_dw = _conv_bn(cin, cin, 3, 2, groups=cin)
        self.left_pw = _conv_bn(cin, mid, 1)
        self.right_pw1 = _conv_bn(cin, mid, 1)
        self.right_dw = _conv_bn(mid, mid, 3, 2, groups=mid)
        self.right_pw2 = _conv_bn(mid, mid, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.left_pw(self.left_dw(x)))
        right = F.relu(self.right_pw1(x))
        right = F.relu(self.right_pw2(self.right_dw(right)))
        return _channel_shuffle(torch.cat([left, right], dim=1))


# net_size 1 of kuangliu's ShuffleNetV2: stage widths and units per stage.
_SHUFFLENETV2_WIDTHS: tuple[int, int, int, int] = (116, 232, 464, 1024)
_SHUFFLENETV2_UNITS: tuple[int, int, int] = (3, 7, 3)


class _ShuffleNetV2Trunk(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.stem = _conv_bn(cin, 24, 3)
        stages: list[nn.Module] = []
        width_in = 24
        for width, n in zip(_SHUFFLENETV2_WIDTHS[:3], _SHUFFLENETV2_UNITS):
            stages.append(_ShuffleDown(width_in, width))
            stages += [_ShuffleUnit(width) for _ in range(n)]
            width_in = width
        self.stages = nn.Sequential(*stages)
        self.head = _conv_bn(width_in, _SHUFFLENETV2_WIDTHS[3], 1)
        self.pool = _GlobalPool()
        self.out_dim = _SHUFFLENETV2_WIDTHS[3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stages(F.relu(self.stem(x)))
        return self.pool(F.relu(self.head(out)))


def build_shufflenet(input_shape: tuple[int, ...], n_classes: int) -> SplitModel:
    """CIFAR ShuffleNetV2, net_size 1 (1,263,854 parameters on 3x32x32, 10 classes).

    3x3 stride-1 stem with 24 channels, three stages (116, 232, 464 channels;
    a stride-2 unit then 3, 7, 3 stride-1 units, channel shuffle with 2
    groups), 1x1 conv to 1024, global average pool, linear head.
    """
    c, _, _ = image_shape("shufflenet", input_shape, 8)
    trunk = _ShuffleNetV2Trunk(c)
    return SplitModel(
        trunk, nn.Linear(trunk.out_dim, n_classes), input_shape, (trunk.out_dim,), n_classes
    )
