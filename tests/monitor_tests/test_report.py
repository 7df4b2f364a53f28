"""``archsweep report``: one offline HTML file per study group."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search import figures, report
from storage import open_storage

from ._records import add_record_trial
from .conftest import TrainedGroup

# Any script, stylesheet, image or frame fetched over the network.
REMOTE_REFERENCE = re.compile(
    r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*[\"']?(?:https?:)?//",
    re.IGNORECASE,
)


def _report_args(storage: Path | str, group: str, out: Path) -> argparse.Namespace:
    return argparse.Namespace(storage=str(storage), study=group, out=str(out))


@pytest.fixture(scope="module")
def trained_report(trained_group: TrainedGroup, tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("report") / "nested" / "report.html"
    status = report.run_report(_report_args(trained_group.storage_path, trained_group.group, out))
    assert status == 0
    return out.read_text(encoding="utf-8")


def test_report_fetches_nothing_remote(trained_report: str) -> None:
    assert REMOTE_REFERENCE.search(trained_report) is None
    # plotly.js is inline: the page defines Plotly itself.
    assert "<script src=" not in trained_report
    assert trained_report.count("Plotly.newPlot") >= 1


def test_report_has_section_per_architecture(
    trained_report: str, trained_group: TrainedGroup
) -> None:
    for architecture in trained_group.architectures:
        assert f'<section class="architecture" id="arch-{architecture}">' in trained_report
        for figure_id in ("history", "curves", "train-vs-val", "f1-vs-parameters"):
            assert f'id="arch-{architecture}-{figure_id}"' in trained_report
        assert f"{figures.TITLE_F1_CURVES}: {architecture}" in trained_report
        assert f"Study <code>{trained_group.study_name(architecture)}</code>" in trained_report
    assert 'id="summary-f1-vs-parameters"' in trained_report


def test_report_best_config_table_lists_trials(
    trained_report: str, trained_group: TrainedGroup
) -> None:
    header = (
        "<th>trial</th><th>params</th><th>val F1</th><th>train F1</th>"
        "<th>best epoch</th><th>num params</th>"
    )
    assert trained_report.count(header) == len(trained_group.architectures)


def test_report_unknown_group_lists_existing(
    trained_group: TrainedGroup, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "report.html"

    status = report.run_report(_report_args(trained_group.storage_path, "no-such-group", out))

    assert status == 1
    assert not out.exists()
    assert "no-such-group" in caplog.text
    assert f"{trained_group.group} (" in caplog.text
    for architecture in trained_group.architectures:
        assert architecture in caplog.text


def test_report_invalid_storage_is_usage_error(tmp_path: Path) -> None:
    status = report.run_report(
        _report_args("postgres://user@127.0.0.1/db", "group", tmp_path / "report.html")
    )

    assert status == 2


def _journal_study(tmp_path: Path, name: str) -> tuple[str, optuna.Study]:
    path = str(tmp_path / "studies.journal")
    study = optuna.create_study(
        study_name=name, storage=open_storage(path, heartbeat_interval=0), direction="maximize"
    )
    return path, study


def test_report_out_directory_is_rejected(tmp_path: Path) -> None:
    path, study = _journal_study(tmp_path, "small/transformer")
    add_record_trial(study, [0.5, 0.6], [0.4, 0.5])
    out_dir = tmp_path / "reports"
    out_dir.mkdir()

    assert report.run_report(_report_args(path, "small", out_dir)) == 1

    assert list(out_dir.iterdir()) == []
    assert not [name for name in tmp_path.iterdir() if name.name.startswith(".reports.")]


def test_report_too_few_trials_for_importance(tmp_path: Path) -> None:
    path, study = _journal_study(tmp_path, "small/transformer")
    add_record_trial(study, [0.5, 0.6], [0.4, 0.5])
    out = tmp_path / "report.html"

    assert report.run_report(_report_args(path, "small", out)) == 0

    text = out.read_text(encoding="utf-8")
    assert "Parameter importances need at least 2 completed trials; this study has 1." in text
    assert 'id="arch-transformer-importances"' not in text
    assert 'id="arch-transformer-curves"' in text


def test_report_lists_stopped_trials_escaped(tmp_path: Path) -> None:
    path, study = _journal_study(tmp_path, "stops/transformer")
    add_record_trial(study, [0.8, 0.9], [0.7, 0.75])
    add_record_trial(
        study,
        [0.2, 0.2],
        [0.3, 0.35],
        state=TrialState.PRUNED,
        pruned_by="underfit",
        prune_reason="underfit: val F1 0.350 > train F1 0.200 <script>alert(1)</script>",
    )
    add_record_trial(study, [0.1], [0.1], state=TrialState.FAIL, fail_reason="loss became nan")
    out = tmp_path / "report.html"

    assert report.run_report(_report_args(path, "stops", out)) == 0

    text = out.read_text(encoding="utf-8")
    assert "<td>pruned: underfit</td>" in text
    assert "underfit: val F1 0.350 &gt; train F1 0.200 &lt;script&gt;" in text
    assert "<script>alert(1)</script>" not in text
    assert "<td>failed</td>" in text
    assert "<td>loss became nan</td>" in text


def test_report_group_without_finished_trials(tmp_path: Path) -> None:
    path, study = _journal_study(tmp_path, "fresh/mcdropout")
    study.ask()  # one running trial
    out = tmp_path / "report.html"

    assert report.run_report(_report_args(path, "fresh", out)) == 0

    text = out.read_text(encoding="utf-8")
    assert "0 finished trials" in text
    assert ", 1 running." in text
    assert "No finished trial yet." in text
