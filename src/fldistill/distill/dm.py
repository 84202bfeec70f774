"""Distribution Matching (DM; Zhao & Bilen, WACV 2023), reduced for CPUs.

Each step samples a fresh random embedder and moves the synthetic inputs so that,
for every class the member holds, their mean embedding matches that of a batch of
real samples of the class. No inner training loop, no second-order gradients.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fldistill.distill._common import ClassSampler, DistillResult
from fldistill.errors import ConfigError


@dataclass
class DMConfig:
    """DM hyperparameters (CPU preset; the paper runs 20 000 steps at width 128).

    Attributes
    ----------
    iterations : int
        Optimisation steps.
    lr_img : float
        SGD learning rate on the synthetic inputs.
    momentum : float
        SGD momentum.
    batch_real : int
        Real samples per class per step.
    embed : {"auto", "convnet", "mlp"}
        Random embedder. ``"auto"``: a ConvNet for image inputs ``(C, H, W)`` with
        ``H, W >= 8``, otherwise an MLP on the flattened input.
    width : int
        ConvNet channels.
    depth : int
        ConvNet blocks (conv 3x3, instance norm, ReLU, 2x2 average pooling).
    mlp_width : int
        Hidden width of the 2-layer MLP embedder.
    """

    iterations: int = 200
    lr_img: float = 1.0
    momentum: float = 0.5
    batch_real: int = 64
    embed: Literal["auto", "convnet", "mlp"] = "auto"
    width: int = 32
    depth: int = 3
    mlp_width: int = 256

    @classmethod
    def fast(cls) -> DMConfig:
        """The field defaults, already a CPU preset (so HFLDD's default ``preset: "fast"`` also fits DM)."""
        return cls()

    def __post_init__(self) -> None:
        if self.embed not in ("auto", "convnet", "mlp"):
            raise ConfigError(f"dm embed must be 'auto', 'convnet' or 'mlp', got {self.embed!r}")
        if self.iterations < 0 or self.batch_real < 1 or self.lr_img <= 0:
            raise ConfigError("dm needs iterations >= 0, batch_real >= 1 and lr_img > 0")


def _he(shape: tuple[int, ...], fan_in: int, generator: torch.Generator, device: torch.device) -> Tensor:
    # Drawn on the CPU from the CPU generator, so results do not depend on the device.
    return (torch.randn(shape, generator=generator) * math.sqrt(2.0 / fan_in)).to(device)


def _random_embedder(
    input_shape: tuple[int, ...], cfg: DMConfig, generator: torch.Generator, device: torch.device
) -> Callable[[Tensor], Tensor]:
    """Sample a frozen random embedder ``(m, *input_shape) -> (m, features)``."""
    use_conv = cfg.embed == "convnet" or (
        cfg.embed == "auto" and len(input_shape) == 3 and min(input_shape[1:]) >= 8
    )
    if use_conv:
        if len(input_shape) != 3:
            raise ConfigError(f"dm embed 'convnet' needs (C, H, W) inputs, got shape {input_shape}")
        weights = []
        c = input_shape[0]
        for _ in range(cfg.depth):
            weights.append(_he((cfg.width, c, 3, 3), c * 9, generator, device))
            c = cfg.width

        def conv(h: Tensor) -> Tensor:
            for w in weights:
                h = F.conv2d(h, w, padding=1)
                h = F.group_norm(h, h.shape[1])  # instance norm: one group per channel
                h = F.relu(h)
                if min(h.shape[2:]) >= 2:  # stop pooling once the map is 1 pixel wide
                    h = F.avg_pool2d(h, 2)
            return h.flatten(1)

        return conv
    d = math.prod(input_shape)
    w1 = _he((cfg.mlp_width, d), d, generator, device)
    w2 = _he((cfg.mlp_width, cfg.mlp_width), cfg.mlp_width, generator, device)
    return lambda h: F.relu(F.relu(h.flatten(1) @ w1.T) @ w2.T)


def dm_distill(
    x: Tensor,
    y: Tensor,
    n_classes: int,
    n_support: int,
    cfg: DMConfig,
    generator: torch.Generator,
    progress: Callable[[int, int], None] | None = None,
) -> DistillResult:
    """Distil one member's data with Distribution Matching.

    Parameters
    ----------
    x : Tensor
        Real inputs ``(n, *input_shape)``, normalised with dataset-level statistics.
    y : Tensor
        int64 labels ``(n,)``.
    n_classes : int
        Classes of the task (unused by the loss; kept for a common signature).
    n_support : int
        Synthetic samples wanted; capped at ``n``.
    cfg : DMConfig
        Hyperparameters.
    generator : torch.Generator
        CPU generator; the only source of randomness.
    progress : callable, optional
        Called as ``progress(step, total)`` after each step.

    Returns
    -------
    DistillResult
        Synthetic inputs (dtype/device of ``x``) and their fixed int labels.
    """
    del n_classes
    start = time.perf_counter()
    sampler = ClassSampler(y)
    idx = sampler.draw(min(n_support, int(x.shape[0])), generator, proportional=True).to(x.device)
    y_syn = y[idx].to(torch.int64)
    x_syn = x[idx].detach().to(torch.float32).clone().requires_grad_(True)
    # Synthetic samples are grouped by class (draw() returns them that way).
    syn_classes = torch.unique(y_syn.cpu())
    syn_slices = [torch.nonzero(y_syn.cpu() == c).flatten().to(x.device) for c in syn_classes]
    real_pos = [sampler.classes.tolist().index(int(c)) for c in syn_classes]
    opt = torch.optim.SGD([x_syn], lr=cfg.lr_img, momentum=cfg.momentum)
    info: dict[str, float] = {"n_classes_present": float(len(sampler.counts))}
    input_shape = tuple(x.shape[1:])
    steps = 0
    for step in range(cfg.iterations):
        embed = _random_embedder(input_shape, cfg, generator, x.device)
        reals = []
        for p in real_pos:
            members = sampler.members[p]
            pick = members[torch.randperm(members.numel(), generator=generator)[: cfg.batch_real]]
            reals.append(pick)
        sizes = [int(r.numel()) for r in reals]
        with torch.no_grad():
            real_emb = embed(x[torch.cat(reals).to(x.device)].to(torch.float32)).split(sizes)
        syn_emb = embed(x_syn)
        loss = sum(
            (r.mean(0) - syn_emb[s].mean(0)).pow(2).sum() for r, s in zip(real_emb, syn_slices)
        )
        if not torch.isfinite(loss):
            info["stopped_non_finite"] = 1.0  # keep the last finite synthetic set
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps = step + 1
        if step == 0:
            info["loss_first"] = loss.item()
        info["loss_last"] = loss.item()
        if progress is not None:
            progress(step + 1, cfg.iterations)
    return DistillResult(
        x_syn.detach().to(x.dtype), y_syn, time.perf_counter() - start, steps, info
    )
