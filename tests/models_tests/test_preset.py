"""Preset files: validation, from_preset with and without weights, and their errors."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml  # type: ignore[import-untyped]
from safetensors.torch import save_file

import models

from .conftest import NUM_FEATURES, REGISTERED, SEQ_LEN

SMALL_SIZES = {"d_model": 16, "num_heads": 2, "d_ff": 32, "num_layers": 1}


def _preset(architecture: str = "transformer", **overrides: Any) -> dict[str, Any]:
    model_fields = SMALL_SIZES if architecture in ("transformer", "tft", "bayesian",
                                                   "mcdropout") else {}
    preset: dict[str, Any] = {
        "format": "archsweep-preset/1",
        "architecture": architecture,
        "model": dict(model_fields),
        "training": {"lr": 0.001, "weight_decay": 1e-6, "label_smoothing": 0.0,
                     "max_epochs": 70, "patience": 16, "batch_size": 64, "seed": 0,
                     "best_epoch": 12},
        "data": {"name": "watch", "window": SEQ_LEN, "stride": None, "label_rule": "last",
                 "split": [0.6, 0.2, 0.2], "num_features": NUM_FEATURES,
                 "fingerprint": "0" * 64},
        "metrics": {"val_f1": 0.71, "train_f1": 0.9, "val_auprc": 0.66, "threshold": 0.5},
        "num_parameters": models.count_parameters(architecture, model_fields, NUM_FEATURES),
        "source": {"study": "demo/transformer", "trial": 3, "archsweep_version": "0.1.0",
                   "created": "2025-01-01T00:00:00+00:00"},
    }
    preset.update(overrides)
    return preset


def _write(folder: Path, preset: Any, name: str = "transformer.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(preset, sort_keys=False), encoding="utf-8")
    return path


def _save_weights(model: torch.nn.Module, path: Path) -> None:
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()}, path)


@pytest.mark.parametrize("architecture", REGISTERED)
def test_from_preset_without_weights_builds_described_model(
    architecture: str, tmp_path: Path
) -> None:
    preset = _preset(architecture)
    path = _write(tmp_path, preset, f"{architecture}.yaml")

    model = models.from_preset(path)

    assert type(model) is models.MODEL_CLASSES[architecture]
    assert model.config == models.config_from_dict(architecture, preset["model"])
    assert model.num_features == NUM_FEATURES
    assert model.seq_len == SEQ_LEN
    assert not model.training
    assert model(torch.randn(2, SEQ_LEN, NUM_FEATURES)).shape == (2,)


@pytest.mark.parametrize("architecture", REGISTERED)
def test_from_preset_loads_weights(architecture: str, tmp_path: Path) -> None:
    preset = _preset(architecture, weights=f"{architecture}.safetensors")
    torch.manual_seed(7)
    original = models.build_model(
        architecture, preset["model"], num_features=NUM_FEATURES, seq_len=SEQ_LEN
    ).eval()
    _save_weights(original, tmp_path / f"{architecture}.safetensors")
    path = _write(tmp_path, preset, f"{architecture}.yaml")
    x = torch.randn(3, SEQ_LEN, NUM_FEATURES)

    torch.manual_seed(99)  # a different initialisation, replaced by the loaded weights
    loaded = models.from_preset(path)

    for name, tensor in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    with torch.no_grad():
        assert torch.equal(loaded(x), original(x))


def test_load_preset_returns_mapping(tmp_path: Path) -> None:
    preset = _preset()
    path = _write(tmp_path, preset)

    assert models.load_preset(path) == preset


def test_load_preset_accepts_minimal_preset(tmp_path: Path) -> None:
    minimal = {
        "format": "archsweep-preset/1",
        "architecture": "tft",
        "model": {},
        "data": {"num_features": 3, "window": None},
    }
    path = _write(tmp_path, minimal, "tft.yaml")

    model = models.from_preset(path)

    assert model.config == models.TFTConfig()
    assert model.seq_len is None


def test_from_preset_takes_seq_len_for_default_window(tmp_path: Path) -> None:
    preset = _preset()
    preset["data"]["window"] = None
    preset["data"]["seq_len"] = 40

    model = models.from_preset(_write(tmp_path, preset))

    assert model.seq_len == 40


def test_bad_seq_len(tmp_path: Path) -> None:
    preset = _preset()
    preset["data"]["seq_len"] = -5

    _expect_error(tmp_path, preset, "data.seq_len must be a positive integer or null")


def test_from_preset_warns_on_stale_num_parameters(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _write(tmp_path, _preset(num_parameters=12))

    with caplog.at_level(logging.WARNING, logger="models"):
        models.from_preset(path)

    assert "num_parameters is 12" in caplog.text


def _expect_error(tmp_path: Path, preset: Any, *fragments: str) -> None:
    path = _write(tmp_path, preset)
    with pytest.raises(models.PresetError) as caught:
        models.from_preset(path)
    message = str(caught.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_preset_error_is_value_error() -> None:
    assert issubclass(models.PresetError, ValueError)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(models.PresetError, match="not found"):
        models.load_preset(tmp_path / "absent.yaml")


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("format: [unclosed\n", encoding="utf-8")

    with pytest.raises(models.PresetError, match="not valid YAML"):
        models.load_preset(path)


def test_not_a_mapping(tmp_path: Path) -> None:
    _expect_error(tmp_path, ["format", "architecture"], "must be a YAML mapping")


@pytest.mark.parametrize("field", ["format", "architecture", "model", "data"])
def test_missing_required_field(tmp_path: Path, field: str) -> None:
    preset = _preset()
    del preset[field]

    _expect_error(tmp_path, preset, f"missing required field(s) {field}")


def test_unknown_top_level_field(tmp_path: Path) -> None:
    _expect_error(tmp_path, _preset(wieghts="x.safetensors"), "unknown field(s) wieghts")


@pytest.mark.parametrize("value", ["archsweep-preset/2", "other/1", 1])
def test_unsupported_format(tmp_path: Path, value: Any) -> None:
    _expect_error(tmp_path, _preset(format=value), f"unsupported format {value!r}",
                  "'archsweep-preset/1'")


def test_unknown_architecture(tmp_path: Path) -> None:
    preset = _preset()
    preset["architecture"] = "gru"

    _expect_error(tmp_path, preset, "unknown architecture 'gru'", "transformer, tft")


def test_model_section_not_mapping(tmp_path: Path) -> None:
    _expect_error(tmp_path, _preset(model=[1, 2]), "'model' must be a mapping")


def test_model_section_invalid_value(tmp_path: Path) -> None:
    preset = _preset()
    preset["model"]["dropout"] = 1.5

    _expect_error(tmp_path, preset, "invalid model section", "transformer.dropout must lie in")


def test_model_section_unknown_field(tmp_path: Path) -> None:
    preset = _preset()
    preset["model"]["depth"] = 3

    _expect_error(tmp_path, preset, "unknown transformer config field(s) depth")


@pytest.mark.parametrize("value", [None, 0, -2, 2.5, "6", True])
def test_bad_num_features(tmp_path: Path, value: Any) -> None:
    preset = _preset()
    preset["data"]["num_features"] = value

    _expect_error(tmp_path, preset, "data.num_features must be a positive integer")


def test_missing_window(tmp_path: Path) -> None:
    preset = _preset()
    del preset["data"]["window"]

    _expect_error(tmp_path, preset, "data.window is missing")


@pytest.mark.parametrize("value", [0, "50", 12.5])
def test_bad_window(tmp_path: Path, value: Any) -> None:
    preset = _preset()
    preset["data"]["window"] = value

    _expect_error(tmp_path, preset, "data.window must be a positive integer or null")


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("lr", 0, "a positive number"),
        ("lr", "fast", "a positive number"),
        ("weight_decay", -1e-3, "a non-negative number"),
        ("label_smoothing", 1.0, "a number in [0, 1)"),
        ("max_epochs", 0, "a positive integer"),
        ("batch_size", 32.0, "a positive integer"),
        ("seed", None, "an integer"),
        ("best_epoch", -1, "a non-negative integer"),
    ],
)
def test_bad_training_field(tmp_path: Path, field: str, value: Any, rule: str) -> None:
    preset = _preset()
    preset["training"][field] = value

    _expect_error(tmp_path, preset, f"training.{field} must be {rule}")


def test_bad_metric(tmp_path: Path) -> None:
    preset = _preset()
    preset["metrics"]["val_f1"] = "high"

    _expect_error(tmp_path, preset, "metrics.val_f1 must be a finite number or null")


@pytest.mark.parametrize("value", [-1, 1.5, "many"])
def test_bad_num_parameters(tmp_path: Path, value: Any) -> None:
    _expect_error(tmp_path, _preset(num_parameters=value),
                  "num_parameters must be a non-negative integer")


@pytest.mark.parametrize("section", ["training", "metrics", "source", "data"])
def test_section_not_mapping(tmp_path: Path, section: str) -> None:
    _expect_error(tmp_path, _preset(**{section: "none"}), f"'{section}' must be a mapping")


@pytest.mark.parametrize("value", [3, ""])
def test_bad_weights_value(tmp_path: Path, value: Any) -> None:
    _expect_error(tmp_path, _preset(weights=value), "weights must be the file name")


def test_missing_weights_file(tmp_path: Path) -> None:
    _expect_error(tmp_path, _preset(weights="transformer.safetensors"),
                  "transformer.safetensors not found", "remove the 'weights' field")


@pytest.mark.parametrize("weights", ["../outside.safetensors", "/tmp/outside.safetensors"])
def test_weights_outside_preset_folder(tmp_path: Path, weights: str) -> None:
    folder = tmp_path / "presets"
    folder.mkdir()

    _expect_error(folder, _preset(weights=weights), "points outside the preset's folder")


def test_weights_in_subfolder(tmp_path: Path) -> None:
    preset = _preset(weights="weights/transformer.safetensors")
    model = models.build_model("transformer", preset["model"], num_features=NUM_FEATURES)
    (tmp_path / "weights").mkdir()
    _save_weights(model, tmp_path / "weights" / "transformer.safetensors")

    loaded = models.from_preset(_write(tmp_path, preset))

    assert torch.equal(loaded.state_dict()["head.weight"], model.state_dict()["head.weight"])


def test_unreadable_weights_file(tmp_path: Path) -> None:
    (tmp_path / "transformer.safetensors").write_bytes(b"not a safetensors file")

    _expect_error(tmp_path, _preset(weights="transformer.safetensors"),
                  "is not a readable safetensors file")


def test_weights_of_other_size(tmp_path: Path) -> None:
    preset = _preset(weights="transformer.safetensors")
    bigger = copy.deepcopy(preset["model"])
    bigger["d_model"] = 32
    model = models.build_model("transformer", bigger, num_features=NUM_FEATURES)
    _save_weights(model, tmp_path / "transformer.safetensors")

    _expect_error(tmp_path, preset, "does not match the transformer model",
                  "size mismatch")


def test_weights_of_other_architecture(tmp_path: Path) -> None:
    preset = _preset(weights="transformer.safetensors")
    model = models.build_model("mcdropout", preset["model"], num_features=NUM_FEATURES)
    _save_weights(model, tmp_path / "transformer.safetensors")

    _expect_error(tmp_path, preset, "does not match the transformer model",
                  "Missing key(s)")
