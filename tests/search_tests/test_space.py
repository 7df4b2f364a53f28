"""Search space files: parsing, validation messages, sampling and the shipped default."""

from __future__ import annotations

import itertools
from pathlib import Path

import optuna
import pytest

import models
from search.engine import check_space_against_models
from search.space import (
    ARCHITECTURES,
    SpaceError,
    default_space_path,
    load_space,
    parse_space,
)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_default_space_covers_every_architecture() -> None:
    spaces = load_space()

    assert set(spaces) == set(ARCHITECTURES)
    assert set(models.ARCHITECTURES) == set(ARCHITECTURES)
    for architecture, space in spaces.items():
        assert "d_model" in space.params, architecture
        assert "num_layers" in space.params, architecture
        assert "dropout" in space.params, architecture


@pytest.mark.parametrize("architecture", [a for a in ARCHITECTURES if a in models.CONFIG_CLASSES])
def test_default_space_every_combination_builds_config(architecture: str) -> None:
    space = load_space()[architecture]

    check_space_against_models(space)


@pytest.mark.parametrize(
    ("architecture", "expected"),
    [
        (
            "transformer",
            {"d_model": 128, "num_heads": 8, "d_ff": 512, "num_layers": 3, "dropout": 0.1},
        ),
        ("tft", {"d_model": 96, "num_heads": 8, "d_ff": 384, "num_layers": 2, "dropout": 0.1}),
        (
            "bayesian",
            {"d_model": 96, "num_heads": 8, "d_ff": 384, "num_layers": 2, "dropout": 0.05},
        ),
        (
            "mcdropout",
            {"d_model": 128, "num_heads": 8, "d_ff": 512, "num_layers": 2, "dropout": 0.2},
        ),
    ],
)
def test_default_space_contains_sizes_in_use(architecture: str, expected: dict) -> None:
    space = load_space()[architecture]
    values = {
        "d_model": expected["d_model"],
        "num_heads": expected["num_heads"],
        "d_ff_factor": expected["d_ff"] // expected["d_model"],
        "num_layers": expected["num_layers"],
        "dropout": expected["dropout"],
    }

    for key, value in values.items():
        possible = space.params[key].possible_values()
        assert possible is not None
        assert any(abs(value - option) < 1e-9 for option in possible), (key, value, possible)
    assert space.model_fields(values)["d_ff"] == expected["d_ff"]


def test_space_every_d_model_divisible_by_every_head_count() -> None:
    for architecture, space in load_space().items():
        if "num_heads" not in space.params:
            continue
        heads = space.params["num_heads"].possible_values()
        d_models = space.params["d_model"].possible_values()
        for d_model, num_heads in itertools.product(d_models, heads):
            assert d_model % num_heads == 0, (architecture, d_model, num_heads)


def test_space_sampling_in_study_uses_fixed_distributions() -> None:
    space = load_space()["transformer"]
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))

    samples = []
    for _ in range(20):
        trial = study.ask()
        values = space.sample(trial)
        samples.append(values)
        study.tell(trial, 0.0)

    for values in samples:
        assert values["d_model"] % 32 == 0
        assert values["d_model"] % values["num_heads"] == 0
        assert 0.0 <= values["dropout"] <= 0.4
        assert abs(values["dropout"] / 0.05 - round(values["dropout"] / 0.05)) < 1e-9
        assert 1e-4 <= values["lr"] <= 3e-3
        models.config_from_dict("transformer", space.model_fields(values))
    assert len({v["d_model"] for v in samples}) > 1


def test_space_user_file_replaces_named_architectures(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "transformer:\n"
        "  d_model: {choices: [64, 128]}\n"
        "  num_heads: 4\n"
        "  weight_decay: {low: 1.0e-6, high: 1e-3, log: true}\n",
    )

    spaces = load_space(path)

    assert spaces["transformer"].searched_keys() == ["d_model", "weight_decay"]
    assert spaces["transformer"].params["num_heads"].value == 4
    assert spaces["transformer"].params["weight_decay"].low == pytest.approx(1e-6)
    assert spaces["transformer"].params["weight_decay"].high == pytest.approx(1e-3)
    assert spaces["tft"].to_dict() == load_space()["tft"].to_dict()


def test_space_round_trips_through_to_dict() -> None:
    spaces = load_space()
    mapping = {architecture: space.to_dict() for architecture, space in spaces.items()}

    again = parse_space(mapping)

    for architecture in spaces:
        assert again[architecture].to_dict() == spaces[architecture].to_dict()


def test_space_dropout_without_step_gets_default_step() -> None:
    spaces = parse_space({"transformer": {"dropout": {"low": 0.0, "high": 0.3}}})

    assert spaces["transformer"].params["dropout"].step == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (
            "transformer:\n  d_model: {low: 256, high: 32, step: 32}\n",
            ["transformer.d_model", "low (256)", "high (32)", "swap"],
        ),
        (
            "transformer:\n  dropout: {low: 0.0, high: 1.0}\n",
            ["transformer.dropout", "[0, 1)", "1.0"],
        ),
        ("transformer:\n  dropout: 1.5\n", ["transformer.dropout", "[0, 1)", "1.5"]),
        (
            "transformer:\n  num_heads: {choices: []}\n",
            ["transformer.num_heads", "non-empty list", "choices: [1, 2, 4]"],
        ),
        (
            "transformer:\n  d_state: {choices: [8, 16]}\n",
            ["transformer", "unknown key 'd_state'", "d_model"],
        ),
        ("lstm:\n  d_model: 64\n", ["unknown architecture 'lstm'", "transformer"]),
        (
            (
                "transformer:\n"
                "  d_model: {low: 32, high: 96, step: 32}\n"
                "  num_heads: {choices: [1, 3]}\n"
            ),
            ["d_model 32", "num_heads 3", "multiple of 3"],
        ),
        (
            "transformer:\n  d_model: {low: 32, high: 100, step: 32}\n",
            ["not a multiple of step", "set high to 96"],
        ),
        ("transformer:\n  lr: {low: 0.0, high: 0.01, log: true}\n", ["transformer.lr", "low > 0"]),
        ("transformer:\n  num_layers: {low: 1, high: 4.5}\n", ["num_layers takes integers", "4.5"]),
        ("transformer:\n  d_model: {low: 32}\n", ["transformer.d_model", "missing high"]),
        ("transformer:\n  d_model: {low: 32, high: 64, steps: 32}\n", ["unknown field(s) steps"]),
        ("- transformer\n", ["must map architecture names"]),
    ],
)
def test_space_invalid_file_raises_space_error(
    tmp_path: Path, text: str, fragments: list[str]
) -> None:
    path = _write(tmp_path, text)

    with pytest.raises(SpaceError) as raised:
        load_space(path)

    message = str(raised.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message


def test_space_missing_file_raises_space_error(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match="not found"):
        load_space(tmp_path / "missing.yaml")


def test_space_invalid_yaml_raises_space_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "transformer: {d_model: [\n")

    with pytest.raises(SpaceError, match="not valid YAML"):
        load_space(path)


def test_space_error_is_value_error() -> None:
    assert issubclass(SpaceError, ValueError)


def test_default_space_path_is_package_data() -> None:
    path = default_space_path()

    assert path.name == "default.yaml"
    assert path.is_file()
