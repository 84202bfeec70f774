"""The experiment configuration: one validated object, saved with every run.

A run is reproducible from its ``config.json`` alone: every field that changes the
numbers lives here, and all randomness is derived from ``seed``.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fldistill.errors import ConfigError


class _Strict(BaseModel):
    # Unknown keys are errors: a typo must never silently fall back to a default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LocalConfig(_Strict):
    """Local training done by a client (or a cluster head) per round.

    ``amount`` is E: local epochs when ``unit == "epochs"``, optimiser steps when
    ``unit == "steps"``. Fields left unset take the method's tuned defaults
    (``Method.local_defaults``); the resolved values are saved with the run.
    """

    unit: Literal["epochs", "steps"] = "epochs"
    amount: int = Field(2, ge=1)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(32, ge=1)


class LedgerConfig(_Strict):
    """How messages are priced, in bits.

    ``b1`` bits per model parameter or float value (HFLDD's B1), ``b2`` bits per raw or
    distilled data value (HFLDD's B2, 8 per pixel channel), ``label_bits`` per hard label.
    With ``init_model_free`` the initial model travels as a seed (HFLDD Eq. 3).
    """

    b1: int = Field(32, ge=1)
    b2: int = Field(8, ge=1)
    label_bits: int = Field(32, ge=1)
    init_model_free: bool = True


class PublicConfig(_Strict):
    """The public auxiliary set (HFLDD's D_g): same input shape, disjoint from client data.

    ``source``: ``auto`` (per-dataset default), ``holdout`` (samples held out of the
    training pool), ``shifted`` (mnist1d only: a differently seeded, more corrupted
    generator run), ``noise`` (Gaussian inputs), or ``dataset:NAME`` (another dataset with
    the same input shape, loaded from ``data_dir``).
    """

    source: str = "auto"
    size: int = Field(1000, ge=1)


class FlowerConfig(_Strict):
    """The Flower engine's options (``fldistill flower ...``); in-process runs ignore them.

    ``timeout_s``: how long the server waits for the replies to one call; clients that
    have not answered by then are recorded as missing and the round goes on without
    them. ``connect_timeout_s``: how long it waits, before round 0, for every partition
    to be served by a node. ``threads``: torch threads per client task (1 keeps several
    nodes on one machine from oversubscribing it, and numbers comparable).
    """

    timeout_s: float = Field(300.0, gt=0)
    connect_timeout_s: float = Field(120.0, gt=0)
    threads: int = Field(1, ge=1)


class RunConfig(_Strict):
    """Everything that defines a run."""

    method: str = "fedavg"
    dataset: str = "mnist1d"
    data_dir: str | None = None
    dataset_size: int | None = Field(
        None, ge=100, description="samples to generate for mnist1d (train+test); None = default"
    )
    partition: str = "iid"
    groups: str | None = Field(
        None, description="ground-truth client groups G:KIND (labelswap, rotate, signal); None = no groups"
    )
    clients: int = Field(100, ge=1)
    participation: float = Field(1.0, gt=0, le=1)
    rounds: int = Field(100, ge=1)
    seed: int = Field(0, ge=0)
    model: str = "auto"
    local_test_fraction: float = Field(0.2, ge=0, lt=1)
    local: LocalConfig = Field(default_factory=LocalConfig)
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    public: PublicConfig = Field(default_factory=PublicConfig)
    flower: FlowerConfig = Field(default_factory=FlowerConfig)
    params: dict[str, Any] = Field(default_factory=dict, description="method-specific parameters")
    eval_batch_size: int = Field(4096, ge=1)
    eval_every: int = Field(
        1, ge=1, description="personalised evaluation every this many rounds (round 0 and the last always)"
    )
    device: str = "cpu"
    engine: Literal["sequential", "vectorised", "auto"] = "auto"
    divergence_factor: float = Field(
        100.0, gt=1, description="stop when the test loss exceeds this multiple of the initial loss"
    )
    name: str | None = None

    @field_validator("method", "dataset", "model")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.strip().lower()

    def to_json(self) -> str:
        """Serialise the resolved config (what ``config.json`` holds)."""
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)

    def run_name(self) -> str:
        """A readable default run-folder name."""
        if self.name:
            return self.name
        part = self.partition.replace(":", "")
        groups = f"-g{self.groups.replace(':', '').strip()}" if self.groups else ""
        return f"{self.method}-{self.dataset}-{part}{groups}-n{self.clients}-s{self.seed}"


def _describe(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"]) or "config"
    if e["type"] == "extra_forbidden":
        return f"unknown config key '{loc}'; see `fldistill run --help` or docs/config.md for valid keys"
    return f"invalid value for '{loc}': {e['msg']} (got {e.get('input')!r})"


def parse_config(data: dict[str, Any]) -> RunConfig:
    """Validate a mapping into a :class:`RunConfig`.

    Raises
    ------
    ConfigError
        With a one-line message naming the offending key.
    """
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into a mapping (not yet validated)."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config file {p} is a folder, not a file; pass a .toml file to --config")
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist; pass an existing .toml file to --config")
    try:
        return tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {p} is not valid TOML: {err}") from None
    except OSError as err:
        raise ConfigError(f"config file {p} cannot be read ({err.strerror}); check its permissions") from None


def _coerce(text: str) -> Any:
    """Turn a command-line value into the JSON/TOML value it spells."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "null":  # "none" stays a string: it is a valid choice (e.g. distiller=none)
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    if text.startswith(("[", "{")):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides with dotted keys (``local.lr=0.1``, ``params.mu=0.01``)."""
    out = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}' (e.g. --set local.lr=0.1)")
        key, value = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"--set has an empty key in '{item}'")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: '{p}' is not a section")
        node[parts[-1]] = _coerce(value.strip())
    return out
