"""Search spaces: which model sizes and training rates a study samples, per architecture.

A space file is YAML with one mapping per architecture. Each key is a model config
field (or one of the derived keys below) and its value is one of:

- ``{low: L, high: H}`` with optional ``step`` and ``log``: an integer range when
  ``low``, ``high`` and ``step`` are integers, a float range otherwise;
- ``{choices: [A, B, ...]}``: a categorical choice;
- a plain scalar: a fixed value that is not searched.

Derived keys: ``d_ff_factor`` sets ``d_ff = d_ff_factor * d_model`` (attention models),
``lr`` and ``weight_decay`` set the optimiser's rates for the trial instead of a
config field. A key left out keeps the config's default.

Every configuration the sampler can produce is valid, so no trial is rejected after
sampling. Optuna fixes a parameter's distribution per name for a whole study, so
``d_model`` and ``num_heads`` cannot depend on each other; instead the file must
make every ``d_model`` value divisible by every ``num_heads`` choice (for example
``d_model`` in multiples of 32 and heads in {1, 2, 4, 8}). ``load_space`` checks
this and rejects the file otherwise. Sampling ``d_model`` directly keeps it an
ordered integer for TPE, which a ``head_dim * num_heads`` product would not be.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import optuna
import yaml

__all__ = [
    "ARCHITECTURES",
    "ArchitectureSpace",
    "ParamSpec",
    "SpaceError",
    "default_space_path",
    "load_space",
    "parse_space",
]

# The architecture names of the public contract; models.ARCHITECTURES lists the same.
ARCHITECTURES: tuple[str, ...] = ("transformer", "tft", "bayesian", "mcdropout", "mamba", "xlstm")

_ATTENTION_KEYS = ("d_model", "num_heads", "d_ff_factor", "num_layers", "dropout")
_TRAINING_KEYS = ("lr", "weight_decay")

# Keys each architecture's space may contain, besides the training keys.
_MODEL_KEYS: dict[str, tuple[str, ...]] = {
    "transformer": _ATTENTION_KEYS,
    "tft": _ATTENTION_KEYS,
    "bayesian": _ATTENTION_KEYS,
    "mcdropout": _ATTENTION_KEYS,
    "mamba": ("d_model", "num_layers", "dropout", "d_state", "expand"),
    "xlstm": ("d_model", "num_layers", "dropout", "num_heads", "proj_factor"),
}

# Keys whose values must be positive integers; the rest are positive floats except
# dropout ([0, 1)) and weight_decay (>= 0).
_INTEGER_KEYS = frozenset(
    {"d_model", "num_heads", "d_ff_factor", "num_layers", "d_state", "expand", "proj_factor"}
)

# Dropout differences below this change the fitted model less than the epoch-to-epoch
# noise of F1, so a dropout range without a step is sampled on this grid.
DEFAULT_DROPOUT_STEP = 0.05

# Decimal places of float config fields built from sampled values.
_FIELD_DECIMALS = 10

# Tolerance when checking that a float range is a whole number of steps.
_STEP_TOLERANCE = 1e-9


class SpaceError(ValueError):
    """A search space file or mapping is invalid; the message names the key and the fix."""


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One searched (or fixed) value: its kind and bounds.

    ``kind`` is ``"int"``, ``"float"``, ``"categorical"`` or ``"fixed"``.
    """

    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    value: Any = None

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        """Sample this parameter in ``trial`` under ``name`` (a fixed value is returned as is)."""
        if self.kind == "int":
            assert self.low is not None and self.high is not None
            return trial.suggest_int(
                name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        if self.kind == "float":
            assert self.low is not None and self.high is not None
            return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)
        if self.kind == "categorical":
            assert self.choices is not None
            return trial.suggest_categorical(name, list(self.choices))
        return self.value

    def possible_values(self) -> list[Any] | None:
        """List every value this parameter can take, or None for a continuous float range."""
        if self.kind == "fixed":
            return [self.value]
        if self.kind == "categorical":
            return list(self.choices or ())
        if self.kind == "int":
            assert self.low is not None and self.high is not None
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is not None:
            assert self.low is not None and self.high is not None
            count = round((self.high - self.low) / self.step)
            return [round(self.low + index * self.step, 10) for index in range(count + 1)]
        return None

    def bounds(self) -> tuple[float, float]:
        """Return the smallest and largest value (categorical and fixed values must be numbers)."""
        if self.kind in ("int", "float"):
            assert self.low is not None and self.high is not None
            return self.low, self.high
        values = self.possible_values() or []
        return min(values), max(values)

    def to_dict(self) -> dict[str, Any]:
        """Return the plain-type form that study attributes and YAML store."""
        if self.kind == "fixed":
            return {"value": self.value}
        if self.kind == "categorical":
            return {"choices": list(self.choices or ())}
        result: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.step is not None:
            result["step"] = self.step
        if self.log:
            result["log"] = True
        return result


@dataclasses.dataclass(frozen=True)
class ArchitectureSpace:
    """The searched parameters of one architecture, keyed as in the space file."""

    architecture: str
    params: dict[str, ParamSpec]

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """Sample every key in ``trial``; fixed keys appear with their value."""
        return {name: spec.suggest(trial, name) for name, spec in self.params.items()}

    def model_fields(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Translate sampled ``values`` into config fields (``d_ff_factor`` becomes ``d_ff``).

        Fields the space does not set are left out, so the config's defaults apply.
        """
        fields = {
            name: value
            for name, value in values.items()
            if name not in _TRAINING_KEYS and name != "d_ff_factor"
        }
        for name, value in fields.items():
            if isinstance(value, float):
                # Optuna's step grid yields values like 0.35000000000000003.
                fields[name] = round(value, _FIELD_DECIMALS)
        if "d_ff_factor" in values:
            if "d_model" not in values:
                raise SpaceError(
                    f"{self.architecture}: d_ff_factor needs d_model in the same space; "
                    "add d_model (a range or a fixed value)"
                )
            fields["d_ff"] = int(values["d_ff_factor"]) * int(values["d_model"])
        return fields

    def training_overrides(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Return the sampled optimiser settings (``lr``, ``weight_decay``) among ``values``."""
        return {name: values[name] for name in _TRAINING_KEYS if name in values}

    def searched_keys(self) -> list[str]:
        """Return the keys that are sampled, in file order (fixed keys excluded)."""
        return [name for name, spec in self.params.items() if spec.kind != "fixed"]

    def to_dict(self) -> dict[str, Any]:
        """Return the plain-type form that study attributes store and ``parse_space`` reads."""
        return {name: spec.to_dict() for name, spec in self.params.items()}


def default_space_path() -> Path:
    """Return the path of the space file shipped with archsweep."""
    return Path(str(resources.files("search").joinpath("spaces/default.yaml")))


def load_space(path: str | Path | None = None) -> dict[str, ArchitectureSpace]:
    """Read a space file and return one space per architecture.

    With ``path`` None the shipped default is read. A user file replaces the default
    space of each architecture it names; architectures it leaves out keep the default.
    Raises SpaceError naming the file, the key, the value and the fix.
    """
    default_path = default_space_path()
    spaces = _read_space_file(default_path)
    if path is None or Path(path).resolve() == default_path.resolve():
        return spaces

    spaces.update(_read_space_file(Path(path)))
    return spaces


def _read_space_file(path: Path) -> dict[str, ArchitectureSpace]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpaceError(f"space file {path} not found; pass an existing YAML file") from None
    except OSError as error:
        raise SpaceError(f"space file {path} could not be read: {error}") from error

    try:
        mapping = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SpaceError(f"space file {path} is not valid YAML: {error}") from error

    return parse_space(mapping, source=str(path))


def parse_space(mapping: Any, source: str = "<space>") -> dict[str, ArchitectureSpace]:
    """Validate a space mapping (as read from YAML or study attributes) and build the spaces.

    ``source`` names the file in error messages.
    """
    if not isinstance(mapping, dict) or not mapping:
        raise SpaceError(
            f"{source}: a space file must map architecture names to their parameters, "
            f"got {type(mapping).__name__}; start from {default_space_path()}"
        )

    spaces: dict[str, ArchitectureSpace] = {}
    for architecture, params in mapping.items():
        if architecture not in ARCHITECTURES:
            raise SpaceError(
                f"{source}: unknown architecture {architecture!r}; valid architectures are "
                f"{', '.join(ARCHITECTURES)}"
            )
        spaces[architecture] = _parse_architecture(architecture, params, source)
    return spaces


def _parse_architecture(architecture: str, params: Any, source: str) -> ArchitectureSpace:
    where = f"{source}: {architecture}"
    if not isinstance(params, dict):
        raise SpaceError(
            f"{where} must be a mapping of parameter names to ranges, got {type(params).__name__}"
        )

    allowed = _MODEL_KEYS[architecture] + _TRAINING_KEYS
    specs: dict[str, ParamSpec] = {}
    for key, raw in params.items():
        if key not in allowed:
            raise SpaceError(
                f"{where}: unknown key {key!r}; valid keys for {architecture} are "
                f"{', '.join(allowed)}"
            )
        specs[key] = _parse_param(f"{where}.{key}", key, raw)

    _check_heads_divide_d_model(where, specs)
    return ArchitectureSpace(architecture=architecture, params=specs)


def _parse_param(where: str, key: str, raw: Any) -> ParamSpec:
    if not isinstance(raw, dict):
        spec = ParamSpec(kind="fixed", value=_check_value(where, key, raw))
        return spec

    unknown = sorted(set(raw) - {"low", "high", "step", "log", "choices", "value"})
    if unknown:
        raise SpaceError(
            f"{where}: unknown field(s) {', '.join(unknown)}; use low/high (with optional "
            "step and log), choices, or value"
        )

    if "value" in raw:
        if len(raw) > 1:
            raise SpaceError(f"{where}: value fixes the parameter, so it takes no other field")
        return ParamSpec(kind="fixed", value=_check_value(where, key, raw["value"]))

    if "choices" in raw:
        return _parse_choices(where, key, raw)
    return _parse_range(where, key, raw)


def _parse_choices(where: str, key: str, raw: dict[str, Any]) -> ParamSpec:
    if len(raw) > 1:
        raise SpaceError(f"{where}: choices takes no low, high, step or log; remove them")

    choices = raw["choices"]
    if not isinstance(choices, list) or not choices:
        raise SpaceError(
            f"{where}: choices must be a non-empty list, got {choices!r}; "
            "list at least one value, e.g. choices: [1, 2, 4]"
        )
    values = [_check_value(where, key, choice) for choice in choices]
    if len(set(values)) != len(values):
        raise SpaceError(f"{where}: choices {choices!r} repeat a value; list each value once")
    return ParamSpec(kind="categorical", choices=tuple(values))


def _parse_range(where: str, key: str, raw: dict[str, Any]) -> ParamSpec:
    for field in ("low", "high"):
        if field not in raw:
            raise SpaceError(f"{where}: missing {field}; a range needs both low and high")

    low = _number(where, "low", raw["low"])
    high = _number(where, "high", raw["high"])
    step = _number(where, "step", raw["step"]) if raw.get("step") is not None else None
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"{where}: log must be true or false, got {log!r}")

    if low > high:
        raise SpaceError(f"{where}: low ({low}) is greater than high ({high}); swap them")
    if step is not None and step <= 0:
        raise SpaceError(f"{where}: step must be positive, got {step}")
    if log and step is not None and not (key in _INTEGER_KEYS and step == 1):
        raise SpaceError(f"{where}: a log range takes no step (got step {step}); remove one")
    if log and low <= 0:
        raise SpaceError(f"{where}: a log range needs low > 0, got low {low}; raise low")

    if key in _INTEGER_KEYS:
        for field, number in (("low", low), ("high", high), ("step", step)):
            if number is not None and number != int(number):
                raise SpaceError(f"{where}: {key} takes integers, got {field} {number}")
        low, high = int(low), int(high)
        step = int(step) if step is not None else None
        if (high - low) % (step or 1) != 0:
            raise SpaceError(
                f"{where}: high - low ({high - low}) is not a multiple of step ({step}); "
                f"set high to {high - (high - low) % (step or 1)}"
            )
        kind = "int"
    else:
        low, high = float(low), float(high)
        if step is None and key == "dropout":
            step = DEFAULT_DROPOUT_STEP
        if step is not None:
            step = float(step)
            steps = (high - low) / step
            if abs(steps - round(steps)) > _STEP_TOLERANCE * max(1.0, steps):
                raise SpaceError(
                    f"{where}: high - low ({high - low:g}) is not a multiple of step ({step:g}); "
                    f"set high to {low + math.floor(steps) * step:g}"
                )
        kind = "float"

    spec = ParamSpec(kind=kind, low=low, high=high, step=step, log=log)
    for bound in (low, high):
        _check_value(where, key, bound)
    return spec


def _number(where: str, field: str, raw: Any) -> float:
    # YAML 1.1 reads 1e-4 (no dot) as a string, so numeric strings are accepted.
    if isinstance(raw, str):
        try:
            return float(raw)
        except ValueError:
            pass
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise SpaceError(f"{where}: {field} must be a number, got {raw!r}")
    if not math.isfinite(raw):
        raise SpaceError(f"{where}: {field} must be finite, got {raw!r}")
    return raw


def _check_value(where: str, key: str, raw: Any) -> Any:
    """Check one possible value of ``key`` and return it as an int or float."""
    value = _number(where, "value", raw)

    if key in _INTEGER_KEYS:
        if value != int(value):
            raise SpaceError(f"{where}: {key} takes integers, got {raw!r}")
        value = int(value)
        if value <= 0:
            raise SpaceError(f"{where}: {key} must be positive, got {value}")
        return value

    value = float(value)
    if key == "dropout" and not 0.0 <= value < 1.0:
        raise SpaceError(
            f"{where}: dropout must lie in [0, 1), got {value}; use e.g. low: 0.0, high: 0.5"
        )
    if key == "weight_decay" and value < 0:
        raise SpaceError(f"{where}: weight_decay must be >= 0, got {value}")
    if key not in ("dropout", "weight_decay") and value <= 0:
        raise SpaceError(f"{where}: {key} must be positive, got {value}")
    return value


def _check_heads_divide_d_model(where: str, specs: dict[str, ParamSpec]) -> None:
    if "num_heads" not in specs or "d_model" not in specs:
        return

    head_counts = specs["num_heads"].possible_values() or []
    for d_model in specs["d_model"].possible_values() or []:
        for num_heads in head_counts:
            if d_model % num_heads == 0:
                continue
            multiple = math.lcm(*head_counts)
            raise SpaceError(
                f"{where}: d_model {d_model} is not divisible by num_heads {num_heads}, so "
                "that pair would be an invalid model; make every d_model value a multiple of "
                f"{multiple} (e.g. step: {multiple} with low a multiple of {multiple}) or drop "
                "the head counts that do not divide it"
            )
