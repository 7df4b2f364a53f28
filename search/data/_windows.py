"""Windows before splitting, and the checks every source runs on them."""

from __future__ import annotations

import dataclasses

import numpy as np

from search.data._spec import DataError

__all__ = ["Windows", "check_binary_labels", "check_finite", "sliding_windows"]


@dataclasses.dataclass
class Windows:
    """All windows of a data source, in raw units, before the session split.

    A source either provides its labels (``y``) or leaves them to the split. Then a window
    is positive when its ``target`` is above the ``1 - positive_share`` quantile of the
    train split's targets in its ``target_group``.
    ``session_order`` lists the sessions in time order for sources whose neighbouring
    sessions share data. Those split by contiguous blocks of ``block_sessions`` sessions,
    dropping ``gap_sessions`` sessions where a block follows a block of another split.
    """

    X: np.ndarray  # float32 [N, T, F]
    session: np.ndarray  # str [N]
    feature_names: list[str]
    label_description: str
    y: np.ndarray | None = None  # int64 [N] in {0, 1}
    target: np.ndarray | None = None  # float64 [N]
    target_group: np.ndarray | None = None  # str [N]
    positive_share: float | None = None
    session_order: list[str] | None = None
    block_sessions: int = 0
    gap_sessions: int = 0


def sliding_windows(values: np.ndarray, window: int, stride: int) -> np.ndarray:
    """Cut [L, F] into windows [N, window, F] starting every `stride` steps (a view)."""
    view = np.lib.stride_tricks.sliding_window_view(values, window, axis=0)  # [L-T+1, F, T]
    return view[::stride].transpose(0, 2, 1)  # [N, T, F]


def check_finite(X: np.ndarray, source: str, feature_names: list[str]) -> None:
    """Raise DataError naming the features and the first window with NaN or inf."""
    finite = np.isfinite(X)
    if finite.all():
        return
    bad_windows = np.flatnonzero(~finite.all(axis=(1, 2)))
    bad_features = [feature_names[i] for i in np.flatnonzero(~finite.all(axis=(0, 1)))]
    raise DataError(
        f"{source}: {int((~finite).sum())} feature value(s) are NaN or infinite, in "
        f"feature(s) {', '.join(bad_features)} (first in window {int(bad_windows[0])}); "
        f"remove or fill them before loading"
    )


def check_binary_labels(labels: np.ndarray, source: str) -> np.ndarray:
    """Return the labels as int64, raising DataError unless every value is 0 or 1."""
    if labels.dtype == bool:
        return labels.astype(np.int64)
    if not np.issubdtype(labels.dtype, np.number):
        raise DataError(
            f"{source}: labels must be the numbers 0 and 1, got values of type {labels.dtype}"
        )
    valid = (labels == 0) | (labels == 1)
    if not valid.all():
        bad_values = np.unique(labels[~valid])
        shown = ", ".join(str(value) for value in bad_values[:5])
        raise DataError(
            f"{source}: labels must be 0 or 1, found {int((~valid).sum())} other value(s) "
            f"({shown}); map the positive class to 1 and everything else to 0"
        )
    return labels.astype(np.int64)
