"""Tests of `archsweep export` and the presets it writes."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

import models
from search.cli import EXIT_FAILURE, EXIT_OK, main
from search.data import DataSpec, load_dataset
from search.presets import best_complete_trial

from .conftest import (
    FLOW_ARCHITECTURES,
    NUM_FEATURES,
    REPO_ROOT,
    SEQ_LEN,
    FinishedStudy,
    add_study_without_completed_trial,
    error_line,
    load_study,
    open_journal,
    subprocess_env,
)

WATCH_SPEC = DataSpec("watch", window=24, stride=48, max_train_sessions=2)


@pytest.fixture(scope="module")
def exported(finished_study: FinishedStudy, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("presets")
    status = main([
        "export", "--study", finished_study.group, "--storage", str(finished_study.storage),
        "--out", str(out), "--weights",
    ])
    assert status == EXIT_OK
    return out


def test_export_writes_preset_and_weights(exported: Path):
    names = sorted(path.name for path in exported.iterdir())

    assert names == sorted(
        [f"{arch}.yaml" for arch in FLOW_ARCHITECTURES]
        + [f"{arch}.safetensors" for arch in FLOW_ARCHITECTURES]
    )


def test_export_preset_contents(exported: Path, finished_study: FinishedStudy):
    for architecture in FLOW_ARCHITECTURES:
        preset = yaml.safe_load((exported / f"{architecture}.yaml").read_text())
        study = load_study(finished_study.storage, f"{finished_study.group}/{architecture}")
        best = best_complete_trial(study)

        assert preset["format"] == "archsweep-preset/1"
        assert preset["architecture"] == architecture
        assert preset["model"] == best.user_attrs["model_config"]
        assert preset["source"]["study"] == study.study_name
        assert preset["source"]["trial"] == best.number
        assert preset["metrics"]["val_f1"] == pytest.approx(best.value)
        assert preset["training"]["best_epoch"] == best.user_attrs["best_epoch"]
        assert preset["training"]["max_epochs"] == 3
        assert preset["data"]["num_features"] == NUM_FEATURES
        assert preset["data"]["window"] == SEQ_LEN
        assert preset["data"]["fingerprint"] == load_dataset(WATCH_SPEC).fingerprint
        assert preset["num_parameters"] == best.user_attrs["num_parameters"]
        assert preset["weights"] == f"{architecture}.safetensors"
        assert "T" in preset["source"]["created"]
        assert "device" not in preset["training"]
        models.load_preset(exported / f"{architecture}.yaml")  # valid for the reader


def test_export_best_trial_is_never_pruned(exported: Path, finished_study: FinishedStudy):
    for architecture in FLOW_ARCHITECTURES:
        preset = yaml.safe_load((exported / f"{architecture}.yaml").read_text())
        study = load_study(finished_study.storage, f"{finished_study.group}/{architecture}")
        trial = study.trials[preset["source"]["trial"]]

        assert trial.state is optuna.trial.TrialState.COMPLETE


def test_from_preset_in_separate_process(exported: Path):
    script = (
        "import sys, torch, models\n"
        "for path in sys.argv[1:]:\n"
        "    model = models.from_preset(path)\n"
        f"    logits = model(torch.randn(5, {SEQ_LEN}, {NUM_FEATURES}))\n"
        "    mean, std = model.predict(torch.randn(5, "
        f"{SEQ_LEN}, {NUM_FEATURES}))\n"
        "    assert logits.shape == (5,), logits.shape\n"
        "    assert mean.shape == (5,) and std.shape == (5,)\n"
        "    print(path, 'ok')\n"
    )
    paths = [str(exported / f"{arch}.yaml") for arch in FLOW_ARCHITECTURES]
    result = subprocess.run(
        [sys.executable, "-c", script, *paths], cwd=REPO_ROOT, env=subprocess_env(),
        capture_output=True, text=True, timeout=120, check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.count(" ok") == len(FLOW_ARCHITECTURES)


def test_from_preset_loads_trial_weights(exported: Path, finished_study: FinishedStudy):
    from safetensors.torch import load_file

    from search.records import weights_file

    study = load_study(finished_study.storage, f"{finished_study.group}/transformer")
    kept = load_file(weights_file(study, best_complete_trial(study)))
    model = models.from_preset(exported / "transformer.yaml")

    for name, tensor in model.state_dict().items():
        assert (tensor == kept[name]).all(), name


def test_export_without_weights_names_none(finished_study: FinishedStudy, tmp_path: Path):
    status = main([
        "export", "--study", finished_study.group, "--storage", str(finished_study.storage),
        "--out", str(tmp_path),
    ])
    preset = yaml.safe_load((tmp_path / "transformer.yaml").read_text())

    assert status == EXIT_OK
    assert "weights" not in preset
    assert not list(tmp_path.glob("*.safetensors"))


def test_export_without_weights_removes_stale_weights(
    finished_study: FinishedStudy, exported: Path, tmp_path: Path
):
    out = tmp_path / "presets"
    shutil.copytree(exported, out)
    assert (out / "transformer.safetensors").is_file()

    status = main([
        "export", "--study", finished_study.group, "--storage", str(finished_study.storage),
        "--out", str(out),
    ])

    assert status == EXIT_OK
    assert not list(out.glob("*.safetensors"))
    assert (out / "transformer.yaml").is_file()


def test_export_files_follow_umask(finished_study: FinishedStudy, tmp_path: Path):
    previous = os.umask(0o022)
    try:
        status = main([
            "export", "--study", finished_study.group, "--storage", str(finished_study.storage),
            "--out", str(tmp_path), "--weights",
        ])
    finally:
        os.umask(previous)

    assert status == EXIT_OK
    for path in [*tmp_path.glob("*.yaml"), *tmp_path.glob("*.safetensors")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_export_without_completed_trial_exits_1(tmp_path: Path, tiny_space: Path, capsys):
    storage = tmp_path / "studies.journal"
    add_study_without_completed_trial(storage, "empty", tiny_space)

    status = main(["export", "--study", "empty", "--storage", str(storage), "--out", str(tmp_path / "out")])
    line = error_line(capsys.readouterr().err)

    assert status == EXIT_FAILURE
    assert "empty/tft has no completed trial" in line
    assert "exported 0 of 1" in line
    assert not (tmp_path / "out" / "tft.yaml").exists()


def test_export_keeps_others_without_trial(
    finished_study: FinishedStudy, tmp_path: Path, tiny_space: Path, capsys
):
    storage = tmp_path / "copy.journal"
    shutil.copyfile(finished_study.storage, storage)
    add_study_without_completed_trial(storage, finished_study.group, tiny_space)
    out = tmp_path / "out"

    status = main(["export", "--study", finished_study.group, "--storage", str(storage), "--out", str(out)])
    captured = capsys.readouterr()

    assert status == EXIT_FAILURE
    assert f"{finished_study.group}/tft has no completed trial" in error_line(captured.err)
    assert sorted(path.name for path in out.glob("*.yaml")) == sorted(
        f"{arch}.yaml" for arch in FLOW_ARCHITECTURES
    )


def test_export_never_writes_storage_password(
    finished_study: FinishedStudy, postgres_database: str, tmp_path: Path
):
    from sqlalchemy.engine import make_url

    # The test server trusts local logins, so any password works and must stay hidden.
    with_password = make_url(postgres_database).set(password="s3cret-pw-7").render_as_string(
        hide_password=False
    )
    optuna.copy_study(
        from_study_name=f"{finished_study.group}/transformer",
        from_storage=open_journal(finished_study.storage),
        to_storage=with_password,
    )
    out = tmp_path / "out"

    status = main(["export", "--study", finished_study.group, "--storage", with_password, "--out", str(out)])
    text = (out / "transformer.yaml").read_text()

    assert status == EXIT_OK
    assert "s3cret-pw-7" not in text
    assert "***" in yaml.safe_load(text)["source"]["storage"]
