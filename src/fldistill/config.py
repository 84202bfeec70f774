"""The experiment configuration: one validated object, saved with every run.

A run is reproducible from its ``config.json`` alone: every field that changes the
numbers lives here, and all randomness is derived from ``seed``.
"""

from __future__ import annotations

import json
import re
import tomllib
import types
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fldistill.errors import ConfigError, did_you_mean

_DEVICE = re.compile(r"cpu|cuda(:[0-9]+)?")


class _Strict(BaseModel):
    # Unknown keys are errors: a typo must never silently fall back to a default.
    # NaN and inf are refused everywhere: they would pass an unbounded float field.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class LocalConfig(_Strict):
    """Local training done by a client (or a cluster head) per round.

    ``amount`` is E: local epochs when ``unit == "epochs"``, optimiser steps when
    ``unit == "steps"``. Fields left unset take the method's tuned defaults
    (``Method.local_defaults``); the resolved values are saved with the run.
    """

    unit: Literal["epochs", "steps"] = Field("epochs", description="what local.amount counts: local epochs or optimiser steps")
    amount: int = Field(2, ge=1, description="E: local epochs or steps per round (method default if unset)")
    lr: float = Field(0.05, gt=0, description="SGD learning rate (method default if unset)")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (reset every round)")
    weight_decay: float = Field(0.0, ge=0, description="SGD weight decay")
    batch_size: int = Field(32, ge=1, description="local mini-batch size")


class LedgerConfig(_Strict):
    """How messages are priced, in bits.

    ``b1`` bits per model parameter or float value (HFLDD's B1), ``b2`` bits per raw or
    distilled data value (HFLDD's B2, 8 per pixel channel), ``label_bits`` per hard label.
    With ``init_model_free`` the initial model travels as a seed (HFLDD Eq. 3).
    """

    b1: int = Field(32, ge=1, description="bits per model parameter or float value (B1)")
    b2: int = Field(8, ge=1, description="bits per raw or distilled data value (B2)")
    label_bits: int = Field(32, ge=1, description="bits per hard label")
    init_model_free: bool = Field(True, description="the initial model travels as a seed (HFLDD Eq. 3)")


class PublicConfig(_Strict):
    """The public auxiliary set (HFLDD's D_g): same input shape, disjoint from client data.

    ``source``: ``auto`` (per-dataset default), ``holdout`` (samples held out of the
    training pool), ``shifted`` (mnist1d only: a differently seeded, more corrupted
    generator run), ``noise`` (Gaussian inputs), or ``dataset:NAME`` (another dataset with
    the same input shape, loaded from ``data_dir``).
    """

    source: str = Field("auto", description="public set D_g: auto, holdout, shifted (mnist1d), noise or dataset:NAME")
    size: int | None = Field(
        None, ge=1, description="|D_g|; null = 1000, capped at 10% of the training pool when held out of it"
    )
    data_dir: str | None = Field(
        None, description="folder of dataset:NAME's files (never the clients' data_dir); null = where its system package put it"
    )


class FlowerConfig(_Strict):
    """The Flower engine's options (``fldistill flower ...``); in-process runs ignore them.

    ``timeout_s``: how long the server waits for the replies to one call; clients that
    have not answered by then are recorded as missing and the round goes on without
    them. ``connect_timeout_s``: how long it waits, before round 0, for every partition
    to be served by a node. ``threads``: torch threads per client task (1 keeps several
    nodes on one machine from oversubscribing it, and numbers comparable).
    """

    timeout_s: float = Field(300.0, gt=0, description="Flower: seconds one call waits for replies; later clients count as missing")
    connect_timeout_s: float = Field(120.0, gt=0, description="Flower: seconds to wait for a node per client before round 0")
    threads: int = Field(1, ge=1, description="Flower: torch threads per client task (and on the server)")


class RunConfig(_Strict):
    """Everything that defines a run."""

    method: str = Field("fedavg", description="the method (fldistill list methods)")
    dataset: str = Field("mnist1d", description="the dataset (fldistill list datasets)")
    data_dir: str | None = Field(None, description="folder with the dataset's files (datasets that are not embedded)")
    dataset_size: int | None = Field(
        None, ge=100, description="samples to generate for mnist1d (train+test); null = the dataset's default"
    )
    partition: str = Field(
        "iid", description="iid, classes:C, dirichlet:ALPHA, dirichlet-client:ALPHA or quantity:linear|square|exponential"
    )
    groups: str | None = Field(
        None, description="ground-truth client groups G:KIND (labelswap, rotate, signal); null = no groups"
    )
    clients: int = Field(100, ge=1, description="N, the number of clients")
    participation: float = Field(1.0, gt=0, le=1, description="fraction of clients sampled per round")
    rounds: int = Field(100, ge=1, description="T, communication rounds")
    seed: int = Field(0, ge=0, description="the run seed, the only source of randomness")
    model: str = Field("auto", description="the model (fldistill list models); auto = the dataset's default")
    local_test_fraction: float = Field(
        0.2, ge=0, lt=1, description="each client's local test split for personalised evaluation (0 = none)"
    )
    validation_fraction: float = Field(
        0.0, ge=0, lt=1, description="share of each client's training data held out as a validation split (val_accuracy; tuning)"
    )
    local: LocalConfig = Field(default_factory=LocalConfig)
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    public: PublicConfig = Field(default_factory=PublicConfig)
    flower: FlowerConfig = Field(default_factory=FlowerConfig)
    params: dict[str, Any] = Field(default_factory=dict, description="method-specific parameters")
    eval_batch_size: int = Field(4096, ge=1, description="samples per forward pass in every evaluation")
    eval_every: int = Field(
        1, ge=1, description="personalised evaluation every this many rounds (round 0 and the last always)"
    )
    device: str = Field("cpu", description="torch device: cpu, cuda or cuda:N")
    engine: Literal["sequential", "vectorised", "auto"] = Field(
        "auto", description="sequential, vectorised (clients of one call trained together) or auto"
    )
    divergence_factor: float = Field(
        100.0, gt=1, description="stop when the test loss exceeds this multiple of the initial loss"
    )
    name: str | None = Field(None, description="run-folder name (default: method-dataset-partition-nN-sSEED)")

    @field_validator("method", "dataset", "model")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.strip().lower()

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        # Checked here, without torch: a malformed string would crash deep in torch.
        # Whether CUDA is present is checked by the runner before any work starts.
        v = v.strip().lower()
        if not _DEVICE.fullmatch(v):
            raise ValueError("use cpu, cuda or cuda:N (N a GPU index)")
        return v

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


def _section(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The config model that holds the key at ``loc`` (None inside free-form ``params``)."""
    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def _describe(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"]) or "config"
    if e["type"] == "extra_forbidden":
        section = _section(tuple(e["loc"]))
        prefix = loc.rsplit(".", 1)[0] + "." if "." in loc else ""
        hint = did_you_mean(loc, [prefix + k for k in section.model_fields]) if section else ""
        return f"unknown config key '{loc}'{hint} (`fldistill list keys` lists every key)"
    msg = str(e["msg"]).removeprefix("Value error, ")
    return f"invalid value for '{loc}': {msg} (got {e.get('input')!r})"


def type_text(tp: Any, none: str = "None") -> str:
    """A type annotation as short text: ``float``, ``int | None``, ``'a' | 'b'``, ``dict[str, Any]``.

    ``none`` spells ``NoneType`` (``"null"`` in the config-key table, as TOML/JSON users write it).
    """
    import typing

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(type_text(a, none) for a in args)
    if tp is type(None):
        return none
    if tp is Any:
        return "Any"
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_text(a, none) for a in args)}]"
    return getattr(tp, "__name__", str(tp))


def diff_configs(a: Any, b: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two config dicts (missing keys count)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: dict[str, tuple[Any, Any]] = {}
        for k in sorted(set(a) | set(b)):
            out.update(diff_configs(a.get(k), b.get(k), f"{prefix}{k}."))
        return out
    return {} if a == b else {prefix[:-1]: (a, b)}


def config_keys() -> list[tuple[str, str, str, str]]:
    """``(key, type, default, meaning)`` of every config key, from the models themselves.

    What ``fldistill list keys`` prints and ``docs/config.md``'s table holds, so neither
    can drift from the code. ``params.*`` are the method's own (``fldistill list methods``).
    """
    rows: list[tuple[str, str, str, str]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
                continue
            if name == "params":
                rows.append((f"{prefix}params.*", "table", "{}", "the method's own parameters: fldistill list methods"))
                continue
            default = field.get_default(call_default_factory=True)
            text = "null" if default is None else json.dumps(default) if isinstance(default, str | bool) else str(default)
            rows.append((f"{prefix}{name}", type_text(ann, none="null"), text, field.description or ""))

    walk(RunConfig, "")
    return rows


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
    """Read a TOML config file (or a ``.json`` one, e.g. a run's ``config.json``) into a mapping, not yet validated."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config file {p} is a folder, not a file; pass a .toml file to --config")
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist; pass an existing .toml file to --config")
    try:
        if p.suffix == ".json":
            data = json.loads(p.read_text())
            if not isinstance(data, dict):
                raise ConfigError(f"config file {p} holds a JSON {type(data).__name__}, not an object of config keys")
            return data
        return tomllib.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"config file {p} is not valid JSON: {err}") from None
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
