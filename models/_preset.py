"""Preset files: validation, and building a model (with weights) from one.

A preset is a YAML file of format ``archsweep-preset/1`` that describes one trained
model: its architecture, config fields, the data and training settings it was trained
with, its metrics and optionally a safetensors weights file next to it.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, TypeGuard

import yaml  # type: ignore[import-untyped]
from safetensors import SafetensorError
from safetensors.torch import load_file

from ._base import SequenceClassifier
from ._registry import ARCHITECTURES, build_model, config_from_dict

__all__ = ["PRESET_FORMAT", "PresetError", "from_preset", "load_preset", "validate_preset"]

_logger = logging.getLogger(__name__)

PRESET_FORMAT = "archsweep-preset/1"

_REQUIRED_KEYS = ("format", "architecture", "model", "data")
_OPTIONAL_KEYS = ("training", "metrics", "num_parameters", "source", "weights")

# Training fields the preset format defines, with the check each must pass. Other
# keys in `training` are allowed: the trainer may record more settings.
_TRAINING_FIELDS: dict[str, tuple[str, Any]] = {
    "lr": ("a positive number", lambda value: _is_number(value) and value > 0),
    "weight_decay": ("a non-negative number", lambda value: _is_number(value) and value >= 0),
    "label_smoothing": (
        "a number in [0, 1)",
        lambda value: _is_number(value) and 0 <= value < 1,
    ),
    "max_epochs": ("a positive integer", lambda value: _is_int(value) and value > 0),
    "patience": ("a positive integer", lambda value: _is_int(value) and value > 0),
    "batch_size": ("a positive integer", lambda value: _is_int(value) and value > 0),
    "seed": ("an integer", lambda value: _is_int(value)),
    "best_epoch": ("a non-negative integer", lambda value: _is_int(value) and value >= 0),
}


class PresetError(ValueError):
    """A preset file is missing, unreadable, invalid or does not match its weights.

    The message names the file, the field and how to fix it.
    """


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> TypeGuard[int | float]:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _require_mapping(preset: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    section = preset[key]
    if not isinstance(section, dict):
        raise PresetError(
            f"{source}: '{key}' must be a mapping of field names to values, "
            f"got {type(section).__name__} {section!r}"
        )
    return section


def _validate_header(preset: dict[str, Any], source: str) -> None:
    missing = [key for key in _REQUIRED_KEYS if key not in preset]
    if missing:
        raise PresetError(
            f"{source}: missing required field(s) {', '.join(missing)}; a preset needs "
            f"{', '.join(_REQUIRED_KEYS)}"
        )
    unknown = sorted(set(preset) - set(_REQUIRED_KEYS) - set(_OPTIONAL_KEYS))
    if unknown:
        raise PresetError(
            f"{source}: unknown field(s) {', '.join(map(str, unknown))}; valid fields are "
            f"{', '.join(_REQUIRED_KEYS + _OPTIONAL_KEYS)}"
        )

    preset_format = preset["format"]
    if preset_format != PRESET_FORMAT:
        raise PresetError(
            f"{source}: unsupported format {preset_format!r}; this archsweep reads "
            f"{PRESET_FORMAT!r}. Export the preset again with this version, or install "
            f"the archsweep version that wrote it"
        )

    architecture = preset["architecture"]
    if architecture not in ARCHITECTURES:
        raise PresetError(
            f"{source}: unknown architecture {architecture!r}; valid architectures are "
            f"{', '.join(ARCHITECTURES)}"
        )


def _validate_data(preset: dict[str, Any], source: str) -> None:
    data = _require_mapping(preset, "data", source)

    num_features = data.get("num_features")
    if not _is_int(num_features) or num_features <= 0:
        raise PresetError(
            f"{source}: data.num_features must be a positive integer (the number of input "
            f"features the model was trained on), got {num_features!r}"
        )

    if "window" not in data:
        raise PresetError(
            f"{source}: data.window is missing; set it to the window length T the model "
            f"was trained on (null for the data set's default)"
        )
    # `window` is null when the data set's default was used; `seq_len`, when recorded,
    # is the window length that default resolved to.
    for name in ("window", "seq_len"):
        value = data.get(name)
        if value is not None and (not _is_int(value) or value <= 0):
            raise PresetError(
                f"{source}: data.{name} must be a positive integer or null, got {value!r}"
            )


def _validate_training(preset: dict[str, Any], source: str) -> None:
    if "training" not in preset:
        return
    training = _require_mapping(preset, "training", source)
    for name, (rule, check) in _TRAINING_FIELDS.items():
        if name in training and not check(training[name]):
            raise PresetError(
                f"{source}: training.{name} must be {rule}, got {training[name]!r}"
            )


def _validate_optional(preset: dict[str, Any], source: str) -> None:
    if "metrics" in preset:
        metrics = _require_mapping(preset, "metrics", source)
        for name, value in metrics.items():
            if value is not None and not _is_number(value):
                raise PresetError(
                    f"{source}: metrics.{name} must be a finite number or null, got {value!r}"
                )

    if "source" in preset:
        _require_mapping(preset, "source", source)

    num_parameters = preset.get("num_parameters")
    if num_parameters is not None and (not _is_int(num_parameters) or num_parameters < 0):
        raise PresetError(
            f"{source}: num_parameters must be a non-negative integer, got {num_parameters!r}"
        )

    weights = preset.get("weights")
    if weights is not None and (not isinstance(weights, str) or not weights):
        raise PresetError(
            f"{source}: weights must be the file name of a safetensors file next to the "
            f"preset (or be left out), got {weights!r}"
        )


def validate_preset(preset: Any, source: str = "preset") -> None:
    """Raise PresetError naming the field and the fix unless ``preset`` is a valid preset.

    ``source`` names the preset in messages (usually its path). The model section is
    checked by building the architecture's config from it.
    """
    if not isinstance(preset, dict):
        raise PresetError(
            f"{source}: a preset must be a YAML mapping with the fields "
            f"{', '.join(_REQUIRED_KEYS)}, got {type(preset).__name__}"
        )

    _validate_header(preset, source)

    model = _require_mapping(preset, "model", source)
    try:
        config_from_dict(preset["architecture"], model)
    except ValueError as error:
        raise PresetError(f"{source}: invalid model section: {error}") from error

    _validate_data(preset, source)
    _validate_training(preset, source)
    _validate_optional(preset, source)


def load_preset(path: str | Path) -> dict[str, Any]:
    """Read and validate the preset file at ``path`` and return its mapping."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise PresetError(
            f"preset file {path} not found; check the path (presets are written by "
            f"`archsweep export --out DIR` as DIR/<architecture>.yaml)"
        ) from error
    except (OSError, UnicodeDecodeError) as error:
        raise PresetError(f"preset file {path} could not be read: {error}") from error

    try:
        preset = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise PresetError(f"preset file {path} is not valid YAML: {error}") from error

    validate_preset(preset, source=str(path))
    return preset


def _resolve_weights_path(preset_path: Path, weights: str) -> Path:
    folder = preset_path.parent.resolve()
    weights_path = (folder / weights).resolve()
    if not weights_path.is_relative_to(folder):
        raise PresetError(
            f"{preset_path}: weights {weights!r} points outside the preset's folder "
            f"{folder}; put the weights file next to the preset and give its file name"
        )
    if not weights_path.is_file():
        raise PresetError(
            f"{preset_path}: weights file {weights_path} not found; copy it next to the "
            f"preset, or remove the 'weights' field to build an untrained model"
        )
    return weights_path


def from_preset(path: str | Path) -> SequenceClassifier:
    """Build the model the preset at ``path`` describes, in eval mode, on the CPU.

    When the preset names a ``weights`` file (a safetensors file in the preset's
    folder), its tensors are loaded with strict key and shape checks. Otherwise the
    model keeps its fresh initialisation.
    """
    path = Path(path)
    preset = load_preset(path)
    architecture = preset["architecture"]
    data = preset["data"]
    seq_len = data["window"] if data["window"] is not None else data.get("seq_len")
    model = build_model(
        architecture, preset["model"], num_features=data["num_features"], seq_len=seq_len
    )

    num_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    recorded = preset.get("num_parameters")
    if recorded is not None and recorded != num_parameters:
        _logger.warning(
            "%s: num_parameters is %d but the model built from its model section has %d; "
            "the model fields were probably edited after export",
            path,
            recorded,
            num_parameters,
        )

    weights = preset.get("weights")
    if weights is not None:
        weights_path = _resolve_weights_path(path, weights)
        try:
            state = load_file(weights_path)
        except (SafetensorError, OSError) as error:
            raise PresetError(
                f"{path}: weights file {weights_path} is not a readable safetensors file: "
                f"{error}"
            ) from error
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise PresetError(
                f"{path}: weights file {weights_path} does not match the {architecture} "
                f"model the preset describes (model {preset['model']}, "
                f"num_features {data['num_features']}); export the preset and its weights "
                f"together again. Details: {error}"
            ) from error
        _logger.info("loaded %s weights from %s", architecture, weights_path)

    model.eval()
    return model
