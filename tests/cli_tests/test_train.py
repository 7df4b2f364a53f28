"""Tests of `archsweep train --preset` and `archsweep capacity`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from search.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, main
from search.commands.train import CAPACITY_TRAIN_F1, REPRODUCE_TOLERANCE

from .conftest import WATCH_OPTIONS, FinishedStudy, error_line

# A valid preset for the small watch windows of these tests, written by hand.
PRESET = {
    "format": "archsweep-preset/1",
    "architecture": "transformer",
    "model": {"d_model": 8, "num_heads": 1, "d_ff": 8, "num_layers": 1, "dropout": 0.0},
    "training": {"lr": 0.003, "weight_decay": 1e-6, "max_epochs": 2, "patience": 16,
                 "batch_size": 64, "seed": 0, "best_epoch": 1},
    "data": {"name": "watch", "window": 24, "stride": 48, "max_train_sessions": 2,
             "num_features": 6},
}


def _float_after(label: str, text: str) -> float:
    match = re.search(rf"^{label}\s+F1 ([0-9.]+)", text, re.MULTILINE)
    assert match is not None, text
    return float(match.group(1))


@pytest.fixture(scope="module")
def preset_path(finished_study: FinishedStudy, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train-presets")
    status = main([
        "export", "--study", finished_study.group, "--storage", str(finished_study.storage),
        "--out", str(out),
    ])
    assert status == EXIT_OK
    return out / "transformer.yaml"


def test_train_reproduces_preset_val_f1(preset_path: Path, capsys):
    recorded = yaml.safe_load(preset_path.read_text())["metrics"]["val_f1"]

    status = main(["train", "--preset", str(preset_path)])
    captured = capsys.readouterr()

    assert status == EXIT_OK, captured.err
    assert abs(_float_after("val", captured.out) - recorded) <= REPRODUCE_TOLERANCE
    assert 0.0 <= _float_after("test", captured.out) <= 1.0
    assert "same as the preset's" in captured.out
    assert "differs from the preset" not in captured.err


def test_train_warns_when_data_differs(tmp_path: Path, capsys):
    path = tmp_path / "preset.yaml"
    path.write_text(yaml.safe_dump({**PRESET, "data": {**PRESET["data"], "fingerprint": "0" * 64}}))

    status = main(["train", "--preset", str(path)])
    captured = capsys.readouterr()

    assert status == EXIT_OK, captured.err
    assert "the data differs from the data preset" in captured.err
    assert "differs from the preset's" in captured.out


def _write_preset(tmp_path: Path, preset: dict) -> Path:
    path = tmp_path / "preset.yaml"
    path.write_text(yaml.safe_dump(preset))
    return path


def _without(mapping: dict, key: str) -> dict:
    return {name: value for name, value in mapping.items() if name != key}


@pytest.mark.parametrize(
    ("preset", "fragments"),
    [
        ({**PRESET, "format": "archsweep-preset/2"}, ["unsupported format 'archsweep-preset/2'"]),
        ({**PRESET, "architecture": "lstm"}, ["unknown architecture 'lstm'"]),
        (_without(PRESET, "model"), ["missing required field(s) model"]),
        ({**PRESET, "training": {**PRESET["training"], "lr": "fast"}}, ["training.lr must be a positive number", "'fast'"]),
        ({**PRESET, "model": {**PRESET["model"], "d_model": "wide"}}, ["invalid model section"]),
        ({**PRESET, "data": {**PRESET["data"], "num_features": 7}}, ["trained on 7 features", "has 6"]),
        ({**PRESET, "data": {**PRESET["data"], "name": "weather"}}, ["unknown data set 'weather'"]),
    ],
)
def test_train_rejects_bad_preset(tmp_path: Path, capsys, preset: dict, fragments: list[str]):
    path = _write_preset(tmp_path, preset)

    status = main(["train", "--preset", str(path)])
    line = error_line(capsys.readouterr().err)

    assert status == EXIT_FAILURE
    for fragment in fragments:
        assert fragment in line


def test_train_rejects_missing_preset(tmp_path: Path, capsys):
    status = main(["train", "--preset", str(tmp_path / "none.yaml")])
    line = error_line(capsys.readouterr().err)

    assert status == EXIT_FAILURE
    assert "not found" in line


def test_capacity_on_watch_prints_verdict(capsys):
    status = main(["capacity", "--arch", "transformer", *WATCH_OPTIONS[:6]])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()

    assert status == EXIT_OK, captured.err
    train_f1 = float(re.search(r"^train F1\s+([0-9.]+)", captured.out, re.MULTILINE).group(1))
    heldout_f1 = float(re.search(r"^held-out F1\s+([0-9.]+)", captured.out, re.MULTILINE).group(1))
    assert 0.0 <= heldout_f1 <= 1.0
    verdict = "pass" if train_f1 >= CAPACITY_TRAIN_F1 else "fail"
    assert lines[-1].startswith(f"verdict: {verdict}: transformer")


def test_capacity_needs_one_architecture(capsys):
    status = main(["capacity", "--arch", "all", *WATCH_OPTIONS])
    line = error_line(capsys.readouterr().err)

    assert status == EXIT_USAGE
    assert "capacity checks one architecture" in line
