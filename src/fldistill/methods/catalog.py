"""What every built-in method is, without importing torch: name, description, parameters, defaults.

The CLI answers ``fldistill list methods``, ``--help`` and configuration errors (an
unknown method, a bad ``params.*`` value) from here, so that it need not import the
method modules (each imports torch). The method classes take their ``description``,
``Params`` and ``local_defaults`` from their card when they are registered
(:func:`fldistill.methods.register`), so the card is the single source of all three.

Only the standard library, pydantic and torch-free fldistill modules may be imported here
(tested in a fresh interpreter: neither torch nor numpy is loaded).
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from fldistill.config import type_text
from fldistill.methods import unknown_method
from fldistill.methods.params import (
    CFLHKDParams,
    CFLParams,
    DisUEParams,
    DynaFedParams,
    FedFTGParams,
    FedGenParams,
    FedProxParams,
    FedSeqParams,
    HFLDDParams,
    IFCAParams,
    KDIAParams,
    MoonParams,
    NoParams,
    ScaffoldParams,
)


@dataclass(frozen=True)
class MethodCard:
    """One built-in method as the CLI and the registry see it.

    Attributes
    ----------
    name : str
        The method's name in ``config.method``.
    description : str
        One line for ``fldistill list methods``.
    params : type[BaseModel]
        The pydantic model of ``config.params`` (a :class:`~fldistill.methods.params.MethodParams`).
    local_defaults : Mapping[str, Any]
        The method's tuned local-training defaults: they fill only the ``local`` fields
        the user did not set. Read-only, since the method class shares it.
    family_defaults : Mapping[str, Mapping[str, Any]]
        Per dataset family (:data:`FAMILIES`), ``local`` overrides of ``local_defaults``.
    family_params : Mapping[str, Mapping[str, Any]]
        Per dataset family, ``params`` defaults that differ from the ``Params`` model's
        (whose defaults are the 1-D signal tuning); they fill only the keys not given.
    """

    name: str
    description: str
    params: type[BaseModel]
    local_defaults: Mapping[str, Any]
    family_defaults: Mapping[str, Mapping[str, Any]] = dc_field(default_factory=dict)
    family_params: Mapping[str, Mapping[str, Any]] = dc_field(default_factory=dict)

    def __post_init__(self) -> None:
        # Frozen all the way down: the class attribute Method.local_defaults is this object.
        object.__setattr__(self, "local_defaults", types.MappingProxyType(dict(self.local_defaults)))
        for what in ("family_defaults", "family_params"):
            table = getattr(self, what)
            unknown = set(table) - set(FAMILIES)
            if unknown:
                raise ValueError(f"{self.name}: unknown dataset families {sorted(unknown)}; use {FAMILIES}")
            object.__setattr__(self, what, types.MappingProxyType({f: types.MappingProxyType(dict(v)) for f, v in table.items()}))
        bad = {k for over in self.family_params.values() for k in over} - set(self.params.model_fields)
        if bad:
            raise ValueError(f"{self.name}: family_params names unknown parameters {sorted(bad)}")

    def defaults_for(self, family: str) -> dict[str, Any]:
        """The local-training defaults on a dataset family: the card's, with the family's overrides on top."""
        return {**self.local_defaults, **self.family_defaults.get(family, {})}

    def params_for(self, family: str) -> dict[str, Any]:
        """The method parameters whose default differs on a dataset family (given ``params`` win over them)."""
        return dict(self.family_params.get(family, {}))


# Dataset families (by input shape): the tuned defaults of a method can differ between them.
FAMILIES = ("signal", "digits", "gray28", "color32")


def dataset_family(input_shape: tuple[int, ...]) -> str:
    """The family of a dataset from its input shape: 1-D signals, 8x8 digits, 28x28 grey, 32x32 colour.

    Shapes outside these (or unknown before loading, ``()``: image folders) count as colour images.
    """
    if len(input_shape) == 1:
        return "signal"
    if tuple(input_shape) == (1, 8, 8):
        return "digits"
    if len(input_shape) == 3 and input_shape[0] == 1:
        return "gray28"
    return "color32"


# Tuned on mnist1d (100 IID clients of ~128 samples): with 8 local steps per round the
# average behaves like large-batch SGD, so it takes a larger lr than centralized
# training; lr 0.05 left FedAvg at 0.78 after 100 rounds, lr 0.15 reaches 0.92. Every
# FedAvg-shaped method without its own tuning shares these.
_FEDAVG_LOCAL: dict[str, Any] = {"amount": 2, "lr": 0.15}
# On 28x28 images (mnist_cnn) lr 0.15 with momentum 0.9 leaves FedAvg at chance. Tuned with
# `fldistill tune` on real Fashion-MNIST (IID, N=10, 5 rounds, validation split): FedAvg
# 0.01/0.02/0.05 -> val 0.809/0.827/0.777, FedProx 0.805/0.821/0.797, MOON 0.794/0.804/0.726.
# 32x32 colour images take the same 2-D CNN value by analogy (no CIFAR data here to measure).
_IMAGE_FEDAVG: dict[str, dict[str, Any]] = {"gray28": {"lr": 0.02}, "color32": {"lr": 0.02}}

_CARDS = (
    # One epoch per round; lr 0.05 oscillated on mnist1d (0.85-0.95), 0.02 reaches 0.97.
    MethodCard(
        "centralized",
        "Centralized training on the union of the clients' local training data (upper bound)",
        NoParams,
        {"amount": 1, "lr": 0.02},
    ),
    MethodCard("fedavg", "FedAvg: local SGD on sampled clients, sample-weighted model averaging", NoParams, _FEDAVG_LOCAL, _IMAGE_FEDAVG),
    MethodCard(
        "local",
        "local training alone: each client trains its own model, nothing is sent (personalised baseline)",
        NoParams,
        _FEDAVG_LOCAL,
        _IMAGE_FEDAVG,
    ),
    MethodCard(
        "fedprox",
        "FedProx: FedAvg with a proximal term mu/2 ||w - w_global||^2 (params.mu, default 0.01)",
        FedProxParams,
        _FEDAVG_LOCAL,
        _IMAGE_FEDAVG,
    ),
    # SCAFFOLD is stated for plain SGD. With FedAvg's defaults (lr 0.15, momentum 0.9) it
    # diverged on mnist1d classes:2 (100 clients), as did lr 0.05 and 0.02 with momentum
    # 0.9 and lr 0.15 without (checked against an independent plain-SGD reference). Issue 16's
    # search (mnist1d, N=100, 30 rounds, validation split; FedAvg: IID 0.605, classes:2 0.329):
    # momentum 0.9 diverges on classes:2 at lr 0.01-0.15 with option II and with option I
    # (params.variate=I); plain lr 0.1 and 0.2 diverge there at 2 and at 5 epochs; eta_g 2 and 4
    # (params.global_lr) at lr 0.05: classes:2 0.290 / 0.222, IID 0.369 / 0.222. Plain lr 0.05
    # is the stable step; 5 epochs instead of 2 raise it from 0.268 to 0.364 on classes:2 and
    # from 0.289 to 0.416 on IID (validation, mean of rounds 26-30). Momentum 0.9 at lr 0.15
    # matches FedAvg on IID (0.617) only: `fldistill tune` finds it there.
    MethodCard(
        "scaffold",
        "SCAFFOLD: FedAvg with server/client control variates (option II; params.correction, params.steps)",
        ScaffoldParams,
        {"amount": 5, "lr": 0.05, "momentum": 0.0},
        # Fashion-MNIST (as FedAvg's): lr 0.01/0.02/0.05/0.1 -> val 0.651/0.736/0.781/0.806, i.e. the
        # same effective step as FedAvg's 0.02 under momentum 0.9 (0.02 / (1 - 0.9) = 0.2 > 0.1 > 0.05).
        {"gray28": {"amount": 2, "lr": 0.1}, "color32": {"amount": 2, "lr": 0.1}},
    ),
    MethodCard(
        "moon",
        "MOON: FedAvg plus model-contrastive loss to the global and previous local model (params.mu, params.temperature)",
        MoonParams,
        _FEDAVG_LOCAL,
        _IMAGE_FEDAVG,
        # measured on real Fashion-MNIST (IID, N=10, 20 rounds): mu 1 0.8847 ± 0.0053 over 3 seeds,
        # mu 5 0.8759 (1 seed), FedAvg 0.8898 ± 0.0028; colour images by analogy
        family_params={"gray28": {"mu": 1.0}, "color32": {"mu": 1.0}},
    ),
    MethodCard(
        "ifca",
        "IFCA: p cluster models, each client trains the one with the lowest loss on its data, per-cluster averaging",
        IFCAParams,
        _FEDAVG_LOCAL,
        _IMAGE_FEDAVG,
    ),
    MethodCard(
        "cfl",
        "CFL: FedAvg in clusters, recursive bi-partitioning by cosine similarity of updates when they cancel out",
        CFLParams,
        _FEDAVG_LOCAL,
        _IMAGE_FEDAVG,
    ),
    MethodCard(
        "cflhkd",
        "CFLHKD (reconstructed): edge cluster models + cloud global model, multi-teacher KD in the local loss",
        CFLHKDParams,
        _FEDAVG_LOCAL,
        _IMAGE_FEDAVG,
    ),
    # Heads hold ~10 clients' data (40+ steps per epoch): they need centralized-like lr.
    MethodCard(
        "hfldd",
        "HFLDD: KL soft-label clustering, heterogeneous clusters, KIP-distilled data to heads, FedAvg among heads",
        HFLDDParams,
        {"amount": 2, "lr": 0.05, "batch_size": 32},
        # Real Fashion-MNIST, IID, N=10, 20 rounds: the heads at lr 0.05 peaked at 0.82 and fell
        # to chance at round 14; at lr 0.02 (FedAvg's image value) they end at 0.84-0.87.
        {"gray28": {"lr": 0.02}, "color32": {"lr": 0.02}},
    ),
    # A ring of ~10 clients is like centralized SGD over the cluster's data: one epoch per
    # member (chains compound drift) and a centralized-like learning rate.
    MethodCard(
        "fedseq",
        "FedSeq: the model travels a ring through each cluster (D2D), heads upload, the server averages",
        FedSeqParams,
        {"amount": 1, "lr": 0.05},
    ),
    MethodCard(
        "dynafed",
        "DynaFed: FedAvg + server-side data synthesis from the global trajectory, then per-round server fine-tune",
        DynaFedParams,
        _FEDAVG_LOCAL,
        _IMAGE_FEDAVG,
    ),
    # KDIA's code settings (run.sh): its setting is few clients per round under label skew,
    # where FedAvg's mnist1d default (lr 0.15, 2 epochs) diverges (benchmarks/, issue 5).
    MethodCard(
        "kdia",
        "KDIA: student + teacher (inequitable aggregation over all clients) + server-trained feature generator",
        KDIAParams,
        {"amount": 10, "lr": 0.01, "batch_size": 64, "weight_decay": 1e-5},
    ),
    # FedGen's code settings for mnist (see the module docstring of fldistill.methods.fedgen).
    MethodCard(
        "fedgen",
        "FedGen: FedAvg + a server-trained latent generator that regularises local training (data-free KD)",
        FedGenParams,
        {"unit": "steps", "amount": 20, "lr": 0.01, "momentum": 0.0, "batch_size": 32},
    ),
    MethodCard(
        "fedftg",
        "FedFTG: FedAvg, then server-side data-free fine-tuning of the global model with an input-space generator",
        FedFTGParams,
        _FEDAVG_LOCAL,
        _IMAGE_FEDAVG,
    ),
    MethodCard(
        "disue",
        "DisUE (reconstructed): group experts on encrypted update similarity, universal expert distilled data-free",
        DisUEParams,
        _FEDAVG_LOCAL,
        _IMAGE_FEDAVG,
    ),
)

CARDS: Mapping[str, MethodCard] = types.MappingProxyType({c.name: c for c in sorted(_CARDS, key=lambda c: c.name)})
"""Every built-in method's card by name, in name order."""


def method_names() -> list[str]:
    """The names of the built-in methods, sorted."""
    return list(CARDS)


def method_card(name: str) -> MethodCard:
    """The card of the built-in method ``name``.

    Raises
    ------
    ConfigError
        For an unknown name, with a did-you-mean hint and the valid names.
    """
    try:
        return CARDS[name]
    except KeyError:
        raise unknown_method(name, CARDS) from None


def method_spec(name: str) -> MethodCard:
    """The card of method ``name``: a built-in's own, or one read off a class registered at run time.

    A plug-in or a test's toy method has no card, but its class is already imported and
    registered (:data:`fldistill.methods.METHODS`), so this stays torch-free either way.
    """
    from fldistill.methods import METHODS

    cls = METHODS.get(name)
    if name in CARDS or cls is None:
        return method_card(name)
    return MethodCard(name, cls.description, cls.Params, cls.local_defaults)


def param_rows(name: str) -> list[tuple[str, str, str, str]]:
    """The parameters of method ``name`` for display, in declaration order.

    Returns
    -------
    list of (str, str, str, str)
        Per parameter: its name, its type as short text (``float``, ``int | None``,
        ``'a' | 'b'``), its default as text (``repr``), and its description.
    """
    rows = []
    for key, field in method_card(name).params.model_fields.items():
        if field.default is not PydanticUndefined:
            default = repr(field.default)
        elif field.default_factory is not None:
            default = repr(field.default_factory())  # type: ignore[call-arg]
        else:
            default = "required"
        rows.append((key, type_text(field.annotation), default, field.description or ""))
    return rows
