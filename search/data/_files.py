"""User data files: windows in ``.npz``, long tables in CSV or Parquet, session lists.

An ``.npz`` file contains finished windows: ``X`` [N, T, F] float, ``y`` [N] in {0, 1} and
``session`` [N] (numbers or strings), plus optionally ``feature_names`` [F].

A table contains one row per time step with the columns ``session`` (the session id),
``order`` (sorts the rows of a session, for example a timestamp or step number) and
``label`` (0 or 1). Every other column is a numeric feature. Windows of ``--window`` rows
start every ``--stride`` rows (default half a window) inside one session. A window's label
is the label of its last row (``--label-rule last``) or 1 when any of its rows is 1
(``--label-rule any``).

A session list file has one session id per line; blank lines are skipped.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from search.data._spec import DataError, DataOptionError, DataSpec, _preview
from search.data._windows import Windows, check_binary_labels, check_finite, sliding_windows

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["NPZ_ARRAYS", "TABLE_COLUMNS", "load_npz", "load_table", "read_session_file"]

_logger = logging.getLogger(__name__)

NPZ_ARRAYS = ("X", "y", "session")
NPZ_OPTIONAL_ARRAYS = ("feature_names",)
SESSION_COLUMN = "session"
ORDER_COLUMN = "order"
LABEL_COLUMN = "label"
TABLE_COLUMNS = (SESSION_COLUMN, ORDER_COLUMN, LABEL_COLUMN)


def _require_file(path: Path, what: str) -> None:
    if not path.exists():
        raise DataError(f"{what} {path} not found; check the path")
    if not path.is_file():
        raise DataError(f"{what} {path} is not a file; give the path of a file")


def read_session_file(path: str | Path, option: str) -> tuple[str, ...]:
    """Read one session id per line from `path`, the value of the option named `option`."""
    path = Path(path)
    _require_file(path, f"{option} file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise DataError(
            f"{option} file {path} is not UTF-8 text ({error.reason}); "
            f"write one session id per line"
        ) from None

    sessions = [line.strip() for line in lines if line.strip()]
    if not sessions:
        raise DataError(f"{option} file {path} lists no sessions; write one session id per line")
    unique, counts = np.unique(sessions, return_counts=True)
    repeated = unique[counts > 1].tolist()
    if repeated:
        raise DataError(
            f"{option} file {path} lists session(s) {_preview(repeated)} "
            f"more than once; list each session once"
        )
    return tuple(sessions)


def load_npz(spec: DataSpec) -> Windows:
    """Read finished windows from an ``.npz`` file and check their names, shapes and values."""
    path = Path(spec.name)
    _require_file(path, "data file")
    if not zipfile.is_zipfile(path):
        raise DataError(
            f"{path} is not an .npz archive; save it with "
            f"numpy.savez(path, X=..., y=..., session=...)"
        )
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, zipfile.BadZipFile, ValueError) as error:
        raise DataError(
            f"{path} could not be read as an .npz file ({error}); "
            f"save it with numpy.savez(path, X=..., y=..., session=...)"
        ) from None

    with archive:
        names = list(archive.files)
        missing = [name for name in NPZ_ARRAYS if name not in names]
        if missing:
            raise DataError(
                f"{path} lacks the array(s) {', '.join(missing)} (found: "
                f"{', '.join(names) or 'none'}); an .npz data file needs X [N, T, F], "
                f"y [N] in {{0, 1}} and session [N]"
            )
        ignored = sorted(set(names) - set(NPZ_ARRAYS) - set(NPZ_OPTIONAL_ARRAYS))
        if ignored:
            _logger.warning("%s: ignoring the array(s) %s", path, ", ".join(ignored))
        try:
            arrays = {name: archive[name] for name in names if name not in ignored}
        except ValueError as error:
            # Object arrays need pickle, which a user file is not allowed to run.
            raise DataError(
                f"{path} contains an object array ({error}); store session ids as numbers or "
                f"fixed-width strings, e.g. numpy.asarray(ids, dtype=str)"
            ) from None

    X, labels, sessions = arrays["X"], arrays["y"], arrays["session"]
    _check_npz_shapes(path, X, labels, sessions)
    feature_names = _npz_feature_names(path, arrays.get("feature_names"), X.shape[2])

    if spec.window is not None and spec.window != X.shape[1]:
        raise DataError(
            f"--window {spec.window} does not match {path}, whose windows have "
            f"{X.shape[1]} steps; drop --window for .npz data"
        )
    X = X.astype(np.float32)
    check_finite(X, str(path), feature_names)
    y = check_binary_labels(labels, f"{path} array y")

    return Windows(
        X=np.ascontiguousarray(X),
        session=sessions.astype(str),
        feature_names=feature_names,
        label_description=f"y from {path.name}",
        y=y,
    )


def _check_npz_shapes(path: Path, X: np.ndarray, labels: np.ndarray, sessions: np.ndarray) -> None:
    if X.ndim != 3:
        raise DataError(
            f"{path}: X must have 3 dimensions [windows, steps, features], got shape "
            f"{list(X.shape)}; reshape it, e.g. X[..., None] for a single feature"
        )
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise DataError(f"{path}: X must hold numbers, got dtype {X.dtype}")
    if min(X.shape) == 0:
        raise DataError(f"{path}: X has shape {list(X.shape)}; it needs at least one window")
    for name, array in (("y", labels), ("session", sessions)):
        if array.ndim != 1 or array.shape[0] != X.shape[0]:
            raise DataError(
                f"{path}: {name} must have shape [{X.shape[0]}] (one entry per window of X), "
                f"got {list(array.shape)}"
            )


def _npz_feature_names(path: Path, names: np.ndarray | None, num_features: int) -> list[str]:
    if names is None:
        return [f"f{index}" for index in range(num_features)]
    if names.ndim != 1 or names.shape[0] != num_features:
        raise DataError(
            f"{path}: feature_names must have shape [{num_features}] (one per feature of X), "
            f"got {list(names.shape)}"
        )
    return [str(name) for name in names]


def load_table(spec: DataSpec) -> Windows:
    """Window a long table with one row per time step (see the module docstring)."""
    path = Path(spec.name)
    if spec.window is None:
        raise DataOptionError(
            f"--window is required for the table {path}: give the window length in rows, "
            f"e.g. --window 50"
        )
    _require_file(path, "data file")
    frame = _read_table(path)
    feature_columns = _check_table_columns(path, frame)

    window = spec.window
    stride = spec.stride or max(1, window // 2)
    frame = frame.sort_values([SESSION_COLUMN, ORDER_COLUMN], kind="stable")
    duplicated = frame.duplicated([SESSION_COLUMN, ORDER_COLUMN])
    if duplicated.any():
        first = frame[duplicated].iloc[0]
        raise DataError(
            f"{path}: {int(duplicated.sum())} row(s) repeat the {ORDER_COLUMN} value of another "
            f"row in their session (first: session {str(first[SESSION_COLUMN])!r}, "
            f"{ORDER_COLUMN} {first[ORDER_COLUMN]}); each step of a session needs its own "
            f"{ORDER_COLUMN} value"
        )

    sessions = frame[SESSION_COLUMN].to_numpy()
    values = frame[feature_columns].to_numpy(dtype=np.float64)
    _check_table_finite(path, frame, values, feature_columns)
    labels = check_binary_labels(frame[LABEL_COLUMN].to_numpy(), f"{path} column {LABEL_COLUMN}")

    # Rows are sorted by session, so each session is one contiguous run of rows.
    boundaries = np.flatnonzero(sessions[1:] != sessions[:-1]) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(sessions)]])
    lengths = ends - starts
    short = [(sessions[start], length) for start, length in zip(starts, lengths) if length < window]
    if short:
        listed = ", ".join(f"{session!r} ({length} rows)" for session, length in short[:5])
        more = f" and {len(short) - 5} more" if len(short) > 5 else ""
        raise DataError(
            f"--window {window} is longer than {len(short)} session(s) of {path}, which would "
            f"have no windows: {listed}{more}; use --window {int(lengths.min())} or less, "
            f"or remove those sessions"
        )

    window_blocks, label_blocks, session_blocks = [], [], []
    for start, end in zip(starts, ends):
        windows = sliding_windows(values[start:end], window, stride)  # [n, T, F]
        window_labels = sliding_windows(labels[start:end, None], window, stride)[:, :, 0]  # [n, T]
        window_blocks.append(windows)
        if spec.label_rule == "last":
            label_blocks.append(window_labels[:, -1])
        else:
            label_blocks.append(window_labels.max(axis=1))
        session_blocks.append(np.full(len(windows), sessions[start]))

    rule_text = "its last row" if spec.label_rule == "last" else "any of its rows"
    return Windows(
        X=np.ascontiguousarray(np.concatenate(window_blocks), dtype=np.float32),
        session=np.concatenate(session_blocks).astype(str),
        feature_names=feature_columns,
        label_description=(
            f"1 when {LABEL_COLUMN} is 1 in {rule_text} (--label-rule {spec.label_rule})"
        ),
        y=np.concatenate(label_blocks).astype(np.int64),
    )


def _check_table_finite(
    path: Path, frame: pd.DataFrame, values: np.ndarray, feature_columns: list[str]
) -> None:
    finite = np.isfinite(values)  # [rows, F]
    if finite.all():
        return
    bad_counts = (~finite).sum(axis=0)
    listed = ", ".join(
        f"{column} ({int(count)})" for column, count in zip(feature_columns, bad_counts) if count
    )
    first_row = frame.iloc[int(np.flatnonzero(~finite.all(axis=1))[0])]
    raise DataError(
        f"{path}: feature values are NaN, empty or infinite in {listed} "
        f"(first at session {str(first_row[SESSION_COLUMN])!r}, {ORDER_COLUMN} "
        f"{first_row[ORDER_COLUMN]}); fill or drop those rows"
    )


def _read_table(path: Path) -> pd.DataFrame:
    import pandas as pd

    try:
        if path.suffix.lower() == ".csv":
            # Session ids stay strings exactly as written, so they match session list files.
            return pd.read_csv(path, dtype={SESSION_COLUMN: str})
        return pd.read_parquet(path)
    except (ValueError, OSError, UnicodeDecodeError) as error:
        kind = "CSV" if path.suffix.lower() == ".csv" else "Parquet"
        raise DataError(f"{path} could not be read as {kind} ({error})") from None


def _check_table_columns(path: Path, frame: pd.DataFrame) -> list[str]:
    import pandas as pd

    columns = [str(column) for column in frame.columns]
    missing = [column for column in TABLE_COLUMNS if column not in columns]
    if missing:
        raise DataError(
            f"{path} lacks the column(s) {', '.join(missing)} (found: {', '.join(columns)}); "
            f"a table needs the columns {', '.join(TABLE_COLUMNS)} and numeric feature columns"
        )
    feature_columns = [column for column in columns if column not in TABLE_COLUMNS]
    if not feature_columns:
        raise DataError(
            f"{path} has no feature columns; every column other than "
            f"{', '.join(TABLE_COLUMNS)} is a feature"
        )
    not_numeric = [
        column for column in feature_columns
        if not pd.api.types.is_numeric_dtype(frame[column])
    ]
    if not_numeric:
        raise DataError(
            f"{path}: feature column(s) {', '.join(not_numeric)} are not numeric; every column "
            f"other than {', '.join(TABLE_COLUMNS)} must hold numbers, so convert or drop them"
        )
    if len(frame) == 0:
        raise DataError(f"{path} has no rows")

    for column in TABLE_COLUMNS:
        empty = int(frame[column].isna().sum())
        if empty:
            raise DataError(
                f"{path}: column {column} has {empty} empty values; fill or drop those rows"
            )
    return feature_columns
