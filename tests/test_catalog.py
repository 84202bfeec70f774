"""The torch-free method catalog: names, descriptions, parameters and local defaults of every
built-in method, the single source the method classes take them from."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

import fldistill
from fldistill.errors import ConfigError
from fldistill.methods import all_methods, get_method, register
from fldistill.methods.catalog import CARDS, MethodCard, method_card, method_names, param_rows


def _builtin_classes() -> dict[str, type]:
    """The registered classes of the package's own modules (tests may register toy methods)."""
    return {n: c for n, c in all_methods().items() if c.__module__.startswith("fldistill.methods.")}


def _float_fields(params: type[BaseModel]) -> list[str]:
    return [k for k, f in params.model_fields.items() if float in (typing.get_args(f.annotation) or (f.annotation,))]


def test_catalog_imports_neither_torch_nor_numpy() -> None:
    """A fresh interpreter answers every catalog question and validates every default with neither loaded."""
    code = (
        "import json, sys\n"
        "from fldistill.methods.catalog import method_card, method_names, param_rows\n"
        "out = {}\n"
        "for n in method_names():\n"
        "    card = method_card(n)\n"
        "    card.params.model_validate({})\n"
        "    out[n] = len(param_rows(n))\n"
        "out['_loaded'] = sorted(m for m in ('torch', 'numpy') if m in sys.modules)\n"
        "print(json.dumps(out))\n"
    )
    src = str(Path(fldistill.__file__).resolve().parents[1])  # this tree, not another install
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=True)
    out = json.loads(proc.stdout)
    assert out.pop("_loaded") == []
    assert sorted(out) == method_names() and len(out) >= 16
    assert out["fedavg"] == 0 and out["fedprox"] == 1 and out["dynafed"] > 20


def test_catalog_agrees_with_the_registered_classes() -> None:
    classes = _builtin_classes()
    assert set(classes) == set(method_names())
    for name, cls in classes.items():
        card = method_card(name)
        assert cls.name == card.name == name
        assert cls.Params is card.params, name
        assert cls.description == card.description and card.description, name
        assert cls.local_defaults == card.local_defaults, name
        assert get_method(name) is cls


def test_local_defaults_are_the_tuned_ones() -> None:
    """The cards keep the values the classes had (subclasses without tuning share FedAvg's)."""
    assert dict(method_card("fedavg").local_defaults) == {"amount": 2, "lr": 0.15}
    for name in ("local", "fedprox", "moon", "ifca", "cfl", "cflhkd", "dynafed", "fedftg", "disue"):
        assert method_card(name).local_defaults == method_card("fedavg").local_defaults, name
    assert dict(method_card("scaffold").local_defaults) == {"amount": 5, "lr": 0.05, "momentum": 0.0}
    assert dict(method_card("fedgen").local_defaults) == {"unit": "steps", "amount": 20, "lr": 0.01, "momentum": 0.0, "batch_size": 32}


def test_local_defaults_are_read_only() -> None:
    """The class attribute is the card's mapping: writing to it must not change every later run."""
    with pytest.raises(TypeError):
        method_card("fedavg").local_defaults["lr"] = 1.0  # type: ignore[index]
    with pytest.raises(TypeError):
        get_method("fedprox").local_defaults["lr"] = 1.0  # type: ignore[index]


def test_every_parameter_has_a_description() -> None:
    missing = [f"{n}.{k}" for n in method_names() for k, f in method_card(n).params.model_fields.items() if not (f.description or "").strip()]
    assert missing == []
    for n in method_names():
        assert all(row[3].strip() for row in param_rows(n)), n


@pytest.mark.parametrize("name", sorted(CARDS))
def test_params_refuse_nan_inf_and_unknown_keys(name: str) -> None:
    params = method_card(name).params
    for key in _float_fields(params):
        for bad in (math.nan, math.inf, -math.inf, "nan", "inf"):
            with pytest.raises(ValidationError, match=key):
                params.model_validate({key: bad})
    with pytest.raises(ValidationError) as err:
        params.model_validate({"no_such_parameter": 1})
    assert err.value.errors()[0]["type"] == "extra_forbidden"


def test_nan_and_inf_are_refused_for_fedprox_mu() -> None:
    params = method_card("fedprox").params
    with pytest.raises(ValidationError):
        params.model_validate({"mu": float("nan")})
    with pytest.raises(ValidationError) as err:
        params.model_validate({"mu": float("inf")})  # inf >= 0: only the finite check refuses it
    assert err.value.errors()[0]["type"] == "finite_number"
    assert _float_fields(method_card("dynafed").params)  # the loop above checks some floats at all


def test_unknown_method_says_did_you_mean() -> None:
    with pytest.raises(ConfigError) as err:
        method_card("fedavf")
    msg = str(err.value)
    assert msg.startswith("unknown method 'fedavf'; did you mean 'fedavg'")
    assert "(choose one of: centralized, cfl," in msg and msg.endswith("scaffold)")
    with pytest.raises(ConfigError) as err2:
        get_method("fedavf")
    assert str(err2.value).startswith("unknown method 'fedavf'; did you mean 'fedavg'")
    with pytest.raises(ConfigError, match=r"^unknown method 'zzz' \(choose one of: ") as err3:
        method_card("zzz")
    assert "did you mean" not in str(err3.value)


def test_param_rows_are_display_text() -> None:
    assert param_rows("fedprox") == [("mu", "float", "0.01", "weight of the proximal term")]
    assert param_rows("fedavg") == []
    rows = {r[0]: r for r in param_rows("dynafed")}
    assert rows["preset"][1:3] == ("'paper' | 'cpu'", "'cpu'")
    assert rows["iterations"][1:3] == ("int | None", "None")
    assert rows["dsa"][1:3] == ("bool", "True")
    assert rows["lr_lr"][1:3] == ("float", "1e-05")
    hfldd = {r[0]: r for r in param_rows("hfldd")}
    assert hfldd["distill_params"][1:3] == ("dict[str, Any]", "{}")  # {} = the fast preset (params validator)
    assert list(hfldd)[:2] == ["k", "pretrain_epochs"]  # the clustering fields come first, as declared
    assert [r[0] for r in param_rows("fedseq")][-2:] == ["clusters", "n_clusters"]


def test_a_builtin_class_cannot_define_what_its_card_holds() -> None:
    """A second source of a built-in method's description would drift: register refuses it."""
    fedavg = get_method("fedavg")
    with pytest.raises(TypeError, match="description"):
        register(type("Shadow", (fedavg,), {"name": "fedavg", "description": "another one"}))
    assert get_method("fedavg") is fedavg


def test_cards_are_frozen() -> None:
    card = method_card("fedprox")
    assert isinstance(card, MethodCard)
    with pytest.raises(AttributeError):
        card.description = "x"  # type: ignore[misc]


def test_dataset_families_and_per_family_defaults() -> None:
    """Defaults are tuned per dataset family; a family without overrides gets the card's defaults unchanged."""
    from fldistill.methods.catalog import CARDS, dataset_family
    from fldistill.runner import local_defaults_for

    assert [dataset_family(s) for s in ((40,), (1, 8, 8), (1, 28, 28), (3, 32, 32), ())] == ["signal", "digits", "gray28", "color32", "color32"]
    for name, card in CARDS.items():
        assert card.defaults_for("signal") == dict(card.local_defaults), name  # the mnist1d tuning is the base
        for fam, over in card.family_defaults.items():
            assert card.defaults_for(fam) == {**card.local_defaults, **over}
    assert local_defaults_for("fedavg", "mnist1d") == {"amount": 2, "lr": 0.15}
    # tuned on real Fashion-MNIST with `fldistill tune` (the card's comments give the scores)
    assert local_defaults_for("fedavg", "fashion-mnist") == {"amount": 2, "lr": 0.02}
    assert local_defaults_for("scaffold", "mnist") == {"amount": 2, "lr": 0.1, "momentum": 0.0}
    assert local_defaults_for("scaffold", "mnist1d") == {"amount": 5, "lr": 0.05, "momentum": 0.0}
    assert local_defaults_for("fedavg", "digits") == {"amount": 2, "lr": 0.15}
    with pytest.raises(ValueError, match="unknown dataset families"):
        MethodCard("x", "x", BaseModel, {}, {"grey": {"lr": 0.1}})


def test_family_params_fill_only_the_params_not_given() -> None:
    """MOON's mu: 0.1 on 1-D signals (the Params default), 1 on images; a given mu always wins."""
    from fldistill.config import parse_config
    from fldistill.methods.catalog import MethodCard
    from fldistill.methods.params import MoonParams
    from fldistill.runner import resolve_defaults

    def mu(dataset: str, **params: float) -> float:
        cfg = parse_config({"method": "moon", "dataset": dataset, "params": params})
        return float(resolve_defaults(cfg).params["mu"])

    assert mu("mnist1d") == 0.1 and mu("fashion-mnist") == 1.0 and mu("mnist") == 1.0
    assert mu("fashion-mnist", mu=3.0) == 3.0 and mu("mnist1d", mu=3.0) == 3.0
    with pytest.raises(ValueError, match="unknown parameters"):
        MethodCard("x", "x", MoonParams, {}, family_params={"gray28": {"nu": 1.0}})
