"""Data errors, the data spec and the loaded data set."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BUILTIN_DATASETS",
    "FILE_SUFFIXES",
    "LABEL_RULES",
    "DataError",
    "DataOptionError",
    "DataSpec",
    "Dataset",
    "SplitArrays",
]

BUILTIN_DATASETS = ("watch", "epf")
FILE_SUFFIXES = (".npz", ".csv", ".parquet")
LABEL_RULES = ("last", "any")
SPLIT_NAMES = ("train", "val", "test")

# Fractions are typed by people ("0.7,0.15,0.15"), so their float sum may be off by a few ulps.
SPLIT_SUM_TOLERANCE = 1e-6

# Keys that a study or preset records next to the spec fields. They describe the loaded
# data rather than choose it, so `DataSpec.from_dict` skips them.
RECORD_ONLY_KEYS = ("num_features", "seq_len", "fingerprint")


class DataError(ValueError):
    """Data that cannot be loaded or split; the message names the file or value and the fix."""


class DataOptionError(DataError):
    """A data option value that is invalid on its own, before any data is read.

    The CLI exits with status 2 (usage error) for this class and 1 for other DataErrors.
    """


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Which data to load, how to window it and how to split its sessions.

    ``name`` is ``watch``, ``epf`` or the path of a ``.npz``, ``.csv`` or ``.parquet`` file.
    When the three session lists are given they replace the seeded ``split`` fractions.
    ``positive_class`` picks the exercise that is label 1 in ``watch`` (default ``FEL``).
    Construction validates every field and raises DataOptionError on the first bad one.
    """

    name: str
    window: int | None = None
    stride: int | None = None
    label_rule: str = "last"
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    train_sessions: tuple[str, ...] | None = None
    val_sessions: tuple[str, ...] | None = None
    test_sessions: tuple[str, ...] | None = None
    split_seed: int = 0
    max_train_sessions: int | None = None
    positive_class: str | None = None

    def __post_init__(self) -> None:
        # Accept lists (from JSON or YAML) but store tuples, so the spec stays hashable.
        object.__setattr__(self, "split", _as_split(self.split))
        for field in ("train_sessions", "val_sessions", "test_sessions"):
            sessions = getattr(self, field)
            if sessions is not None:
                object.__setattr__(self, field, _as_session_tuple(field, sessions))
        self._validate()

    @property
    def kind(self) -> str:
        """``watch``, ``epf``, ``npz`` or ``table``."""
        if self.name in BUILTIN_DATASETS:
            return self.name
        if Path(self.name).suffix.lower() == ".npz":
            return "npz"
        return "table"

    @property
    def has_session_lists(self) -> bool:
        return self.train_sessions is not None

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as plain JSON and YAML types (lists in place of tuples)."""
        mapping = dataclasses.asdict(self)
        mapping["split"] = list(self.split)
        for field in ("train_sessions", "val_sessions", "test_sessions"):
            if mapping[field] is not None:
                mapping[field] = list(mapping[field])
        return mapping

    @classmethod
    def from_dict(cls, mapping: dict[str, Any]) -> DataSpec:
        """Build a spec from ``to_dict`` output, skipping the keys in RECORD_ONLY_KEYS."""
        if not isinstance(mapping, dict):
            raise DataError(
                f"data spec must be a mapping of field names to values, "
                f"got {type(mapping).__name__}"
            )
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - known - set(RECORD_ONLY_KEYS))
        if unknown:
            raise DataError(
                f"unknown data spec field(s) {', '.join(unknown)}; "
                f"valid fields are {', '.join(sorted(known))}"
            )
        if "name" not in mapping:
            raise DataError("data spec has no 'name'; set it to watch, epf or a data file path")
        return cls(**{key: value for key, value in mapping.items() if key in known})

    def _validate(self) -> None:
        self._validate_name()
        self._validate_windowing()
        self._validate_split()

    def _validate_name(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise DataOptionError(
                f"data name must be watch, epf or a file path, got {self.name!r}"
            )
        if self.name in BUILTIN_DATASETS:
            return
        suffix = Path(self.name).suffix.lower()
        if suffix not in FILE_SUFFIXES:
            raise DataOptionError(
                f"unknown data set {self.name!r}: use a built-in data set "
                f"({', '.join(BUILTIN_DATASETS)}) or the path of a .npz, .csv or .parquet file"
            )

    def _validate_windowing(self) -> None:
        for field in ("window", "stride", "max_train_sessions"):
            value = getattr(self, field)
            if value is not None and (not _is_int(value) or value < 1):
                raise DataOptionError(f"{field} must be a positive integer, got {value!r}")

        if self.label_rule not in LABEL_RULES:
            raise DataOptionError(
                f"label_rule must be one of {', '.join(LABEL_RULES)}, got {self.label_rule!r}"
            )
        if self.label_rule != "last" and self.kind != "table":
            raise DataOptionError(
                f"--label-rule {self.label_rule} applies to CSV and Parquet tables only; "
                f"{self.name} has one label per window already, so drop the option"
            )
        if self.kind == "npz" and self.stride is not None:
            raise DataOptionError(
                f"--stride does not apply to {self.name}: an .npz file contains finished "
                f"windows, so drop the option"
            )
        if self.positive_class is not None and self.kind != "watch":
            raise DataOptionError(
                f"positive_class applies to the watch data set only, got "
                f"{self.positive_class!r} for {self.name}"
            )

    def _validate_split(self) -> None:
        if not _is_int(self.split_seed) or self.split_seed < 0:
            raise DataOptionError(
                f"split_seed must be a non-negative integer, got {self.split_seed!r}"
            )

        lists = (self.train_sessions, self.val_sessions, self.test_sessions)
        given = [sessions is not None for sessions in lists]
        if any(given) and not all(given):
            raise DataOptionError(
                "session lists must be given for all of train, val and test "
                "(--train-sessions, --val-sessions, --test-sessions) or for none"
            )
        if all(given):
            _check_disjoint(dict(zip(SPLIT_NAMES, lists)))  # type: ignore[arg-type]


def _as_split(split: object) -> tuple[float, float, float]:
    if isinstance(split, str) or not isinstance(split, (tuple, list)) or len(split) != 3:
        raise DataOptionError(
            f"split must be three fractions TRAIN,VAL,TEST such as 0.6,0.2,0.2, got {split!r}"
        )
    fractions = []
    for value in split:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
            raise DataOptionError(f"split fractions must be numbers, got {split!r}")
        fractions.append(float(value))
    for name, value in zip(SPLIT_NAMES, fractions):
        # `not value > 0` also rejects NaN.
        if not value > 0 or not math.isfinite(value):
            raise DataOptionError(
                f"the {name} split fraction must be above 0, got {value} in "
                f"{','.join(str(f) for f in fractions)}; every split needs sessions"
            )
    total = sum(fractions)
    if abs(total - 1.0) > SPLIT_SUM_TOLERANCE:
        raise DataOptionError(
            f"split fractions {','.join(str(f) for f in fractions)} sum to {total:g}, "
            f"not 1; use fractions such as 0.6,0.2,0.2"
        )
    return (fractions[0], fractions[1], fractions[2])


def _as_session_tuple(field: str, sessions: object) -> tuple[str, ...]:
    if isinstance(sessions, str) or not isinstance(sessions, (tuple, list)):
        raise DataOptionError(f"{field} must be a list of session ids, got {sessions!r}")
    if not sessions:
        raise DataOptionError(f"{field} is empty; list at least one session id")
    return tuple(str(session) for session in sessions)


def _check_disjoint(lists: dict[str, tuple[str, ...]]) -> None:
    """Raise DataError naming the first session that two split lists share."""
    names = list(lists)
    for first_index, first in enumerate(names):
        for second in names[first_index + 1 :]:
            shared = sorted(set(lists[first]) & set(lists[second]))
            if shared:
                raise DataError(
                    f"session(s) {_preview(shared)} appear in both the {first} and the "
                    f"{second} session lists; a session may belong to one split only"
                )


def _preview(items: list[str], limit: int = 5) -> str:
    """Join the first `limit` items for a message, noting how many were left out."""
    shown = ", ".join(repr(item) for item in items[:limit])
    if len(items) > limit:
        shown += f" and {len(items) - limit} more"
    return shown


@dataclasses.dataclass
class SplitArrays:
    """The windows of one split."""

    X: np.ndarray  # float32 [N, T, F], normalised with the train split's statistics
    y: np.ndarray  # int64 [N] in {0, 1}
    session: np.ndarray  # str [N], the session id of each window

    @property
    def num_windows(self) -> int:
        return int(self.y.shape[0])

    @property
    def num_sessions(self) -> int:
        return int(np.unique(self.session).size)

    @property
    def num_positives(self) -> int:
        return int(self.y.sum())

    @property
    def positive_rate(self) -> float:
        return self.num_positives / self.num_windows if self.num_windows else 0.0


@dataclasses.dataclass
class Dataset:
    """Windows split by session into train, validation and test, ready for training.

    ``fingerprint`` is the sha256 hex digest of the un-normalised windows, labels and
    session ids of each split, so it changes with the data, the windowing and the split.
    ``feature_mean`` and ``feature_std`` are the train statistics used for normalisation.
    """

    spec: DataSpec
    train: SplitArrays
    val: SplitArrays
    test: SplitArrays
    feature_names: list[str]
    fingerprint: str
    feature_mean: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    feature_std: np.ndarray = dataclasses.field(default_factory=lambda: np.ones(0))
    label_description: str = ""

    @property
    def num_features(self) -> int:
        return int(self.train.X.shape[2])

    @property
    def seq_len(self) -> int:
        return int(self.train.X.shape[1])

    def splits(self) -> dict[str, SplitArrays]:
        """Return the splits by name: train, val, test."""
        return {"train": self.train, "val": self.val, "test": self.test}

    def to_record(self) -> dict[str, Any]:
        """Return the spec fields plus num_features, seq_len and fingerprint, as plain types."""
        record = self.spec.to_dict()
        record.update(
            num_features=self.num_features, seq_len=self.seq_len, fingerprint=self.fingerprint
        )
        return record

    def describe(self) -> str:
        """Format the summary that `archsweep data describe` prints."""
        lines = [
            f"data         {self.spec.name}",
            f"window       {self.seq_len} steps",
            f"features     {self.num_features}: {', '.join(self.feature_names)}",
        ]
        if self.label_description:
            lines.append(f"label        {self.label_description}")
        lines.append(f"fingerprint  {self.fingerprint}")
        lines.append("")

        header = ("split", "windows", "sessions", "positives", "positive rate")
        rows = [
            (name, arrays.num_windows, arrays.num_sessions, arrays.num_positives,
             arrays.positive_rate)
            for name, arrays in self.splits().items()
        ]
        total_windows = sum(row[1] for row in rows)
        total_positives = sum(row[3] for row in rows)
        rows.append((
            "total",
            total_windows,
            sum(row[2] for row in rows),
            total_positives,
            total_positives / total_windows if total_windows else 0.0,
        ))

        lines.append(
            f"{header[0]:<6} {header[1]:>8} {header[2]:>9} {header[3]:>10} {header[4]:>14}"
        )
        for name, windows, sessions, positives, rate in rows:
            lines.append(
                f"{name:<6} {windows:>8} {sessions:>9} {positives:>10} {rate:>14.1%}"
            )
        return "\n".join(lines)
