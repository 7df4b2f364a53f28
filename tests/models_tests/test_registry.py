"""Architecture names, build_model, config_from_dict and config validation."""

from __future__ import annotations

import re

import pytest
import torch

import models

from .conftest import NUM_FEATURES, REGISTERED

# Configs with the d_model/num_heads/d_ff/num_layers/dropout fields whose rules are checked below.
SIZED = [name for name in ("transformer", "tft", "bayesian", "mcdropout") if name in REGISTERED]


def test_architectures_in_contract_order() -> None:
    assert models.ARCHITECTURES == (
        "transformer",
        "tft",
        "bayesian",
        "mcdropout",
        "mamba",
        "xlstm",
    )


def test_config_classes_name_their_architecture() -> None:
    for name, config_class in models.CONFIG_CLASSES.items():
        assert name in models.ARCHITECTURES
        assert config_class.architecture == name


@pytest.mark.parametrize(
    ("architecture", "expected"),
    [
        ("transformer", {"d_model": 128, "num_heads": 8, "d_ff": 512, "num_layers": 3,
                         "dropout": 0.1}),
        ("tft", {"d_model": 96, "num_heads": 8, "d_ff": 384, "num_layers": 2, "dropout": 0.1}),
        ("bayesian", {"d_model": 96, "num_heads": 8, "d_ff": 384, "num_layers": 2,
                      "dropout": 0.05}),
        ("mcdropout", {"d_model": 128, "num_heads": 8, "d_ff": 512, "num_layers": 2,
                       "dropout": 0.2}),
    ],
)
def test_config_defaults(architecture: str, expected: dict[str, object]) -> None:
    mapping = models.CONFIG_CLASSES[architecture]().to_dict()

    for name, value in expected.items():
        assert mapping[name] == value, name


@pytest.mark.parametrize("architecture", ["bayesian", "mcdropout"])
def test_stochastic_configs_carry_num_samples(architecture: str) -> None:
    config = models.CONFIG_CLASSES[architecture]()

    assert config.num_samples > 1


def test_build_model_unknown_architecture_lists_valid() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'lstm'") as caught:
        models.build_model("lstm", num_features=NUM_FEATURES)

    for name in models.ARCHITECTURES:
        assert name in str(caught.value)


def test_config_from_dict_unknown_architecture() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'gpt'"):
        models.config_from_dict("gpt", {})


def test_build_model_accepts_dict_config() -> None:
    model = models.build_model("transformer", {"d_model": 32, "num_heads": 4}, num_features=3)

    assert isinstance(model, models.TransformerClassifier)
    assert model.config.d_model == 32
    assert model.config.d_ff == 512  # unspecified fields keep their defaults
    assert model(torch.randn(2, 10, 3)).shape == (2,)


def test_build_model_accepts_positional_num_features() -> None:
    model = models.build_model("transformer", None, 4, 20)

    assert model.num_features == 4
    assert model.seq_len == 20


def test_build_model_requires_num_features() -> None:
    with pytest.raises(ValueError, match="needs num_features"):
        models.build_model("transformer")


@pytest.mark.parametrize("num_features", [0, -3, 2.5, True, "6"])
def test_build_model_rejects_bad_num_features(num_features: object) -> None:
    with pytest.raises(ValueError, match="num_features must be a positive integer"):
        models.build_model("transformer", num_features=num_features)  # type: ignore[arg-type]


@pytest.mark.parametrize("seq_len", [0, -1, 12.0])
def test_build_model_rejects_bad_seq_len(seq_len: object) -> None:
    with pytest.raises(ValueError, match="seq_len must be None or a positive integer"):
        models.build_model("transformer", num_features=3, seq_len=seq_len)  # type: ignore[arg-type]


def test_build_model_rejects_config_of_other_architecture() -> None:
    with pytest.raises(ValueError, match="must be a TFTConfig"):
        models.build_model("tft", models.TransformerConfig(), num_features=3)


def test_build_model_revalidates_mutated_config() -> None:
    config = models.TransformerConfig()
    config.num_heads = 5

    with pytest.raises(ValueError, match=re.escape("transformer.d_model (128)")):
        models.build_model("transformer", config, num_features=3)


def test_count_parameters_accepts_dict_and_dataclass() -> None:
    from_dict = models.count_parameters("tft", {"d_model": 32, "num_heads": 4}, 5)
    from_config = models.count_parameters("tft", models.TFTConfig(d_model=32, num_heads=4), 5)

    assert from_dict == from_config


def test_count_parameters_of_large_config_allocates_nothing() -> None:
    # About 150M parameters: counting on the meta device must not allocate 600 MB.
    counted = models.count_parameters(
        "transformer", {"d_model": 1024, "d_ff": 4096, "num_layers": 12}, NUM_FEATURES
    )

    assert counted > 100_000_000


@pytest.mark.parametrize("architecture", SIZED)
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("d_model", 0, "d_model must be positive, got 0"),
        ("d_model", -8, "d_model must be positive, got -8"),
        ("num_heads", 0, "num_heads must be positive, got 0"),
        ("d_ff", -1, "d_ff must be positive, got -1"),
        ("num_layers", 0, "num_layers must be positive, got 0"),
        ("num_layers", 2.0, "num_layers must be an integer, got 2.0"),
        ("d_model", True, "d_model must be an integer, got True"),
        ("num_heads", "8", "num_heads must be an integer, got '8'"),
        ("d_model", 100, "d_model (100) must be divisible by {arch}.num_heads (8)"),
        ("dropout", 1.0, "dropout must lie in [0, 1), got 1.0"),
        ("dropout", -0.1, "dropout must lie in [0, 1), got -0.1"),
        ("dropout", "0.1", "dropout must be a number, got '0.1'"),
    ],
)
def test_config_rejects_bad_value(
    architecture: str, field: str, value: object, message: str
) -> None:
    expected = f"{architecture}.{message.format(arch=architecture)}"

    with pytest.raises(ValueError, match=re.escape(expected)):
        models.config_from_dict(architecture, {field: value})


@pytest.mark.parametrize("architecture", SIZED)
def test_config_accepts_zero_dropout(architecture: str) -> None:
    config = models.config_from_dict(architecture, {"dropout": 0})

    assert config.dropout == 0


@pytest.mark.parametrize("architecture", ["bayesian", "mcdropout"])
def test_config_rejects_bad_num_samples(architecture: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"{architecture}.num_samples must be positive")):
        models.config_from_dict(architecture, {"num_samples": 0})


@pytest.mark.parametrize("field", ["prior_sigma", "posterior_sigma_init"])
@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
def test_bayesian_config_rejects_bad_sigma(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"bayesian.{field} must be a positive finite number"):
        models.config_from_dict("bayesian", {field: value})


@pytest.mark.parametrize("architecture", REGISTERED)
def test_config_rejects_unknown_field(architecture: str) -> None:
    with pytest.raises(ValueError, match="unknown .* config field\\(s\\) depth; valid fields are"):
        models.config_from_dict(architecture, {"depth": 4})


@pytest.mark.parametrize("architecture", REGISTERED)
def test_config_rejects_non_mapping(architecture: str) -> None:
    with pytest.raises(ValueError, match="must be a mapping"):
        models.config_from_dict(architecture, [("d_model", 64)])  # type: ignore[arg-type]


def test_config_construction_validates() -> None:
    with pytest.raises(ValueError, match=re.escape("mcdropout.d_ff must be positive, got 0")):
        models.MCDropoutConfig(d_ff=0)
