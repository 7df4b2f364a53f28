"""Plotly figures of archsweep trials, shared by the dashboard and the HTML report.

Every builder reads the trial record that the search engine writes: the intermediate value
at each epoch is the validation F1, and the user attributes ``train_f1_curve``,
``val_f1_curve``, ``best_epoch``, ``num_parameters`` and, on a stopped trial, ``pruned_by``
with ``prune_reason`` or ``fail_reason``. Trials without curves (for example trials of a
study that archsweep did not write) are skipped, never an error.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

__all__ = [
    "FINISHED_STATES",
    "TITLE_F1_CURVES",
    "TITLE_F1_VS_PARAMETERS",
    "TITLE_TRAIN_VS_VAL",
    "TrialSummary",
    "f1_curves_figure",
    "f1_vs_parameters_figure",
    "is_archsweep_trial",
    "select_curve_trials",
    "study_summaries",
    "summarize_trial",
    "summarize_trials",
    "train_vs_val_figure",
]

FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

# Figure titles. Tests and users find the figures by these titles, on the dashboard page
# and in the report.
TITLE_F1_CURVES = "Train vs validation F1 by epoch"
TITLE_TRAIN_VS_VAL = "Train vs validation F1 at the best epoch"
TITLE_F1_VS_PARAMETERS = "Best validation F1 vs parameter count"

# F1 values are stored with 4 decimals: finer steps are invisible in a plot and would only
# make the figure JSON (kept in the study's system attributes) longer.
F1_DECIMALS = 4

MAX_EPOCH_TICKS = 10

# One colour per outcome, so the same outcome looks the same in every figure.
_OUTCOME_COLOURS = {
    "complete": "#1f77b4",
    "pruned: underfit": "#d62728",
    "pruned": "#ff7f0e",
    "failed": "#7f7f7f",
}
_TRAIN_COLOUR = "#2ca02c"
_RECORD_KEYS = ("train_f1_curve", "val_f1_curve", "num_parameters", "pruned_by", "fail_reason")
_VAL_COLOUR = "#1f77b4"


@dataclasses.dataclass(frozen=True)
class TrialSummary:
    """The parts of one finished trial's record that the figures and notes show."""

    number: int
    state: TrialState
    outcome: str  # "complete", "pruned: <pruned_by>", "pruned" or "failed"
    params: dict[str, Any]
    epochs: list[int]  # epoch numbers, aligned with both curves
    train_f1: list[float | None]
    val_f1: list[float | None]
    val_auprc: list[float | None]
    best_epoch: int | None  # epoch number of the best validation F1
    best_val_f1: float | None
    train_f1_at_best: float | None
    num_parameters: int | None
    reason: str | None  # prune_reason or fail_reason

    @property
    def has_curves(self) -> bool:
        return bool(self.val_f1) or bool(self.train_f1)


def _finite_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value):
        return None
    return round(float(value), F1_DECIMALS)


def _curve(trial: FrozenTrial, key: str) -> list[float | None]:
    values = trial.user_attrs.get(key)
    if not isinstance(values, list):
        return []
    return [_finite_or_none(value) for value in values]


def _epoch_numbers(trial: FrozenTrial, length: int) -> list[int]:
    # The curves are indexed by epoch and the intermediate values are reported at the same
    # epochs, so their steps give the numbering (starting at 0 or 1) when the lengths match.
    steps = sorted(trial.intermediate_values)
    if len(steps) == length:
        return steps
    first = steps[0] if steps else 0
    return list(range(first, first + length))


def _outcome(trial: FrozenTrial) -> str:
    if trial.state == TrialState.COMPLETE:
        return "complete"
    if trial.state == TrialState.PRUNED:
        pruned_by = trial.user_attrs.get("pruned_by")
        return f"pruned: {pruned_by}" if pruned_by else "pruned"
    if trial.state == TrialState.FAIL:
        return "failed"
    return trial.state.name.lower()


def summarize_trial(trial: FrozenTrial) -> TrialSummary:
    """Read the archsweep trial record of ``trial`` into a :class:`TrialSummary`."""
    train_f1 = _curve(trial, "train_f1_curve")
    val_f1 = _curve(trial, "val_f1_curve")
    val_auprc = _curve(trial, "val_auprc_curve")
    length = max(len(train_f1), len(val_f1), len(val_auprc))
    train_f1 += [None] * (length - len(train_f1))
    val_f1 += [None] * (length - len(val_f1))
    val_auprc += [None] * (length - len(val_auprc))
    epochs = _epoch_numbers(trial, length)

    # The best epoch is where the validation F1 peaks (the first peak on ties), as for the
    # trial value. The train F1 of that epoch shows how well the model fit its data.
    best_index: int | None = None
    for index, value in enumerate(val_f1):
        if value is None:
            continue
        if best_index is None or value > (val_f1[best_index] or 0.0):
            best_index = index

    best_epoch = trial.user_attrs.get("best_epoch")
    if not isinstance(best_epoch, int) or isinstance(best_epoch, bool):
        best_epoch = epochs[best_index] if best_index is not None else None

    best_val_f1 = _finite_or_none(trial.value) if trial.state == TrialState.COMPLETE else None
    if best_val_f1 is None and best_index is not None:
        best_val_f1 = val_f1[best_index]

    num_parameters = trial.user_attrs.get("num_parameters")
    if not isinstance(num_parameters, int) or isinstance(num_parameters, bool):
        num_parameters = None

    reason = trial.user_attrs.get("prune_reason") or trial.user_attrs.get("fail_reason")

    return TrialSummary(
        number=trial.number,
        state=trial.state,
        outcome=_outcome(trial),
        params=dict(trial.params),
        epochs=epochs,
        train_f1=train_f1,
        val_f1=val_f1,
        val_auprc=val_auprc,
        best_epoch=best_epoch,
        best_val_f1=best_val_f1,
        train_f1_at_best=train_f1[best_index] if best_index is not None else None,
        num_parameters=num_parameters,
        reason=str(reason) if reason else None,
    )


def is_archsweep_trial(trial: FrozenTrial) -> bool:
    """Tell whether ``trial`` carries any part of the archsweep trial record."""
    return any(key in trial.user_attrs for key in _RECORD_KEYS)


def summarize_trials(trials: Iterable[FrozenTrial]) -> list[TrialSummary]:
    """Summarise the finished trials among ``trials``, in trial-number order."""
    finished = [trial for trial in trials if trial.state in FINISHED_STATES]
    return [summarize_trial(trial) for trial in sorted(finished, key=lambda t: t.number)]


def select_curve_trials(
    summaries: Sequence[TrialSummary], *, max_best: int = 10, max_stopped: int = 10
) -> list[TrialSummary]:
    """Pick the trials whose curves a figure shows: the best completed and the latest stopped.

    The best ``max_best`` completed trials by best validation F1 come first, then the
    ``max_stopped`` most recent pruned or failed trials, which show why trials stopped.
    Only trials with curves are picked.
    """
    with_curves = [summary for summary in summaries if summary.has_curves]
    completed = [s for s in with_curves if s.state == TrialState.COMPLETE]
    completed.sort(key=lambda s: (-(s.best_val_f1 or 0.0), s.number))
    stopped = [s for s in with_curves if s.state != TrialState.COMPLETE]
    stopped.sort(key=lambda s: -s.number)
    return completed[:max_best] + stopped[:max_stopped]


def _apply_style(figure: go.Figure) -> go.Figure:
    # The plotly default template adds about 6.5 KB of JSON to every figure, and the
    # dashboard stores its figures in the study and rewrites them as trials finish, so the
    # figures carry a few explicit settings instead.
    figure.update_layout(
        template="none",
        paper_bgcolor="white",
        plot_bgcolor="white",
        font={"family": "sans-serif", "size": 12},
        hovermode="closest",
    )
    figure.update_xaxes(showgrid=True, gridcolor="#e5e5e5", zeroline=False)
    figure.update_yaxes(showgrid=True, gridcolor="#e5e5e5", zeroline=False)
    return figure


def _trial_label(summary: TrialSummary) -> str:
    return f"trial {summary.number} ({summary.outcome})"


def _trial_caption(summary: TrialSummary) -> str:
    parts = [_trial_label(summary).capitalize()]
    if summary.best_epoch is not None and summary.best_val_f1 is not None:
        parts.append(f"best val F1 {summary.best_val_f1:.3f} at epoch {summary.best_epoch}")
    if summary.num_parameters is not None:
        parts.append(f"{summary.num_parameters:,} parameters")
    caption = ", ".join(parts)
    if summary.reason:
        caption += f"<br>{summary.reason}"
    return caption


def _caption_annotation(text: str) -> dict[str, Any]:
    return {
        "text": text,
        "xref": "paper",
        "yref": "paper",
        "x": 0.0,
        "y": 1.0,
        "xanchor": "left",
        "yanchor": "bottom",
        "showarrow": False,
        "align": "left",
        "font": {"size": 11},
    }


def _best_epoch_shape(summary: TrialSummary) -> list[dict[str, Any]]:
    if summary.best_epoch is None:
        return []
    return [
        {
            "type": "line",
            "xref": "x",
            "yref": "paper",
            "x0": summary.best_epoch,
            "x1": summary.best_epoch,
            "y0": 0,
            "y1": 1,
            "line": {"dash": "dot", "color": "#999999", "width": 1},
        }
    ]


def f1_curves_figure(
    summaries: Sequence[TrialSummary], *, title: str = TITLE_F1_CURVES
) -> go.Figure:
    """Plot the train and validation F1 of each trial by epoch, one trial at a time.

    A drop-down menu selects the trial; the caption gives its outcome, its best epoch
    (dotted line) and the prune or fail reason. Validation F1 above a flat train F1 marks
    an underfit model, train F1 far above the validation F1 an overfit one.
    """
    figure = go.Figure()
    with_curves = [summary for summary in summaries if summary.has_curves]
    if not with_curves:
        figure.update_layout(title={"text": title}, xaxis_title="epoch", yaxis_title="F1")
        figure.add_annotation(_caption_annotation("No finished trial with F1 curves yet."))
        return _apply_style(figure)

    for position, summary in enumerate(with_curves):
        visible = position == 0  # the first trial shows until the menu picks another
        figure.add_trace(
            go.Scatter(
                x=summary.epochs,
                y=summary.train_f1,
                name="train F1",
                mode="lines+markers",
                line={"color": _TRAIN_COLOUR, "dash": "dash"},
                visible=visible,
                legendgroup="train",
            )
        )
        figure.add_trace(
            go.Scatter(
                x=summary.epochs,
                y=summary.val_f1,
                name="validation F1",
                mode="lines+markers",
                line={"color": _VAL_COLOUR},
                visible=visible,
                legendgroup="val",
            )
        )

    buttons = []
    for position, summary in enumerate(with_curves):
        # Two traces per trial (train, validation); the button shows this trial's pair.
        trace_visible = [False] * (2 * len(with_curves))
        trace_visible[2 * position] = trace_visible[2 * position + 1] = True
        buttons.append(
            {
                "label": _trial_label(summary),
                "method": "update",
                "args": [
                    {"visible": trace_visible},
                    {
                        "annotations": [_caption_annotation(_trial_caption(summary))],
                        "shapes": _best_epoch_shape(summary),
                    },
                ],
            }
        )

    num_epochs = max(len(summary.epochs) for summary in with_curves)
    figure.update_layout(
        title={"text": title},
        xaxis_title="epoch",
        # Whole epochs only: about 10 ticks whatever the number of epochs.
        xaxis_dtick=max(1, math.ceil(num_epochs / MAX_EPOCH_TICKS)),
        yaxis_title="F1",
        yaxis_range=[0, 1.02],
        annotations=[_caption_annotation(_trial_caption(with_curves[0]))],
        shapes=_best_epoch_shape(with_curves[0]),
        updatemenus=[
            {
                "buttons": buttons,
                "direction": "down",
                "x": 1.0,
                "xanchor": "right",
                "y": 1.22,
                "yanchor": "top",
                "showactive": True,
            }
        ],
        margin={"t": 110},
        legend={"orientation": "h", "y": -0.2},
    )
    return _apply_style(figure)


def _outcome_colour(outcome: str) -> str:
    if outcome in _OUTCOME_COLOURS:
        return _OUTCOME_COLOURS[outcome]
    return _OUTCOME_COLOURS["pruned"] if outcome.startswith("pruned") else "#9467bd"


def _hover_text(summary: TrialSummary) -> str:
    lines = [_trial_label(summary)]
    for name, value in sorted(summary.params.items()):
        lines.append(f"{name}: {value}")
    if summary.reason:
        lines.append(summary.reason)
    return "<br>".join(lines)


def _group_by_outcome(summaries: Iterable[TrialSummary]) -> dict[str, list[TrialSummary]]:
    groups: dict[str, list[TrialSummary]] = {}
    for summary in summaries:
        groups.setdefault(summary.outcome, []).append(summary)
    return dict(sorted(groups.items(), key=lambda item: (item[0] != "complete", item[0])))


def train_vs_val_figure(
    summaries: Sequence[TrialSummary], *, title: str = TITLE_TRAIN_VS_VAL
) -> go.Figure:
    """Plot each trial's train F1 against its validation F1 at its best epoch.

    Underfit trials sit above the diagonal (validation F1 higher than train F1), overfit
    trials far below it (train F1 far above validation F1). Colours give the outcome.
    """
    figure = go.Figure()
    points = [s for s in summaries if s.train_f1_at_best is not None and s.best_val_f1 is not None]
    for outcome, group in _group_by_outcome(points).items():
        figure.add_trace(
            go.Scatter(
                x=[s.train_f1_at_best for s in group],
                y=[s.best_val_f1 for s in group],
                mode="markers",
                name=outcome,
                marker={"color": _outcome_colour(outcome), "size": 9},
                text=[_hover_text(s) for s in group],
                hovertemplate="%{text}<br>train F1 %{x:.3f}, val F1 %{y:.3f}<extra></extra>",
            )
        )
    figure.add_shape(type="line", x0=0, y0=0, x1=1, y1=1, line={"dash": "dot", "color": "#999999"})
    figure.update_layout(
        title={"text": title},
        xaxis_title="train F1 at the best epoch",
        yaxis_title="best validation F1",
        xaxis_range=[0, 1.02],
        yaxis_range=[0, 1.02],
    )
    if not points:
        figure.add_annotation(_caption_annotation("No finished trial with F1 curves yet."))
    return _apply_style(figure)


def f1_vs_parameters_figure(
    summaries_by_name: Mapping[str, Sequence[TrialSummary]],
    *,
    title: str = TITLE_F1_VS_PARAMETERS,
    colour_by: str = "outcome",
) -> go.Figure:
    """Plot each trial's best validation F1 against its parameter count (log scale).

    ``summaries_by_name`` maps a series name (an architecture) to its trials. With
    ``colour_by="outcome"`` the points are coloured by outcome and one series is
    expected; with ``colour_by="series"`` each series gets its own colour.
    """
    if colour_by not in ("outcome", "series"):
        raise ValueError(f"colour_by must be 'outcome' or 'series', got {colour_by!r}")

    figure = go.Figure()
    num_points = 0
    for series_name, summaries in summaries_by_name.items():
        points = [
            s for s in summaries if s.num_parameters is not None and s.best_val_f1 is not None
        ]
        num_points += len(points)
        if colour_by == "series":
            groups = {series_name: points} if points else {}
        else:
            groups = _group_by_outcome(points)
        for group_name, group in groups.items():
            marker: dict[str, Any] = {"size": 9}
            if colour_by == "outcome":
                marker["color"] = _outcome_colour(group_name)
            figure.add_trace(
                go.Scatter(
                    x=[s.num_parameters for s in group],
                    y=[s.best_val_f1 for s in group],
                    mode="markers",
                    name=group_name,
                    marker=marker,
                    text=[f"{series_name}<br>{_hover_text(s)}" for s in group],
                    hovertemplate=("%{text}<br>%{x:,} parameters, val F1 %{y:.3f}<extra></extra>"),
                )
            )
    figure.update_layout(
        title={"text": title},
        xaxis_title="trainable parameters",
        yaxis_title="best validation F1",
        xaxis_type="log",
        yaxis_range=[0, 1.02],
    )
    if num_points == 0:
        figure.add_annotation(_caption_annotation("No finished trial with a parameter count yet."))
    return _apply_style(figure)


def study_summaries(study: optuna.Study) -> list[TrialSummary]:
    """Summarise the finished trials of ``study``."""
    return summarize_trials(study.get_trials(deepcopy=False, states=FINISHED_STATES))
