"""Config checks that need no torch: they run first, so a bad input is reported at once.

``fldistill run`` calls :func:`check_config` before it imports the runner (and torch),
so a typo costs a Python start, not a torch import; the runner's ``validate`` calls it
too, then adds the checks that need torch (model shapes, CUDA).
"""

from __future__ import annotations

from pydantic import BaseModel, ValidationError

from fldistill.config import RunConfig
from fldistill.data.groups import parse_groups
from fldistill.data.partition import parse_partition
from fldistill.data.registry import check_data_dir, dataset_info, default_data_dir, missing_data_dir
from fldistill.errors import ConfigError, did_you_mean

_PUBLIC = ("auto", "holdout", "shifted", "noise")


def method_params(cfg: RunConfig) -> BaseModel:
    """Validate ``cfg.params`` against the method's own parameter model (torch-free)."""
    from fldistill.methods.catalog import method_spec

    model = method_spec(cfg.method).params
    try:
        return model.model_validate(cfg.params)
    except ValidationError as err:
        e = err.errors()[0]
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            valid = ", ".join(model.model_fields) or "none"
            hint = did_you_mean(key, model.model_fields)
            raise ConfigError(f"method '{cfg.method}' has no parameter '{key}'{hint} (valid: {valid})") from None
        msg = str(e["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"invalid params.{key} for method '{cfg.method}': {msg} (got {e.get('input')!r})") from None


def check_public_source(source: str) -> None:
    """``public.source`` names a known kind, or ``dataset:NAME`` of a known dataset."""
    if source in _PUBLIC:
        return
    if source.startswith("dataset:"):
        dataset_info(source.split(":", 1)[1])
        return
    hint = did_you_mean(source, _PUBLIC)
    raise ConfigError(f"unknown public.source '{source}'{hint} (use auto, holdout, shifted, noise or dataset:NAME)")


def check_config(cfg: RunConfig) -> None:
    """Every check of ``cfg`` that needs neither torch nor data, in the order a user fixes them.

    Raises
    ------
    ConfigError, DataError
        One line naming the key, what was wrong and how to fix it.
    """
    from fldistill.model_catalog import model_card

    info = dataset_info(cfg.dataset)
    method_params(cfg)
    parse_partition(cfg.partition, info.n_classes or None, cfg.clients)
    if cfg.groups is not None:
        parse_groups(cfg.groups, n_classes=info.n_classes or None, input_shape=info.input_shape or None, n_clients=cfg.clients)
    if cfg.model != "auto":
        model_card(cfg.model)
    check_public_source(cfg.public.source)
    _check_public_dir(cfg)
    if not info.embedded:
        data_dir = cfg.data_dir or default_data_dir(cfg.dataset)
        if not data_dir:
            raise missing_data_dir(cfg.dataset)
        check_data_dir(data_dir)  # before the run folder is created


def _check_public_dir(cfg: RunConfig) -> None:
    """A ``dataset:NAME`` public set read from disk needs its own folder (``public.data_dir`` or an installed copy)."""
    if not cfg.public.source.startswith("dataset:"):
        return
    name = cfg.public.source.split(":", 1)[1]
    if dataset_info(name).embedded:
        return
    folder = cfg.public.data_dir or default_data_dir(name)
    if folder is None:
        raise ConfigError(
            f"public.source={cfg.public.source} is read from disk: set public.data_dir to the folder of its files "
            "(the clients' --data-dir is never used for it, so the public set cannot be client data)"
        )
    check_data_dir(folder)
