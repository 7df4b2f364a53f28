"""optuna-dashboard over archsweep studies, with each trial's F1 curves and outcome attached.

optuna-dashboard shows what Optuna records (values, intermediate values, parameters, user
attributes). This module adds what a user needs to judge archsweep trials without leaving
it, through the dashboard's own extension points:

- a Markdown note on every finished trial: outcome, prune or fail reason, best epoch,
  parameter count and the train, validation F1 and validation AUPRC of every epoch;
- study-level plotly figures on the study page: train vs validation F1 by epoch (one trial
  at a time, from a drop-down menu), train vs validation F1 at the best epoch of every
  trial, and best validation F1 vs parameter count;
- a study note that counts the outcomes and says how to read the figures.

The engine attaches these when a trial ends (:class:`PublishTrialCallback`), and
``archsweep dashboard`` attaches them to older studies at start and refreshes the figures
while it serves.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from search import figures
from storage import StorageError

# optuna_dashboard is imported inside the functions that use it, because importing it loads
# its web server (1.8 s on a 2-core machine), which a training worker need not pay.

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "GRAPH_ID_F1_CURVES",
    "GRAPH_ID_F1_VS_PARAMETERS",
    "GRAPH_ID_TRAIN_VS_VAL",
    "PublishTrialCallback",
    "add_dashboard_arguments",
    "build_trial_note",
    "publish_all_studies",
    "publish_study",
    "publish_study_figures",
    "publish_trial",
    "run_dashboard",
]

_logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080

# Graph object ids of the study-level figures. A fixed id makes each write replace the
# previous version of the figure instead of adding one.
GRAPH_ID_F1_CURVES = "archsweep-f1-curves"
GRAPH_ID_TRAIN_VS_VAL = "archsweep-train-vs-val-f1"
GRAPH_ID_F1_VS_PARAMETERS = "archsweep-f1-vs-parameters"

# The drop-down of the F1-curve figure lists the best completed trials and the latest
# stopped ones. The figure is rewritten whole on every update and stored in the study's
# system attributes (2 KB per row), so its size must not grow with the number of trials.
CURVE_FIGURE_MAX_BEST = 10
CURVE_FIGURE_MAX_STOPPED = 10

# How often the dashboard command looks for newly finished trials, in seconds. Each pass
# reads the finished trials of every study.
DASHBOARD_REFRESH_INTERVAL_S = 30.0

# Notes that this module writes start with these headings. A note that starts otherwise was
# written by a user in the dashboard, so it is never replaced.
TRIAL_NOTE_HEADING = "### archsweep trial "
STUDY_NOTE_HEADING = "### archsweep study "

_SPARK_LEVELS = "▁▂▃▄▅▆▇█"

# Errors of a storage that cannot be read or written right now. Publishing is an extra, so
# these are logged and the caller (a study's optimisation, the dashboard) goes on.
_STORAGE_ERRORS = (optuna.exceptions.StorageInternalError, StorageError, OSError)


def _storage_and_id(study: optuna.Study) -> tuple[BaseStorage, int]:
    # Study keeps both private; optuna-dashboard's own helpers read the same attributes.
    return study._storage, study._study_id


def _sparkline(values: Sequence[float | None]) -> str:
    # F1 lies in [0, 1], so the levels are absolute and two sparklines compare directly.
    characters = []
    for value in values:
        if value is None:
            characters.append(" ")
            continue
        level = min(int(value * len(_SPARK_LEVELS)), len(_SPARK_LEVELS) - 1)
        characters.append(_SPARK_LEVELS[max(level, 0)])
    return "".join(characters)


def _format_f1(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def build_trial_note(trial: FrozenTrial) -> str:
    """Build the Markdown note of a finished trial: outcome, reason, best epoch and curves."""
    summary = figures.summarize_trial(trial)
    lines = [f"{TRIAL_NOTE_HEADING}{summary.number} ({summary.outcome})", ""]

    if summary.reason:
        label = "Why it was pruned" if trial.state == TrialState.PRUNED else "Why it failed"
        lines += [f"**{label}:** {summary.reason}", ""]
    duplicate_of = trial.user_attrs.get("duplicate_of")
    if duplicate_of is not None:
        action = trial.user_attrs.get("duplicate_action", "reused")
        lines += [
            f"Same configuration as trial {duplicate_of} ({action}); not trained again.",
            "",
        ]

    parameters = f"{summary.num_parameters:,}" if summary.num_parameters is not None else "–"
    lines += [
        "| | |",
        "|---|---|",
        f"| best epoch | {summary.best_epoch if summary.best_epoch is not None else '–'} |",
        f"| best validation F1 | {_format_f1(summary.best_val_f1)} |",
        f"| train F1 at the best epoch | {_format_f1(summary.train_f1_at_best)} |",
        f"| parameters | {parameters} |",
        f"| epochs run | {len(summary.epochs)} |",
        "",
    ]

    if not summary.has_curves:
        lines.append("No F1 curves were recorded for this trial.")
        return "\n".join(lines)

    lines += [
        f"Train F1 `{_sparkline(summary.train_f1)}`  ",
        f"Validation F1 `{_sparkline(summary.val_f1)}`",
        "",
        (
            "Validation F1 above a flat train F1 marks an underfit model; train F1 far above "
            "the validation F1 marks an overfit one."
        ),
        "",
        "| epoch | train F1 | validation F1 | validation AUPRC |",
        "|---:|---:|---:|---:|",
    ]
    for epoch, train_f1, val_f1, val_auprc in zip(
        summary.epochs, summary.train_f1, summary.val_f1, summary.val_auprc, strict=True
    ):
        marker = " (best)" if epoch == summary.best_epoch else ""
        lines.append(
            f"| {epoch}{marker} | {_format_f1(train_f1)} | {_format_f1(val_f1)} | "
            f"{_format_f1(val_auprc)} |"
        )
    return "\n".join(lines)


def _build_study_note(study_name: str, summaries: Sequence[figures.TrialSummary]) -> str:
    outcomes = Counter(summary.outcome for summary in summaries)
    lines = [f"{STUDY_NOTE_HEADING}{study_name}", ""]
    lines += ["| outcome | trials |", "|---|---:|"]
    for outcome, count in sorted(outcomes.items()):
        lines.append(f"| {outcome} | {count} |")
    lines.append("")

    completed = [
        s for s in summaries if s.state == TrialState.COMPLETE and s.best_val_f1 is not None
    ]
    if completed:
        best = max(completed, key=lambda s: s.best_val_f1 or 0.0)
        parameters = f"{best.num_parameters:,}" if best.num_parameters is not None else "?"
        lines += [
            (
                f"Best: trial {best.number}, validation F1 {_format_f1(best.best_val_f1)} at "
                f"epoch {best.best_epoch}, {parameters} parameters."
            ),
            "",
        ]

    lines.append(
        "The study's main page shows train vs validation F1 by epoch (pick a trial in "
        "the menu), train vs validation F1 at each trial's best epoch (underfit trials "
        "sit above the diagonal, overfit trials far below it) and best validation F1 vs "
        "parameter count. Each trial's note gives its outcome, its prune or fail reason "
        "and its F1 by epoch."
    )
    return "\n".join(lines)


def _trial_id(trial: FrozenTrial) -> int:
    # Storage-wide trial id, the key of the trial's note. FrozenTrial keeps it private;
    # optuna-dashboard reads the same attribute.
    return trial._trial_id


def _save_note_if_ours(
    storage: BaseStorage,
    study_id: int,
    trial_id: int | None,
    body: str,
    heading: str,
    system_attrs: dict[str, Any],
) -> bool:
    # optuna-dashboard's public save_note() takes a live optuna.Trial, whose constructor
    # calls the sampler's before_trial hook, so notes on finished trials go through the
    # functions save_note is built on (optuna-dashboard 0.21), with the keys it reads.
    from optuna_dashboard._note import get_note_from_system_attrs, save_note_with_version

    note = get_note_from_system_attrs(system_attrs, trial_id)
    if note["body"] == body:
        return False
    if note["body"] and not note["body"].startswith(heading):
        _logger.debug("Kept the user's note on study %d, trial id %s", study_id, trial_id)
        return False
    save_note_with_version(storage, study_id, trial_id, note["version"] + 1, body)
    return True


def _save_figure_if_changed(
    study: optuna.Study, graph_id: str, figure: go.Figure, stored: dict[str, str]
) -> bool:
    from optuna_dashboard import save_plotly_graph_object

    figure_json = figure.to_json()
    if stored.get(graph_id) == figure_json:
        return False
    save_plotly_graph_object(study, figure, graph_object_id=graph_id)
    return True


def publish_study_figures(
    study: optuna.Study, summaries: Sequence[figures.TrialSummary] | None = None
) -> int:
    """Write the study-level figures and study note of ``study``; return how many changed.

    Figures whose content is unchanged are not rewritten. Studies without any trial that has
    F1 curves (studies that archsweep did not write) get nothing.
    """
    if summaries is None:
        summaries = figures.study_summaries(study)
    if not any(summary.has_curves for summary in summaries):
        return 0

    from optuna_dashboard._custom_plot_data import get_plotly_graph_objects

    storage, study_id = _storage_and_id(study)
    system_attrs = storage.get_study_system_attrs(study_id)
    stored = get_plotly_graph_objects(system_attrs)

    curve_trials = figures.select_curve_trials(
        summaries, max_best=CURVE_FIGURE_MAX_BEST, max_stopped=CURVE_FIGURE_MAX_STOPPED
    )
    study_figures = {
        GRAPH_ID_F1_CURVES: figures.f1_curves_figure(curve_trials),
        GRAPH_ID_TRAIN_VS_VAL: figures.train_vs_val_figure(summaries),
        GRAPH_ID_F1_VS_PARAMETERS: figures.f1_vs_parameters_figure({study.study_name: summaries}),
    }
    changed = 0
    # NOTE: two workers that rewrite the same figure at once can interleave its rows. The
    # dashboard then skips the figure until the next rewrite repairs it.
    for graph_id, figure in study_figures.items():
        changed += _save_figure_if_changed(study, graph_id, figure, stored)

    study_note = _build_study_note(study.study_name, summaries)
    changed += _save_note_if_ours(
        storage, study_id, None, study_note, STUDY_NOTE_HEADING, system_attrs
    )
    return changed


def _frozen_trial(study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> FrozenTrial:
    if isinstance(trial, FrozenTrial):
        return trial
    storage, _ = _storage_and_id(study)
    return storage.get_trial(trial._trial_id)


def publish_trial(
    study: optuna.Study, trial: optuna.Trial | FrozenTrial, *, figures_too: bool = True
) -> None:
    """Attach a finished trial's note to it and refresh the study-level figures.

    Call it when the trial has ended. A note the user wrote on the trial in the dashboard is
    kept. With ``figures_too=False`` only the note is written.
    """
    frozen = _frozen_trial(study, trial)
    if frozen.state not in figures.FINISHED_STATES:
        raise ValueError(
            f"trial {frozen.number} of study {study.study_name!r} is {frozen.state.name}; "
            "publish_trial takes a finished trial (COMPLETE, PRUNED or FAIL)"
        )

    storage, study_id = _storage_and_id(study)
    system_attrs = storage.get_study_system_attrs(study_id)
    _save_note_if_ours(
        storage,
        study_id,
        _trial_id(frozen),
        build_trial_note(frozen),
        TRIAL_NOTE_HEADING,
        system_attrs,
    )
    if figures_too:
        publish_study_figures(study)


def publish_study(study: optuna.Study) -> int:
    """Attach notes to every finished trial lacking one and refresh the study figures.

    Returns the number of notes and figures written.
    """
    trials = study.get_trials(deepcopy=False, states=figures.FINISHED_STATES)
    storage, study_id = _storage_and_id(study)
    system_attrs = storage.get_study_system_attrs(study_id)

    written = 0
    for trial in trials:
        if not figures.is_archsweep_trial(trial):
            continue
        written += _save_note_if_ours(
            storage,
            study_id,
            _trial_id(trial),
            build_trial_note(trial),
            TRIAL_NOTE_HEADING,
            system_attrs,
        )

    written += publish_study_figures(study, figures.summarize_trials(trials))
    return written


def publish_all_studies(storage: BaseStorage) -> int:
    """Run :func:`publish_study` on every study in ``storage``; return the writes made."""
    written = 0
    for frozen_study in storage.get_all_studies():
        study = optuna.load_study(study_name=frozen_study.study_name, storage=storage)
        count = publish_study(study)
        if count:
            _logger.info("Published %d notes and figures on study %r", count, study.study_name)
        written += count
    return written


class PublishTrialCallback:
    """Optuna callback that publishes each finished trial to the dashboard.

    Pass it to ``study.optimize(..., callbacks=[PublishTrialCallback()])``. Every trial gets
    its note. The study-level figures are rewritten at most once per ``min_interval_s``
    seconds in this process, because each rewrite stores the whole figure again (a journal
    file appends it). ``archsweep dashboard`` brings them up to date at start and while it
    serves. A storage error while publishing is logged and does not stop the study.
    """

    def __init__(self, *, min_interval_s: float = DASHBOARD_REFRESH_INTERVAL_S) -> None:
        if min_interval_s < 0:
            raise ValueError(f"min_interval_s must be >= 0 seconds, got {min_interval_s}")
        self._min_interval_s = min_interval_s
        self._last_figures: dict[str, float] = {}

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        now = time.monotonic()
        last = self._last_figures.get(study.study_name)
        figures_too = last is None or now - last >= self._min_interval_s
        try:
            publish_trial(study, trial, figures_too=figures_too)
        except _STORAGE_ERRORS as error:
            _logger.warning(
                "Could not publish trial %d of study %r to the dashboard: %s",
                trial.number,
                study.study_name,
                error,
            )
            return
        if figures_too:
            self._last_figures[study.study_name] = now


class _StudyRefresher(threading.Thread):
    """Background thread of the dashboard command that publishes newly finished trials."""

    def __init__(self, storage: BaseStorage, interval_s: float) -> None:
        super().__init__(name="archsweep-dashboard-refresh", daemon=True)
        self._storage = storage
        self._interval_s = interval_s
        self._stop_event = threading.Event()
        self._seen: dict[str, tuple[int, int]] = {}

    def stop(self) -> None:
        self._stop_event.set()

    def refresh_once(self) -> int:
        written = 0
        for frozen_study in self._storage.get_all_studies():
            study = optuna.load_study(study_name=frozen_study.study_name, storage=self._storage)
            finished = study.get_trials(deepcopy=False, states=figures.FINISHED_STATES)
            signature = (len(finished), max((t.number for t in finished), default=-1))
            if self._seen.get(study.study_name) == signature:
                continue
            written += publish_study(study)
            self._seen[study.study_name] = signature
        return written

    def run(self) -> None:
        while not self._stop_event.wait(self._interval_s):
            try:
                written = self.refresh_once()
            except _STORAGE_ERRORS as error:
                _logger.warning(
                    "Dashboard refresh failed, retrying in %.0f s: %s", self._interval_s, error
                )
                continue
            if written:
                _logger.info("Dashboard refresh wrote %d notes and figures", written)


def add_dashboard_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``archsweep dashboard`` to ``parser``."""
    parser.add_argument(
        "--storage",
        default=None,
        help="SQLAlchemy URL or journal file path (default: $ARCHSWEEP_STORAGE, "
        "else archsweep.journal)",
    )
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default {DEFAULT_HOST}: this machine only)",
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})"
    )


def _find_artifact_store(storage: BaseStorage) -> Any:
    """Return the artifact store of the trial weights, or None when there is not exactly one.

    optuna-dashboard serves one artifact store for all studies. Each archsweep study
    records its artifact directory, and all studies of a storage share one by default.
    """
    from optuna.artifacts import FileSystemArtifactStore

    from search.records import ATTR_ARTIFACTS_DIR

    directories = set()
    for frozen_study in storage.get_all_studies():
        directory = frozen_study.user_attrs.get(ATTR_ARTIFACTS_DIR)
        if isinstance(directory, str) and Path(directory).is_dir():
            directories.add(directory)

    if not directories:
        return None
    if len(directories) > 1:
        _logger.warning(
            "The studies keep their weights in %d directories (%s); optuna-dashboard serves "
            "one, so trial weights are not listed",
            len(directories),
            ", ".join(sorted(directories)),
        )
        return None
    directory = directories.pop()
    _logger.info("Serving trial weights from %s", directory)
    return FileSystemArtifactStore(directory)


def _dashboard_url(host: str, port: int) -> str:
    shown_host = f"[{host}]" if ":" in host else host
    return f"http://{shown_host}:{port}/dashboard/"


def run_dashboard(args: argparse.Namespace) -> int:
    """Run ``archsweep dashboard``: publish older studies, then serve until interrupted.

    Returns the exit code: 0 after Ctrl-C, 1 when the storage cannot be opened or the port
    cannot be bound, 2 for an invalid port or storage value.
    """
    from optuna_dashboard import run_server

    from storage import StorageURLError, mask_url, open_storage, resolve_storage_url

    if not 0 < args.port < 65536:
        _logger.error("--port must lie in 1..65535, got %d", args.port)
        return 2

    storage_url = resolve_storage_url(args.storage)
    try:
        # The dashboard runs no trials, so it sends no heartbeats.
        storage = open_storage(storage_url, heartbeat_interval=0)
    except StorageURLError as error:
        _logger.error("%s", error)
        return 2
    except StorageError as error:
        _logger.error("%s", error)
        return 1

    try:
        written = publish_all_studies(storage)
    except _STORAGE_ERRORS as error:
        # A read-only storage can still be viewed, only without the archsweep additions.
        _logger.warning(
            "Could not attach notes and figures to the studies in %s, serving without them: %s",
            mask_url(storage_url),
            error,
        )
    else:
        _logger.info("Published %d notes and figures on existing studies", written)

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        _logger.warning(
            "The dashboard listens on %s and has no authentication: anyone who can reach "
            "this address can read and delete studies",
            args.host,
        )

    artifact_store = _find_artifact_store(storage)
    refresher = _StudyRefresher(storage, DASHBOARD_REFRESH_INTERVAL_S)
    refresher.start()
    _logger.info(
        "Dashboard of %s at %s (Ctrl-C stops it)",
        mask_url(storage_url),
        _dashboard_url(args.host, args.port),
    )
    try:
        run_server(
            storage,
            host=args.host,
            port=args.port,
            artifact_store=artifact_store,
        )
    except OSError as error:
        _logger.error("Could not serve on %s:%d: %s", args.host, args.port, error)
        return 1
    finally:
        refresher.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m search.dashboard``, the dashboard command on its own."""
    parser = argparse.ArgumentParser(prog="python -m search.dashboard")
    add_dashboard_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return run_dashboard(args)


if __name__ == "__main__":
    raise SystemExit(main())
