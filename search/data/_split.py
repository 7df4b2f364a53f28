"""Session splits, train-only label thresholds and normalisation, and the data fingerprint."""

from __future__ import annotations

import hashlib
import logging

import numpy as np

from search.data._builtin import load_epf, load_watch
from search.data._files import load_npz, load_table
from search.data._spec import SPLIT_NAMES, DataError, Dataset, DataSpec, SplitArrays, _preview
from search.data._windows import Windows

__all__ = ["assign_split_sessions", "load_dataset"]

_logger = logging.getLogger(__name__)

FINGERPRINT_VERSION = b"archsweep-data/1"
# A feature whose train std is below this is constant on train; it is centred, not scaled.
MIN_FEATURE_STD = 1e-8

_SPLIT_LABELS = {"train": "train", "val": "validation", "test": "test"}


def load_dataset(spec: DataSpec) -> Dataset:
    """Load, window, split and normalise the data that `spec` names.

    Raises DataError (DataOptionError for an invalid option value) naming the file or
    value and the fix.
    """
    windows = _load_windows(spec)
    _logger.info(
        "loaded %s: %d windows of %d steps and %d features",
        spec.name, windows.X.shape[0], windows.X.shape[1], windows.X.shape[2],
    )
    _check_labels_not_single_class(spec, windows)

    sessions_by_split = assign_split_sessions(spec, windows)
    masks = {
        name: np.isin(windows.session, np.asarray(sessions, dtype=str))
        for name, sessions in sessions_by_split.items()
    }

    # The task is defined on the whole train split, so thresholds are fit before
    # max_train_sessions shrinks it.
    labels, threshold_text = _labels(windows, masks["train"])
    label_description = windows.label_description + threshold_text

    if spec.max_train_sessions is not None:
        kept = sessions_by_split["train"][: spec.max_train_sessions]
        _logger.info(
            "keeping %d of %d train sessions (max_train_sessions)",
            len(kept), len(sessions_by_split["train"]),
        )
        sessions_by_split["train"] = kept
        masks["train"] = np.isin(windows.session, np.asarray(kept, dtype=str))

    _check_classes_per_split(spec, labels, masks, sessions_by_split)

    raw = {
        name: SplitArrays(X=windows.X[mask], y=labels[mask], session=windows.session[mask])
        for name, mask in masks.items()
    }
    fingerprint = _fingerprint(raw, windows.feature_names)
    mean, std = _train_statistics(raw["train"].X, windows.feature_names)
    normalised = {
        name: SplitArrays(
            X=((arrays.X - mean) / std).astype(np.float32),
            y=arrays.y,
            session=arrays.session,
        )
        for name, arrays in raw.items()
    }
    return Dataset(
        spec=spec,
        train=normalised["train"],
        val=normalised["val"],
        test=normalised["test"],
        feature_names=list(windows.feature_names),
        fingerprint=fingerprint,
        feature_mean=mean.astype(np.float32),
        feature_std=std.astype(np.float32),
        label_description=label_description,
    )


def _load_windows(spec: DataSpec) -> Windows:
    if spec.kind == "watch":
        return load_watch(spec)
    if spec.kind == "epf":
        return load_epf(spec)
    if spec.kind == "npz":
        return load_npz(spec)
    return load_table(spec)


def _check_labels_not_single_class(spec: DataSpec, windows: Windows) -> None:
    if windows.y is None:
        return
    positives = int(windows.y.sum())
    if 0 < positives < len(windows.y):
        return
    only = "1 (positive)" if positives else "0 (negative)"
    raise DataError(
        f"{spec.name}: all {len(windows.y)} windows have label {only}; a binary classifier "
        f"needs both classes, so check the labels"
        + (" and --label-rule" if spec.kind == "table" else "")
    )


def assign_split_sessions(spec: DataSpec, windows: Windows) -> dict[str, list[str]]:
    """Return the session ids of train, val and test, in the order max_train_sessions uses.

    Explicit lists keep their order. Time-ordered sources assign seeded blocks of
    consecutive sessions and list each split's sessions in time order. Others shuffle the
    sessions with ``split_seed``. The ``split`` fractions apply to blocks or sessions.
    """
    present = np.unique(windows.session).tolist()
    if spec.has_session_lists:
        return _explicit_split(spec, present)
    if windows.session_order is not None:
        return _block_split(spec, windows.session_order, windows.block_sessions,
                            windows.gap_sessions)

    if len(present) < len(SPLIT_NAMES):
        raise DataError(
            f"{spec.name} has {len(present)} session(s), fewer than the 3 that a split needs "
            f"(at least one each for train, validation and test); use data with more sessions"
        )
    ordered = _natural_sorted(present)
    permutation = np.random.default_rng(spec.split_seed).permutation(len(ordered))
    shuffled = [ordered[index] for index in permutation]

    assigned: dict[str, list[str]] = {}
    position = 0
    for name, count in zip(SPLIT_NAMES, _split_counts(spec.split, len(shuffled))):
        assigned[name] = shuffled[position : position + count]
        position += count
    return assigned


def _block_split(
    spec: DataSpec, session_order: list[str], block_size: int, num_gap: int
) -> dict[str, list[str]]:
    """Assign seeded blocks of consecutive sessions to the splits.

    Where a block follows a block of another split, its first `num_gap` sessions are
    dropped, so windows that reach back into the previous sessions see no other split.
    """
    blocks = [
        session_order[start : start + block_size]
        for start in range(0, len(session_order), block_size)
    ]
    if len(blocks) < len(SPLIT_NAMES):
        raise DataError(
            f"{spec.name} has {len(session_order)} sessions, {len(blocks)} block(s) of "
            f"{block_size}; a split needs at least 3 blocks (one each for train, validation "
            f"and test)"
        )

    permutation = np.random.default_rng(spec.split_seed).permutation(len(blocks))
    block_splits = [""] * len(blocks)
    position = 0
    for name, count in zip(SPLIT_NAMES, _split_counts(spec.split, len(blocks))):
        for block_index in permutation[position : position + count]:
            block_splits[block_index] = name
        position += count

    assigned: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    num_dropped = 0
    for index, (name, block) in enumerate(zip(block_splits, blocks)):
        if index > 0 and block_splits[index - 1] != name:
            block = block[num_gap:]
            num_dropped += num_gap
        assigned[name].extend(block)
    _logger.info(
        "%s: %d blocks of %d sessions split %s; %d gap session(s) dropped",
        spec.name, len(blocks), block_size,
        "/".join(str(block_splits.count(name)) for name in SPLIT_NAMES), num_dropped,
    )
    return assigned


def _explicit_split(spec: DataSpec, present: list[str]) -> dict[str, list[str]]:
    lists = {
        "train": spec.train_sessions or (),
        "val": spec.val_sessions or (),
        "test": spec.test_sessions or (),
    }
    known = set(present)
    for name, sessions in lists.items():
        unknown = [session for session in sessions if session not in known]
        if unknown:
            raise DataError(
                f"the {_SPLIT_LABELS[name]} session list (--{name}-sessions) names "
                f"{len(unknown)} session(s) with no windows in {spec.name}: {_preview(unknown)}; "
                f"the data's sessions include {_preview(_natural_sorted(present), 3)}"
            )

    listed = set().union(*lists.values())
    unlisted = len(known - listed)
    if unlisted:
        _logger.warning(
            "%d session(s) of %s appear in no session list and are left out", unlisted, spec.name
        )
    if spec.kind == "epf":
        # NOTE: explicit lists get no gap days, so neighbouring days may share input hours.
        _logger.warning("epf with explicit session lists: no gap days are dropped between splits")
    return {name: list(sessions) for name, sessions in lists.items()}


def _split_counts(split: tuple[float, float, float], num_sessions: int) -> list[int]:
    """Round the fractions to session counts that sum to `num_sessions`, each at least 1."""
    counts = [max(1, round(fraction * num_sessions)) for fraction in split]
    while sum(counts) > num_sessions:
        largest = counts.index(max(counts))
        counts[largest] -= 1
    counts[0] += num_sessions - sum(counts)
    return counts


def _natural_sorted(sessions: list[str]) -> list[str]:
    """Sort numerically when every id is an integer, so "2" comes before "10"."""
    if all(session.lstrip("-").isdigit() for session in sessions):
        return sorted(sessions, key=int)
    return sorted(sessions)


def _labels(windows: Windows, train_mask: np.ndarray) -> tuple[np.ndarray, str]:
    """Return the window labels and a note on the thresholds when they are fit on train."""
    if windows.y is not None:
        return windows.y, ""
    assert windows.target is not None and windows.target_group is not None
    assert windows.positive_share is not None

    labels = np.zeros(len(windows.target), dtype=np.int64)
    thresholds = []
    for group in np.unique(windows.target_group):
        in_group = windows.target_group == group
        train_targets = windows.target[in_group & train_mask]
        threshold = float(np.quantile(train_targets, 1 - windows.positive_share))
        labels[in_group] = windows.target[in_group] > threshold
        thresholds.append(f"{group} > {threshold:.2f}")
    return labels, f" (thresholds {', '.join(thresholds)})"


def _check_classes_per_split(
    spec: DataSpec,
    labels: np.ndarray,
    masks: dict[str, np.ndarray],
    sessions_by_split: dict[str, list[str]],
) -> None:
    for name, mask in masks.items():
        positives = int(labels[mask].sum())
        negatives = int(mask.sum()) - positives
        if positives and negatives:
            continue
        if spec.has_session_lists:
            missing_class = "negative" if positives else "positive"
            fix = f"move sessions with {missing_class} windows into --{name}-sessions"
        else:
            fix = "try another --split-seed or a larger --split fraction for it"
        if name == "train" and spec.max_train_sessions is not None:
            fix += ", or raise --max-train-sessions"
        raise DataError(
            f"the {_SPLIT_LABELS[name]} split of {spec.name} has {positives} positive and "
            f"{negatives} negative windows in {len(sessions_by_split[name])} session(s); every "
            f"split needs both classes, so {fix}"
        )


def _train_statistics(
    train_X: np.ndarray, feature_names: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Return the per-feature mean and std over the train windows and steps, in float64."""
    flat = train_X.reshape(-1, train_X.shape[2]).astype(np.float64)  # [N * T, F]
    mean = flat.mean(axis=0)
    std = flat.std(axis=0)
    constant = std < MIN_FEATURE_STD
    if constant.any():
        _logger.warning(
            "feature(s) %s are constant on the train split; they are centred but not scaled",
            ", ".join(name for name, flag in zip(feature_names, constant) if flag),
        )
        std[constant] = 1.0
    return mean, std


def _fingerprint(splits: dict[str, SplitArrays], feature_names: list[str]) -> str:
    """Hash the un-normalised windows, labels and sessions of each split.

    Raw float32 values are hashed rather than normalised ones, so machines whose numpy
    reductions round differently still agree on the fingerprint.
    """
    digest = hashlib.sha256(FINGERPRINT_VERSION)
    digest.update("\0".join(feature_names).encode())
    for name, arrays in splits.items():
        digest.update(f"\0{name}\0{list(arrays.X.shape)}\0".encode())
        digest.update(np.ascontiguousarray(arrays.X, dtype="<f4").tobytes())
        digest.update(np.ascontiguousarray(arrays.y, dtype="<i8").tobytes())
        digest.update("\0".join(arrays.session.tolist()).encode())
    return digest.hexdigest()
