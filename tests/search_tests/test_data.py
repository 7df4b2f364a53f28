"""Tests of search.data: built-in data sets, user files, splits, normalisation, fingerprint."""

from __future__ import annotations

import argparse
import datetime
import importlib.resources

import numpy as np
import pandas as pd
import pytest

from search.data import (
    DataError,
    DataOptionError,
    DataSpec,
    add_data_arguments,
    data_spec_from_args,
    load_dataset,
)


def _split_sessions(dataset) -> dict[str, set[str]]:
    return {name: set(arrays.session.tolist()) for name, arrays in dataset.splits().items()}


def _assert_disjoint(sessions: dict[str, set[str]]) -> None:
    assert not sessions["train"] & sessions["val"]
    assert not sessions["train"] & sessions["test"]
    assert not sessions["val"] & sessions["test"]


def _read_watch_file() -> dict:
    resource = importlib.resources.files("seglearn").joinpath("data/watch_dataset.npy")
    with importlib.resources.as_file(resource) as path:
        return np.load(path, allow_pickle=True).item()


def _read_epf_file() -> pd.DataFrame:
    resource = importlib.resources.files("tsdata").joinpath("fpppy/EPF_FR_BE.csv")
    with importlib.resources.as_file(resource) as path:
        return pd.read_csv(path, parse_dates=["ds"])


# Built-in watch.

def test_watch_window_count_matches_recordings(watch_dataset):
    content = _read_watch_file()
    # 25 Hz lengths, windows of 50 steps every 25 steps, inside each recording.
    per_recording = [(len(recording) // 2 - 50) // 25 + 1 for recording in content["X"]]
    positive_index = list(content["y_labels"]).index("FEL")
    expected_positives = sum(
        count for count, exercise in zip(per_recording, content["y"]) if exercise == positive_index
    )
    splits = watch_dataset.splits().values()

    assert sum(arrays.num_windows for arrays in splits) == sum(per_recording)
    assert sum(arrays.num_positives for arrays in splits) == expected_positives
    assert watch_dataset.seq_len == 50
    assert watch_dataset.num_features == 6


def test_watch_label_rate_near_17_percent(watch_dataset):
    splits = watch_dataset.splits().values()
    total_rate = sum(a.num_positives for a in splits) / sum(a.num_windows for a in splits)

    assert 0.15 < total_rate < 0.19


def test_watch_subjects_in_one_split(watch_dataset):
    sessions = _split_sessions(watch_dataset)
    subjects = {str(subject) for subject in _read_watch_file()["subject"]}

    _assert_disjoint(sessions)
    assert sessions["train"] | sessions["val"] | sessions["test"] == subjects
    assert [len(sessions[name]) for name in ("train", "val", "test")] == [6, 2, 2]


def test_watch_positive_class_option():
    dataset = load_dataset(DataSpec("watch", positive_class="ABD"))
    content = _read_watch_file()
    per_recording = [(len(recording) // 2 - 50) // 25 + 1 for recording in content["X"]]
    abd_index = list(content["y_labels"]).index("ABD")
    expected = sum(c for c, exercise in zip(per_recording, content["y"]) if exercise == abd_index)

    assert sum(a.num_positives for a in dataset.splits().values()) == expected


def test_watch_unknown_positive_class_rejected():
    with pytest.raises(DataOptionError, match="no exercise 'JUMP'.*PEN"):
        load_dataset(DataSpec("watch", positive_class="JUMP"))


def test_watch_window_longer_than_recording_rejected():
    with pytest.raises(DataError, match="window 1000 is longer than .* watch recordings"):
        load_dataset(DataSpec("watch", window=1000))


# Built-in epf.

def test_epf_every_day_has_48_windows(epf_dataset):
    for arrays in epf_dataset.splits().values():
        _, counts = np.unique(arrays.session, return_counts=True)
        # 24 label hours in each of the two markets.
        assert (counts == 48).all()
    assert epf_dataset.seq_len == 24
    assert epf_dataset.num_features == 5


def test_epf_sessions_disjoint(epf_dataset):
    sessions = _split_sessions(epf_dataset)
    total = sum(len(days) for days in sessions.values())

    _assert_disjoint(sessions)
    assert 640 <= total <= 669


def test_epf_one_day_gap_between_blocks(epf_dataset):
    split_of_day = {
        datetime.date.fromisoformat(day): name
        for name, days in _split_sessions(epf_dataset).items()
        for day in days
    }
    changes = 0
    for day, name in split_of_day.items():
        previous = split_of_day.get(day - datetime.timedelta(days=1))
        # The day before is in the same split or dropped, never in another split.
        assert previous in (None, name), f"{day} ({name}) follows a {previous} day"
        if previous is None and day != min(split_of_day):
            changes += 1

    assert changes >= 2


def test_epf_threshold_fit_on_train_only(epf_dataset):
    frame = _read_epf_file()
    frame["day"] = frame["ds"].dt.strftime("%Y-%m-%d")
    days = _split_sessions(epf_dataset)

    expected = {name: 0 for name in days}
    for _, market in frame.groupby("unique_id"):
        # A day's windows are labelled by the prices of that day's 24 hours.
        threshold = market.loc[market["day"].isin(days["train"]), "y"].quantile(0.82)
        for name, split_days in days.items():
            prices = market.loc[market["day"].isin(split_days), "y"]
            expected[name] += int((prices > threshold).sum())

    for name, arrays in epf_dataset.splits().items():
        assert arrays.num_positives == expected[name], name
    assert epf_dataset.train.positive_rate == pytest.approx(0.18, abs=0.002)


def test_epf_split_seed_moves_blocks(epf_dataset):
    other = load_dataset(DataSpec("epf", split_seed=1))

    assert _split_sessions(other)["val"] != _split_sessions(epf_dataset)["val"]
    assert other.fingerprint != epf_dataset.fingerprint


# Splits, normalisation and fingerprint.

def test_npz_sessions_disjoint(write_npz):
    dataset = load_dataset(DataSpec(str(write_npz())))
    sessions = _split_sessions(dataset)

    _assert_disjoint(sessions)
    assert [len(sessions[name]) for name in ("train", "val", "test")] == [6, 2, 2]
    assert sum(arrays.num_windows for arrays in dataset.splits().values()) == 80


def test_normalisation_uses_train_statistics(write_npz, make_windows):
    dataset = load_dataset(DataSpec(str(write_npz())))
    train_flat = dataset.train.X.reshape(-1, dataset.num_features)

    np.testing.assert_allclose(train_flat.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train_flat.std(axis=0), 1.0, atol=1e-4)
    raw = make_windows()
    train_raw = raw["X"][np.isin(raw["session"], dataset.train.session)]
    np.testing.assert_allclose(
        dataset.feature_mean, train_raw.reshape(-1, 3).mean(axis=0), rtol=1e-5
    )


def test_normalisation_ignores_val_and_test(write_npz, make_windows):
    first = load_dataset(DataSpec(str(write_npz("first.npz"))))
    changed = make_windows()
    outside_train = ~np.isin(changed["session"], first.train.session)
    changed["X"][outside_train] *= 100.0
    second = load_dataset(DataSpec(str(write_npz("second.npz", **changed))))

    np.testing.assert_array_equal(second.train.X, first.train.X)
    np.testing.assert_array_equal(second.feature_mean, first.feature_mean)
    assert not np.allclose(second.val.X, first.val.X)


def test_fingerprint_stable(watch_dataset):
    again = load_dataset(DataSpec("watch"))

    assert again.fingerprint == watch_dataset.fingerprint
    assert len(watch_dataset.fingerprint) == 64


def test_fingerprint_changes_with_split_seed(watch_dataset):
    reseeded = load_dataset(DataSpec("watch", split_seed=1))

    assert _split_sessions(reseeded) != _split_sessions(watch_dataset)
    assert reseeded.fingerprint != watch_dataset.fingerprint


def test_fingerprint_changes_with_data(write_npz, make_windows):
    changed = make_windows()
    changed["X"][0, 0, 0] += 1.0

    first = load_dataset(DataSpec(str(write_npz("first.npz"))))
    second = load_dataset(DataSpec(str(write_npz("second.npz", **changed))))

    assert first.fingerprint != second.fingerprint


def test_explicit_session_lists_used(write_npz):
    spec = DataSpec(
        str(write_npz()),
        train_sessions=("s3", "s1", "s0", "s2"),
        val_sessions=("s4", "s5"),
        test_sessions=("s6",),
    )
    dataset = load_dataset(spec)
    sessions = _split_sessions(dataset)

    assert sessions == {"train": {"s0", "s1", "s2", "s3"}, "val": {"s4", "s5"}, "test": {"s6"}}


def test_max_train_sessions_keeps_first(write_npz):
    spec = DataSpec(
        str(write_npz()),
        train_sessions=("s3", "s1", "s0", "s2"),
        val_sessions=("s4",),
        test_sessions=("s5",),
        max_train_sessions=2,
    )
    dataset = load_dataset(spec)

    assert set(dataset.train.session.tolist()) == {"s3", "s1"}
    assert dataset.train.num_windows == 16


def test_split_without_a_class_names_counts(write_npz, make_windows):
    arrays = make_windows()
    arrays["y"] = np.where(np.isin(arrays["session"], ["s4", "s5"]), 0, arrays["y"])
    spec = DataSpec(
        str(write_npz(**arrays)),
        train_sessions=("s0", "s1"),
        val_sessions=("s4", "s5"),
        test_sessions=("s2",),
    )

    with pytest.raises(DataError, match="validation split .* has 0 positive and 16 negative"):
        load_dataset(spec)


# User tables.

@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_windows_within_sessions(write_table, suffix, make_table):
    lengths = {f"u{index}": 20 + index for index in range(6)}
    path = write_table(make_table(lengths), f"steps{suffix}")
    dataset = load_dataset(DataSpec(str(path), window=5, stride=2))

    expected = sum((length - 5) // 2 + 1 for length in lengths.values())
    assert sum(arrays.num_windows for arrays in dataset.splits().values()) == expected
    assert dataset.feature_names == ["f0", "f1"]
    _assert_disjoint(_split_sessions(dataset))


def test_table_label_rules(write_table, make_table):
    # Labels are 1 on steps 2, 5, 8, ... of each session.
    path = write_table(make_table({f"u{index}": 12 for index in range(5)}))
    last = load_dataset(DataSpec(str(path), window=2, stride=1, label_rule="last"))
    any_rule = load_dataset(DataSpec(str(path), window=2, stride=1, label_rule="any"))

    last_total = sum(arrays.num_positives for arrays in last.splits().values())
    any_total = sum(arrays.num_positives for arrays in any_rule.splits().values())
    # Per session 11 windows, starting at steps 0 to 10. The last step is labelled in the
    # windows ending at 2, 5, 8, 11 (4); a labelled step lies in 7 of them (starts 1, 2,
    # 4, 5, 7, 8, 10).
    assert last_total == 5 * 4
    assert any_total == 5 * 7


def test_table_rows_sorted_by_order(write_table, make_table):
    frame = make_table({f"u{index}": 6 for index in range(4)})
    shuffled = frame.sample(frac=1.0, random_state=0)
    ordered = load_dataset(DataSpec(str(write_table(frame, "a.csv")), window=5, stride=1))
    from_shuffled = load_dataset(
        DataSpec(str(write_table(shuffled, "b.csv")), window=5, stride=1)
    )

    assert ordered.fingerprint == from_shuffled.fingerprint


# DataSpec.

def test_dataspec_dict_round_trip():
    spec = DataSpec(
        "watch", window=40, split=(0.5, 0.25, 0.25), split_seed=3, max_train_sessions=4,
        positive_class="ABD",
    )
    mapping = spec.to_dict()

    assert DataSpec.from_dict(mapping) == spec
    assert mapping["split"] == [0.5, 0.25, 0.25]
    assert DataSpec.from_dict({**mapping, "num_features": 6, "fingerprint": "ab"}) == spec


def test_dataspec_from_dict_rejects_unknown_field():
    with pytest.raises(DataError, match="unknown data spec field.*windw"):
        DataSpec.from_dict({"name": "watch", "windw": 5})


def test_dataset_record_has_fingerprint(watch_dataset):
    record = watch_dataset.to_record()

    assert record["fingerprint"] == watch_dataset.fingerprint
    assert record["num_features"] == 6
    assert DataSpec.from_dict(record) == watch_dataset.spec


def test_data_spec_from_args_overrides_base():
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    base = DataSpec("watch", window=40, split_seed=3, positive_class="ABD")

    kept = data_spec_from_args(parser.parse_args([]), base=base)
    overridden = data_spec_from_args(parser.parse_args(["--window", "30"]), base=base)
    other_data = data_spec_from_args(parser.parse_args(["--data", "epf"]), base=base)

    assert kept == base
    assert overridden == DataSpec("watch", window=30, split_seed=3, positive_class="ABD")
    # Windowing and the positive class belong to watch; the split seed carries over.
    assert other_data == DataSpec("epf", split_seed=3)


def test_data_spec_from_args_needs_data():
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)

    with pytest.raises(DataOptionError, match="no data given; pass --data"):
        data_spec_from_args(parser.parse_args([]))
