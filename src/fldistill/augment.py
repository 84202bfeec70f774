"""Differentiable siamese augmentation (DSA, Zhao & Bilen 2021), as DynaFed uses it.

Every transform is differentiable with respect to its input and draws *all* of its
random parameters from a ``torch.Generator`` (on the CPU, then moved to the input's
device, so a seed gives the same augmentation on every device). The parameters depend
only on the batch shape, never on the values, so two tensors augmented with two
generators in the same state get exactly the same transform: that is the "siamese"
property (``DSA.__call__(a, g1)`` and ``DSA.__call__(b, g2)`` with ``g1``/``g2`` seeded
alike).

Images ``(N, C, H, W)`` -- strategy ``"color_crop_cutout_flip_scale_rotate"`` (DynaFed's,
with the ratios of its ``ParamDiffAug``):

* ``color``: brightness ``x + (u - 0.5)``, saturation ``(x - mean_c) * 2u + mean_c``,
  contrast ``(x - mean_chw) * (u + 0.5) + mean_chw``
* ``crop``: integer translation by up to 12.5 % of each side, zero fill
* ``cutout``: a zeroed square of half the side at a random centre
* ``flip``: horizontal flip with probability 0.5
* ``scale``: independent x/y zoom in ``[1/1.2, 1.2]`` (bilinear resampling)
* ``rotate``: rotation by up to 15 degrees (bilinear resampling)

1-D signals ``(N, L)`` or ``(N, C, L)`` (mnist1d) -- strategy
``"scale_shift_noise_stretch"``; flips and rotations make no sense for a time series:

* ``scale``: amplitude ``x * a``, ``a`` in ``[1/1.2, 1.2]``
* ``shift``: integer translation by up to 12.5 % of ``L``, zero fill
* ``noise``: additive Gaussian noise, standard deviation 0.05 (inputs are normalised)
* ``stretch``: time-stretch about the centre by a factor in ``[1/1.2, 1.2]`` (linear
  interpolation, zero fill)

``mode="single"`` (DynaFed's code, ``aug_mode='S'``) picks ONE of the strategy's groups
per call, uniformly; ``mode="multiple"`` applies every group in order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fldistill.errors import ConfigError

IMAGE_STRATEGY = "color_crop_cutout_flip_scale_rotate"
SIGNAL_STRATEGY = "scale_shift_noise_stretch"


@dataclass(frozen=True)
class DSARatios:
    """Strengths of the transforms (DynaFed's ``ParamDiffAug`` values)."""

    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    crop_pad: float = 0.125
    cutout: float = 0.5
    prob_flip: float = 0.5
    scale: float = 1.2
    rotate_deg: float = 15.0
    # 1-D signals
    amplitude: float = 1.2
    shift: float = 0.125
    noise: float = 0.05
    stretch: float = 1.2


def _rand(gen: torch.Generator, n: int, like: Tensor, *shape: int) -> Tensor:
    """Uniform [0, 1) numbers drawn on the CPU from ``gen``, moved to ``like``."""
    return torch.rand((n, *shape), generator=gen).to(device=like.device, dtype=like.dtype)


def _randint(gen: torch.Generator, low: int, high: int, n: int, like: Tensor) -> Tensor:
    """Integers in ``[low, high)`` from ``gen``, on ``like``'s device."""
    return torch.randint(low, high, (n,), generator=gen).to(like.device)


def _uniform(gen: torch.Generator, n: int, like: Tensor, lo: float, hi: float) -> Tensor:
    return _rand(gen, n, like) * (hi - lo) + lo


def _translate(x: Tensor, dim: int, shift: Tensor, pad: int) -> Tensor:
    """Shift every sample of ``x`` by ``shift[i]`` along ``dim`` with zero fill.

    Output position ``j`` reads input position ``j + shift`` (zero outside). Uses
    ``gather`` on a zero-padded copy, so the gradient flows to ``x``.
    """
    if pad == 0:
        return x
    size = x.shape[dim]
    pads = [0, 0] * (x.dim() - dim - 1) + [pad, pad]
    xp = F.pad(x, pads)
    idx = torch.arange(size, device=x.device).unsqueeze(0) + shift.unsqueeze(1) + pad  # (N, size)
    view = [x.shape[0]] + [1] * (x.dim() - 1)
    view[dim] = size
    idx = idx.view(view)
    target = list(xp.shape)
    target[dim] = size
    return xp.gather(dim, idx.expand(target))


# -- image transforms (N, C, H, W) -------------------------------------------------------


def _brightness(x: Tensor, g: torch.Generator, r: DSARatios) -> Tensor:
    return x + (_rand(g, x.shape[0], x, 1, 1, 1) - 0.5) * r.brightness


def _saturation(x: Tensor, g: torch.Generator, r: DSARatios) -> Tensor:
    m = x.mean(dim=1, keepdim=True)
    return (x - m) * (_rand(g, x.shape[0], x, 1, 1, 1) * r.saturation) + m


def _contrast(x: Tensor, g: torch.Generator, r: DSARatios) -> Tensor:
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * (_rand(g, x.shape[0], x, 1, 1, 1) + r.contrast) + m


def _crop(x: Tensor, g: torch.Generator, r: DSARatios) -> Tensor:
    n, _, h, w = x.shape
    sh, sw = int(h * r.crop_pad + 0.5), int(w * r.crop_pad + 0.5)
    th = _randint(g, -sh, sh + 1, n, x)
    tw = _randint(g, -sw, sw + 1, n, x)
    return _translate(_translate(x, 2, th, sh), 3, tw, sw)


def _cutout(x: Tensor, g: torch.Generator, r: DSARatios) -> Tensor:
    n, _, h, w = x.shape
    ch, cw = int(h * r.cutout + 0.5), int(w * r.cutout + 0.5)
    oh = _randint(g, 0, h + (1 - ch % 2), n, x)
    ow = _randint(g, 0, w + (1 - cw % 2), n, x)
    rows = torch.arange(h, device=x.device).unsqueeze(0)
    cols = torch.arange(w, device=x.device).unsqueeze(0)
    lo_h, lo_w = (oh - ch // 2).unsqueeze(1), (ow - cw // 2).unsqueeze(1)
    in_r = (rows >= lo_h) & (rows < lo_h + ch)  # (N, H)
    in_c = (cols >= lo_w) & (cols < lo_w + cw)  # (N, W)
    keep = ~(in_r.unsqueeze(2) & in_c.unsqueeze(1))
    return x * keep.unsqueeze(1).to(x.dtype)


def _flip(x: Tensor, g: torch.Generator, r: DSARatios) -> Tensor:
    u = _rand(g, x.shape[0], x, 1, 1, 1)
    return torch.where(u < r.prob_flip, x.flip(3), x)


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _scale(x: Tensor, g: torch.Generator, r: DSARatios) -> Tensor:
    n = x.shape[0]
    sx = _uniform(g, n, x, 1.0 / r.scale, r.scale)
    sy = _uniform(g, n, x, 1.0 / r.scale, r.scale)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 1, 1] = sx, sy
    return _affine(x, theta)


def _rotate(x: Tensor, g: torch.Generator, r: DSARatios) -> Tensor:
    n = x.shape[0]
    a = (_rand(g, n, x) - 0.5) * 2 * r.rotate_deg / 180 * math.pi
    c, s = torch.cos(a), torch.sin(a)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = c, -s, s, c
    return _affine(x, theta)


# -- 1-D transforms (N, C, L) ------------------------------------------------------------


def _amplitude(x: Tensor, g: torch.Generator, r: DSARatios) -> Tensor:
    return x * _uniform(g, x.shape[0], x, 1.0 / r.amplitude, r.amplitude).view(-1, 1, 1)


def _shift(x: Tensor, g: torch.Generator, r: DSARatios) -> Tensor:
    s = int(x.shape[2] * r.shift + 0.5)
    return _translate(x, 2, _randint(g, -s, s + 1, x.shape[0], x), s)


def _noise(x: Tensor, g: torch.Generator, r: DSARatios) -> Tensor:
    eps = torch.randn(tuple(x.shape), generator=g).to(device=x.device, dtype=x.dtype)
    return x + r.noise * eps


def _stretch(x: Tensor, g: torch.Generator, r: DSARatios) -> Tensor:
    n, _, length = x.shape
    f = _uniform(g, n, x, 1.0 / r.stretch, r.stretch)
    pos = torch.linspace(-1.0, 1.0, length, device=x.device, dtype=x.dtype)
    gx = pos.unsqueeze(0) / f.unsqueeze(1)  # (N, L): output j reads input at pos_j / f
    grid = torch.stack([gx, torch.zeros_like(gx)], dim=-1).unsqueeze(1)  # (N, 1, L, 2)
    out = F.grid_sample(x.unsqueeze(2), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.squeeze(2)


Transform = Callable[[Tensor, torch.Generator, DSARatios], Tensor]
IMAGE_GROUPS: dict[str, list[Transform]] = {
    "color": [_brightness, _saturation, _contrast],
    "crop": [_crop],
    "cutout": [_cutout],
    "flip": [_flip],
    "scale": [_scale],
    "rotate": [_rotate],
}
SIGNAL_GROUPS: dict[str, list[Transform]] = {
    "scale": [_amplitude],
    "shift": [_shift],
    "noise": [_noise],
    "stretch": [_stretch],
}


def input_kind(sample_shape: tuple[int, ...]) -> Literal["image", "signal"]:
    """``image`` for ``(C, H, W)`` samples, ``signal`` for ``(L,)`` or ``(C, L)``."""
    if len(sample_shape) == 3:
        return "image"
    if len(sample_shape) in (1, 2):
        return "signal"
    raise ConfigError(f"DSA takes images (C, H, W) or signals (L,)/(C, L); got samples of shape {tuple(sample_shape)}")


class DSA:
    """A differentiable augmentation of one input kind.

    Parameters
    ----------
    sample_shape : tuple of int
        Shape of one sample (decides image vs. 1-D transforms).
    strategy : str, optional
        Groups joined by ``_``; default :data:`IMAGE_STRATEGY` or :data:`SIGNAL_STRATEGY`.
        ``"none"`` disables augmentation.
    mode : {"single", "multiple"}
        One random group per call (DynaFed's code) or all groups in order.
    """

    def __init__(
        self,
        sample_shape: tuple[int, ...],
        strategy: str | None = None,
        mode: Literal["single", "multiple"] = "single",
        ratios: DSARatios | None = None,
    ) -> None:
        self.kind = input_kind(tuple(sample_shape))
        groups = IMAGE_GROUPS if self.kind == "image" else SIGNAL_GROUPS
        default = IMAGE_STRATEGY if self.kind == "image" else SIGNAL_STRATEGY
        self.strategy = (strategy or default).strip().lower()
        self.mode = mode
        self.ratios = ratios or DSARatios()
        if self.strategy == "none":
            self.groups: list[list[Transform]] = []
            return
        names = [s for s in self.strategy.split("_") if s]
        bad = [s for s in names if s not in groups]
        if bad or not names:
            raise ConfigError(
                f"DSA strategy {self.strategy!r}: unknown group(s) {bad} for {self.kind} inputs; "
                f"valid: {', '.join(groups)} (e.g. {default!r}, or 'none')"
            )
        if mode not in ("single", "multiple"):
            raise ConfigError(f"DSA mode must be 'single' or 'multiple', got {mode!r}")
        self.groups = [groups[s] for s in names]

    def __call__(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """Augment a batch ``x`` of shape ``(N, *sample_shape)`` with randomness from ``gen``."""
        if not self.groups:
            return x
        shape = x.shape
        if self.kind == "signal" and x.dim() == 2:
            x = x.unsqueeze(1)
        if self.mode == "single":
            chosen = [self.groups[int(torch.randint(len(self.groups), (1,), generator=gen))]]
        else:
            chosen = self.groups
        for group in chosen:
            for fn in group:
                x = fn(x, gen, self.ratios)
        return x.reshape(shape)


def augment(
    x: Tensor, gen: torch.Generator | int, strategy: str | None = None, mode: Literal["single", "multiple"] = "single"
) -> Tensor:
    """One-call DSA: ``gen`` may be a generator or an integer seed (siamese by seed)."""
    if isinstance(gen, int):
        gen = torch.Generator().manual_seed(gen)
    return DSA(tuple(x.shape[1:]), strategy, mode)(x, gen)
