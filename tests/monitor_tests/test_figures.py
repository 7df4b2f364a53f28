"""Figures of archsweep trials: what they read from the trial record and what they draw."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from search import figures

from ._records import record_trial


def test_summarize_trial_reads_completed_record() -> None:
    trial = record_trial([0.5, 0.7, 0.9], [0.4, 0.6, 0.55], num_parameters=1234)

    summary = figures.summarize_trial(trial)

    assert summary.outcome == "complete"
    assert summary.epochs == [0, 1, 2]
    assert summary.train_f1 == [0.5, 0.7, 0.9]
    assert summary.val_f1 == [0.4, 0.6, 0.55]
    assert summary.best_epoch == 1
    assert summary.best_val_f1 == 0.6
    assert summary.train_f1_at_best == 0.7
    assert summary.num_parameters == 1234
    assert summary.reason is None


def test_summarize_trial_reads_pruned_reason() -> None:
    reason = "underfit: val F1 0.310 > train F1 0.200 and train F1 flat for 5 epochs"
    trial = record_trial(
        [0.2, 0.2, 0.2],
        [0.3, 0.31, 0.3],
        state=TrialState.PRUNED,
        pruned_by="underfit",
        prune_reason=reason,
    )

    summary = figures.summarize_trial(trial)

    assert summary.outcome == "pruned: underfit"
    assert summary.reason == reason
    # A pruned trial has no value; its best validation F1 comes from the curve.
    assert summary.best_val_f1 == 0.31
    assert summary.best_epoch == 1
    assert summary.train_f1_at_best == 0.2


def test_summarize_trial_failed_without_curves() -> None:
    trial = record_trial([0.1], [0.1], state=TrialState.FAIL, fail_reason="loss became nan")
    trial.user_attrs.pop("train_f1_curve")
    trial.user_attrs.pop("val_f1_curve")
    trial.user_attrs.pop("val_auprc_curve")

    summary = figures.summarize_trial(trial)

    assert summary.outcome == "failed"
    assert summary.reason == "loss became nan"
    assert not summary.has_curves
    assert summary.best_val_f1 is None


def test_summarize_trial_epochs_follow_intermediate_steps() -> None:
    trial = record_trial([0.5, 0.6], [0.4, 0.5], first_epoch=1)

    summary = figures.summarize_trial(trial)

    assert summary.epochs == [1, 2]
    assert summary.best_epoch == 2


def test_summarize_trial_non_finite_values_become_gaps() -> None:
    trial = record_trial([0.5, float("nan"), 0.6], [0.4, 0.45, float("inf")])

    summary = figures.summarize_trial(trial)

    assert summary.train_f1 == [0.5, None, 0.6]
    assert summary.val_f1 == [0.4, 0.45, None]


def test_select_curve_trials_best_then_latest_stopped() -> None:
    trials = [
        record_trial([0.5], [value], number=number)
        for number, value in enumerate((0.3, 0.9, 0.6, 0.8))
    ]
    trials += [
        record_trial([0.2], [0.2], state=TrialState.PRUNED, pruned_by="median", number=number)
        for number in (4, 5, 6)
    ]
    summaries = figures.summarize_trials(trials)

    selected = figures.select_curve_trials(summaries, max_best=2, max_stopped=2)

    assert [s.number for s in selected] == [1, 3, 6, 5]


def test_f1_curves_figure_one_trial_visible_per_menu_entry() -> None:
    trials = [
        record_trial([0.5, 0.7], [0.4, 0.6]),
        record_trial(
            [0.2, 0.2],
            [0.3, 0.3],
            state=TrialState.PRUNED,
            pruned_by="underfit",
            prune_reason="underfit: val F1 above a flat train F1",
            number=1,
        ),
    ]
    summaries = figures.summarize_trials(trials)

    figure = figures.f1_curves_figure(summaries)

    assert figure.layout.title.text == figures.TITLE_F1_CURVES
    assert len(figure.data) == 4
    assert [trace.visible for trace in figure.data] == [True, True, False, False]
    assert list(figure.data[2].y) == [0.2, 0.2]
    buttons = figure.layout.updatemenus[0].buttons
    assert [button.label for button in buttons] == [
        "trial 0 (complete)",
        "trial 1 (pruned: underfit)",
    ]
    assert buttons[1].args[0]["visible"] == [False, False, True, True]
    assert "val F1 above a flat train F1" in buttons[1].args[1]["annotations"][0]["text"]


def test_f1_curves_figure_without_curves_says_so() -> None:
    figure = figures.f1_curves_figure([])

    assert len(figure.data) == 0
    assert "No finished trial" in figure.layout.annotations[0].text


def test_train_vs_val_figure_groups_by_outcome() -> None:
    trials = [
        record_trial([0.9, 0.95], [0.7, 0.8]),
        record_trial(
            [0.2, 0.2], [0.3, 0.35], state=TrialState.PRUNED, pruned_by="underfit", number=1
        ),
    ]
    summaries = figures.summarize_trials(trials)

    figure = figures.train_vs_val_figure(summaries)

    traces = {trace.name: trace for trace in figure.data}
    assert set(traces) == {"complete", "pruned: underfit"}
    assert list(traces["complete"].x) == [0.95]
    assert list(traces["complete"].y) == [0.8]
    # Underfit: validation F1 above train F1, above the diagonal.
    assert list(traces["pruned: underfit"].x) == [0.2]
    assert list(traces["pruned: underfit"].y) == [0.35]


def test_f1_vs_parameters_figure_series_and_log_axis() -> None:
    small = figures.summarize_trials([record_trial([0.5], [0.5], num_parameters=100)])
    large = figures.summarize_trials([record_trial([0.9], [0.8], num_parameters=100_000)])

    figure = figures.f1_vs_parameters_figure(
        {"transformer": small, "mcdropout": large}, colour_by="series"
    )

    assert figure.layout.xaxis.type == "log"
    assert [trace.name for trace in figure.data] == ["transformer", "mcdropout"]
    assert list(figure.data[1].x) == [100_000]
    assert list(figure.data[1].y) == [0.8]


def test_f1_vs_parameters_figure_rejects_unknown_colouring() -> None:
    with pytest.raises(ValueError, match="colour_by"):
        figures.f1_vs_parameters_figure({}, colour_by="architecture")
