"""Tests of the model registry: parameter counts, shapes, the feature/head split."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, stack_module_state, vmap

from fldistill.errors import ConfigError
from fldistill.models import (
    MODELS,
    SplitModel,
    build_model,
    count_parameters,
    default_model_for,
    list_models,
)

# Exact trainable-parameter counts at each model's default shape and class count.
EXPECTED_PARAMS = {
    "mlp": 199_210,
    "mnist1d_mlp": 15_210,
    "mnist1d_cnn": 5_210,
    "digits_cnn": 9_930,
    "mnist_cnn": 44_426,
    "cifar_cnn": 1_020_160,
    "convnet": 320_010,
    "kdia_cnn": 92_626,
    "resnet18": 11_173_962,
    "mobilenetv2": 2_296_922,
    "shufflenet": 1_263_854,
}


def _build_default(name: str) -> SplitModel:
    spec = MODELS[name]
    return build_model(name, spec.default_input_shape, spec.default_classes)


def test_every_registered_model_has_a_pinned_count() -> None:
    assert set(MODELS) == set(EXPECTED_PARAMS)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_parameter_count_at_default_shape(name: str) -> None:
    assert count_parameters(_build_default(name)) == EXPECTED_PARAMS[name]


@pytest.mark.parametrize(
    ("name", "shape", "classes", "expected"),
    [
        ("mnist_cnn", (1, 28, 28), 10, 44_426),
        ("cifar_cnn", (3, 32, 32), 10, 1_020_160),
        ("convnet", (3, 32, 32), 10, 320_010),
        ("kdia_cnn", (3, 32, 32), 10, 92_626),
        ("resnet18", (3, 32, 32), 10, 11_173_962),
        ("mobilenetv2", (3, 32, 32), 10, 2_296_922),
        # LeNet-5 on 32x32 colour images: flatten is 16*5*5 = 400.
        ("mnist_cnn", (3, 32, 32), 10, 62_006),
        ("mlp", (40,), 10, 50_410),
    ],
)
def test_parameter_count_at_given_shape(
    name: str, shape: tuple[int, ...], classes: int, expected: int
) -> None:
    assert count_parameters(build_model(name, shape, classes)) == expected


def test_list_models_matches_registry() -> None:
    rows = list_models()
    assert [r[0] for r in rows] == list(MODELS)
    for name, description, n_params in rows:
        assert description and "\n" not in description
        assert n_params == EXPECTED_PARAMS[name]


def test_catalogue_counts_equal_the_built_models() -> None:
    """The torch-free catalogue (read by `list models`) stores counts; they must be the real ones."""
    from fldistill.model_catalog import MODEL_CARDS

    assert list(MODEL_CARDS) == list(MODELS)
    for name, _, n_params in list_models():
        assert MODEL_CARDS[name].parameters == n_params, name


def test_unknown_model_suggests_the_close_name() -> None:
    with pytest.raises(ConfigError, match="unknown model 'mnist_cn'; did you mean 'mnist_cnn'"):
        build_model("mnist_cn", (1, 28, 28), 10)


def test_list_models_does_not_touch_the_rng() -> None:
    torch.manual_seed(3)
    expected = torch.rand(1)
    torch.manual_seed(3)
    list_models()
    assert torch.equal(torch.rand(1), expected)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_forward_shape_and_split(name: str) -> None:
    torch.manual_seed(0)
    spec = MODELS[name]
    model = _build_default(name).eval()
    x = torch.randn(2, *spec.default_input_shape)
    with torch.no_grad():
        h = model.features(x)
        logits = model(x)
        assert tuple(h.shape) == (2, *model.feature_shape)
        assert tuple(logits.shape) == (2, spec.default_classes)
        assert torch.equal(logits, model.classifier(h))


@pytest.mark.parametrize("name", ["mnist_cnn", "digits_cnn", "resnet18"])
def test_build_is_deterministic_given_seed(name: str) -> None:
    torch.manual_seed(7)
    a = _build_default(name)
    torch.manual_seed(7)
    b = _build_default(name)
    for (ka, pa), (kb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb
        assert torch.equal(pa, pb)


def test_mnist_cnn_accepts_cifar_shape() -> None:
    model = build_model("mnist_cnn", (3, 32, 32), 10)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_cifar_cnn_with_100_classes() -> None:
    model = build_model("cifar_cnn", (3, 32, 32), 100)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_kdia_classifier_takes_feature_maps() -> None:
    model = build_model("kdia_cnn", (3, 32, 32), 10)
    assert model.feature_shape == (16, 5, 5)
    assert model.classifier(torch.randn(4, 16, 5, 5)).shape == (4, 10)


def test_mnist1d_cnn_accepts_both_layouts() -> None:
    torch.manual_seed(0)
    model = build_model("mnist1d_cnn", (40,), 10)
    x = torch.randn(3, 40)
    torch.testing.assert_close(model(x), model(x.unsqueeze(1)))
    assert build_model("mnist1d_cnn", (1, 40), 10)(x).shape == (3, 10)


def test_digits_cnn_accepts_flat_inputs() -> None:
    torch.manual_seed(0)
    model = build_model("digits_cnn", (1, 8, 8), 10)
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(model(x), model(x.reshape(2, 64)))
    assert count_parameters(build_model("digits_cnn", (64,), 10)) == 9_930


def test_unknown_model_name() -> None:
    with pytest.raises(ConfigError, match="unknown model 'nope'.*mnist_cnn"):
        build_model("nope", (1, 28, 28), 10)


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("mnist_cnn", (1, 4, 4)),
        ("mnist_cnn", (784,)),
        ("cifar_cnn", (3, 8, 8)),
        ("kdia_cnn", (3, 12, 12)),
        ("convnet", (3, 4, 4)),
        ("resnet18", (40,)),
        ("mnist1d_cnn", (1, 28, 28)),
        ("digits_cnn", (63,)),
    ],
)
def test_impossible_shape(name: str, shape: tuple[int, ...]) -> None:
    with pytest.raises(ConfigError, match=f"model '{name}' cannot take input shape .*accepts"):
        build_model(name, shape, 10)


def test_bad_class_count() -> None:
    with pytest.raises(ConfigError, match="n_classes"):
        build_model("mlp", (40,), 1)


def test_count_parameters_skips_frozen() -> None:
    model = build_model("mnist1d_mlp", (40,), 10)
    for p in model.classifier.parameters():
        p.requires_grad_(False)
    assert count_parameters(model) == 15_210 - (100 * 10 + 10)


@pytest.mark.parametrize(
    ("dataset", "model"),
    [
        ("mnist1d", "mnist1d_cnn"),
        ("digits", "digits_cnn"),
        ("mnist", "mnist_cnn"),
        ("fashion-mnist", "mnist_cnn"),
        ("cifar10", "cifar_cnn"),
        ("svhn", "cifar_cnn"),
        ("cifar100", "cifar_cnn"),
        ("cinic10", "convnet"),
        ("imagefolder", "convnet"),
        ("something-else", "mlp"),
    ],
)
def test_default_model_for(dataset: str, model: str) -> None:
    assert default_model_for(dataset) == model
    assert model in MODELS


@pytest.mark.parametrize("name", ["mnist1d_cnn", "digits_cnn"])
def test_vmap_over_stacked_parameters_matches_loop(name: str) -> None:
    torch.manual_seed(0)
    models = [_build_default(name) for _ in range(3)]
    params, buffers = stack_module_state(models)
    base = _build_default(name).to("meta")
    x = torch.randn(4, *MODELS[name].default_input_shape)

    def call(p: dict, b: dict, inp: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (p, b), (inp,))

    batched = vmap(call, in_dims=(0, 0, None))(params, buffers, x)
    looped = torch.stack([m(x) for m in models])
    torch.testing.assert_close(batched, looped)
