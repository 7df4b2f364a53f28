"""The data options shared by the CLI commands, and the DataSpec they build."""

from __future__ import annotations

import argparse
from pathlib import Path

from search.data._files import read_session_file
from search.data._spec import (
    BUILTIN_DATASETS,
    FILE_SUFFIXES,
    SPLIT_NAMES,
    DataError,
    DataOptionError,
    DataSpec,
    _check_disjoint,
)

__all__ = ["DATA_HELP", "add_data_arguments", "data_spec_from_args"]

DATA_HELP = (
    "built-in data set (watch: smartwatch exercises; epf: French and Belgian electricity "
    "prices, needs archsweep[epf]) or the path of a .npz file with arrays X [N, T, F], y [N] "
    "and session [N], or of a .csv/.parquet table with the columns session, order, label "
    "and numeric feature columns"
)


# Fields of a base spec that still apply when the options name another data set.
_PORTABLE_FIELDS = ("split", "split_seed", "max_train_sessions")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer of 0 or more, got {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer of 0 or more, got {value}")
    return value


def _split_fractions(text: str) -> tuple[float, ...]:
    """Parse TRAIN,VAL,TEST; DataSpec checks the range and the sum."""
    parts = text.split(",")
    try:
        fractions = tuple(float(part) for part in parts)
    except ValueError:
        fractions = ()
    if len(fractions) != 3:
        raise argparse.ArgumentTypeError(
            f"expected three comma-separated fractions TRAIN,VAL,TEST such as 0.6,0.2,0.2, "
            f"got {text!r}"
        )
    return fractions


def add_data_arguments(parser: argparse.ArgumentParser, *, include_data: bool = True) -> None:
    """Add the data options to `parser`; every default is None, meaning "not given".

    With ``include_data=False`` the caller adds its own ``data`` argument (for example the
    positional DATA of ``data describe``).
    """
    group = parser.add_argument_group("data options")
    if include_data:
        group.add_argument("--data", metavar="NAME|PATH", help=DATA_HELP)
    group.add_argument(
        "--window", type=_positive_int, metavar="T",
        help="window length in steps (watch: 25 Hz samples, default 50; epf: hours, default 24; "
        "required for tables; .npz files fix it)",
    )
    group.add_argument(
        "--stride", type=_positive_int, metavar="S",
        help="steps between window starts (default: half a window; epf: 1 hour)",
    )
    group.add_argument(
        "--label-rule", choices=["last", "any"],
        help="tables only: a window is positive when its last row is (last, the default) or "
        "when any of its rows is (any)",
    )
    group.add_argument(
        "--split", type=_split_fractions, metavar="TRAIN,VAL,TEST",
        help="fractions of sessions for train, validation and test (default 0.6,0.2,0.2)",
    )
    for name in SPLIT_NAMES:
        group.add_argument(
            f"--{name}-sessions", metavar="FILE",
            help=f"file with the {name} session ids, one per line "
            "(give all three lists in place of --split)",
        )
    group.add_argument(
        "--split-seed", type=_non_negative_int, metavar="SEED",
        help="seed of the random session split (default 0; epf assigns 4-week blocks of days)",
    )
    group.add_argument(
        "--max-train-sessions", type=_positive_int, metavar="N",
        help="keep only the first N train sessions, for small test and benchmark runs",
    )


def data_spec_from_args(args: argparse.Namespace, *, base: DataSpec | None = None) -> DataSpec:
    """Build a DataSpec from parsed data options; options given override `base`.

    Reads the session list files. Raises DataOptionError for invalid option values and
    DataError for unreadable or conflicting session list files.
    """
    fields = base.to_dict() if base is not None else {}

    name = getattr(args, "data", None)
    if name is not None:
        name = name if name in BUILTIN_DATASETS else _absolute_path(name)
        if base is not None and name != base.name:
            # Windowing, labels and session lists of another data set do not carry over.
            fields = {field: fields[field] for field in _PORTABLE_FIELDS}
        fields["name"] = name
    if "name" not in fields:
        raise DataOptionError(
            f"no data given; pass --data with {' or '.join(BUILTIN_DATASETS)} or a file path"
        )

    for field in ("window", "stride", "label_rule", "split_seed", "max_train_sessions"):
        value = getattr(args, field, None)
        if value is not None:
            fields[field] = value

    list_files = {name: getattr(args, f"{name}_sessions", None) for name in SPLIT_NAMES}
    given_files = {name: path for name, path in list_files.items() if path is not None}
    split = getattr(args, "split", None)
    if given_files:
        if len(given_files) != len(SPLIT_NAMES):
            missing = [f"--{name}-sessions" for name in SPLIT_NAMES if name not in given_files]
            raise DataOptionError(
                f"session lists need all of --train-sessions, --val-sessions and "
                f"--test-sessions; also give {', '.join(missing)}"
            )
        if split is not None:
            raise DataOptionError(
                "--split and the session list options both choose the split; give only one"
            )
        lists = {
            name: read_session_file(path, f"--{name}-sessions")
            for name, path in given_files.items()
        }
        _check_lists_disjoint(lists, given_files)
        for name, sessions in lists.items():
            fields[f"{name}_sessions"] = sessions
    elif split is not None:
        fields["split"] = split
        for name in SPLIT_NAMES:
            fields[f"{name}_sessions"] = None
    return DataSpec.from_dict(fields)


def _absolute_path(name: str) -> str:
    """Return a file path made absolute, so a spec recorded in a study works from any directory."""
    path = Path(name).expanduser()
    if path.suffix.lower() not in FILE_SUFFIXES:
        return name  # DataSpec rejects it with the list of valid names.
    return str(path.absolute())


def _check_lists_disjoint(lists: dict[str, tuple[str, ...]], files: dict[str, str]) -> None:
    try:
        _check_disjoint(lists)
    except DataError as error:
        named = ", ".join(f"--{name}-sessions {path}" for name, path in files.items())
        raise DataError(f"{error} (files: {named})") from None

