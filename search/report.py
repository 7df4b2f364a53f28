"""``archsweep report``: one self-contained HTML file over the studies of a study group.

The file embeds plotly.js and every figure, so it opens offline in any browser: no script,
style or font is fetched. Each architecture gets a section with the best configurations,
the optimisation history and the parameter importances. The section continues with the
train and validation F1 curves of the best and of stopped trials, train vs validation F1
at the best epoch, best validation F1 against the parameter count, and the stopped trials
with their reasons.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import html
import json
import logging
import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
import plotly.io
import plotly.offline
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from search import figures
from search.presets import default_file_mode

__all__ = [
    "ReportError",
    "add_report_arguments",
    "build_report",
    "find_group_studies",
    "run_report",
    "write_report",
]

_logger = logging.getLogger(__name__)

# Rows of the best-configuration table of each architecture.
NUM_BEST_CONFIGS = 5
# Curves in the F1-curve figure of each architecture: the best completed trials and the
# most recent pruned or failed ones.
CURVES_MAX_BEST = 5
CURVES_MAX_STOPPED = 20
# Rows of the stopped-trial table; the newest come first.
MAX_STOPPED_ROWS = 50
# Parameter importances compare completed trials against each other, so fewer than this
# many completed trials give no importances at all.
MIN_TRIALS_FOR_IMPORTANCE = 2

_STYLE = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
.message { color: #8a5a00; background: #fff7e6; padding: 0.5em 0.8em; border-left: 3px solid #e0a000; }
.meta { color: #555; }
.figure { margin: 0.5em 0 1.5em; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""


class ReportError(ValueError):
    """The report cannot be built: no such study group, or no readable studies."""


@dataclasses.dataclass
class _ArchitectureStudy:
    architecture: str
    study: optuna.Study
    summaries: list[figures.TrialSummary]
    num_running: int


def _split_study_name(study_name: str) -> tuple[str, str] | None:
    # Study names are "<group>/<architecture>"; the group may itself contain "/".
    if "/" not in study_name:
        return None
    group, architecture = study_name.rsplit("/", 1)
    return group, architecture


def _describe_existing_groups(study_names: Sequence[str]) -> str:
    groups: dict[str, list[str]] = {}
    others: list[str] = []
    for name in study_names:
        parts = _split_study_name(name)
        if parts is None:
            others.append(name)
        else:
            groups.setdefault(parts[0], []).append(parts[1])
    if not groups and not others:
        return "the storage has no studies"

    described = [
        f"{group} ({', '.join(sorted(architectures))})"
        for group, architectures in sorted(groups.items())
    ]
    if others:
        described.append("studies outside any group: " + ", ".join(sorted(others)))
    return "existing study groups: " + "; ".join(described)


def _architecture_order(architecture: str) -> tuple[int, str]:
    from models import ARCHITECTURES

    if architecture in ARCHITECTURES:
        return ARCHITECTURES.index(architecture), architecture
    return len(ARCHITECTURES), architecture


def find_group_studies(storage: BaseStorage, group: str) -> dict[str, optuna.Study]:
    """Load the studies ``<group>/<architecture>`` of ``group``, keyed by architecture.

    Raises:
        ReportError: the storage has no study in the group; the message lists the groups
            and studies it does have.
    """
    study_names = [frozen.study_name for frozen in storage.get_all_studies()]
    architectures = []
    for name in study_names:
        parts = _split_study_name(name)
        if parts is not None and parts[0] == group:
            architectures.append(parts[1])

    if not architectures:
        raise ReportError(
            f"no studies named {group}/<architecture> in the storage; "
            f"{_describe_existing_groups(study_names)}. Pass one of these groups to --study."
        )

    return {
        architecture: optuna.load_study(study_name=f"{group}/{architecture}", storage=storage)
        for architecture in sorted(architectures, key=_architecture_order)
    }


def _format_number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _format_f1(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _format_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{name}={_format_number(value)}" for name, value in sorted(params.items()))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = []
    for row in rows:
        cells = []
        for index, cell in enumerate(row):
            css = ' class="number"' if index in numeric else ""
            cells.append(f"<td{css}>{html.escape(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _message(text: str) -> str:
    return f'<p class="message">{html.escape(text)}</p>'


def _figure_html(figure: go.Figure, div_id: str) -> str:
    # plotly.js is embedded once in the page head, so each figure carries only its data.
    body = plotly.io.to_html(
        figure,
        full_html=False,
        include_plotlyjs=False,
        div_id=div_id,
        config={"displaylogo": False, "responsive": True},
    )
    return f'<div class="figure">{body}</div>'


def _best_configs_html(item: _ArchitectureStudy) -> str:
    completed = [s for s in item.summaries if s.state == TrialState.COMPLETE]
    completed.sort(key=lambda s: (-(s.best_val_f1 or 0.0), s.number))
    if not completed:
        return _message("No completed trial yet, so there is no best configuration.")

    rows = []
    for summary in completed[:NUM_BEST_CONFIGS]:
        rows.append(
            [
                str(summary.number),
                _format_params(summary.params),
                _format_f1(summary.best_val_f1),
                _format_f1(summary.train_f1_at_best),
                "–" if summary.best_epoch is None else str(summary.best_epoch),
                "–" if summary.num_parameters is None else f"{summary.num_parameters:,}",
            ]
        )
    header = ["trial", "params", "val F1", "train F1", "best epoch", "num params"]
    return _table(header, rows, numeric={0, 2, 3, 4, 5})


def _history_html(item: _ArchitectureStudy, section_id: str) -> str:
    if not any(s.state == TrialState.COMPLETE for s in item.summaries):
        return _message("No completed trial yet, so there is no optimisation history.")
    figure = optuna.visualization.plot_optimization_history(item.study, target_name="validation F1")
    figure.update_layout(title={"text": f"Optimisation history: {item.architecture}"})
    return _figure_html(figure, f"{section_id}-history")


def _importance_html(item: _ArchitectureStudy, section_id: str) -> str:
    completed = [s for s in item.summaries if s.state == TrialState.COMPLETE]
    if len(completed) < MIN_TRIALS_FOR_IMPORTANCE:
        return _message(
            f"Parameter importances need at least {MIN_TRIALS_FOR_IMPORTANCE} completed "
            f"trials; this study has {len(completed)}."
        )
    if not any(summary.params for summary in completed):
        return _message("The completed trials have no parameters, so nothing to rank.")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            figure = optuna.visualization.plot_param_importances(item.study)
        except (ValueError, RuntimeError) as error:
            _logger.warning(
                "Parameter importances of study %r failed: %s", item.study.study_name, error
            )
            return _message(f"Optuna could not compute parameter importances: {error}")

    figure.update_layout(title={"text": f"Parameter importances: {item.architecture}"})
    # Optuna warns and returns equal importances when the trials are too few to rank the
    # parameters, so the report shows the warning next to the chart.
    caveats = sorted(
        {str(warning.message) for warning in caught if "importance" in str(warning.message)}
    )
    parts = [_message(f"Optuna: {caveat}") for caveat in caveats]
    parts.append(_figure_html(figure, f"{section_id}-importances"))
    return "".join(parts)


def _stopped_html(item: _ArchitectureStudy) -> str:
    stopped = [s for s in item.summaries if s.state != TrialState.COMPLETE]
    if not stopped:
        return _message("No trial was pruned or failed.")

    stopped.sort(key=lambda s: -s.number)
    rows = [
        [
            str(s.number),
            s.outcome,
            "–" if not s.epochs else str(s.epochs[-1]),
            _format_f1(s.best_val_f1),
            _format_f1(s.train_f1_at_best),
            s.reason or "–",
        ]
        for s in stopped[:MAX_STOPPED_ROWS]
    ]
    header = ["trial", "outcome", "last epoch", "best val F1", "train F1", "reason"]
    table = _table(header, rows, numeric={0, 2, 3, 4})
    if len(stopped) > MAX_STOPPED_ROWS:
        table += f'<p class="meta">The {MAX_STOPPED_ROWS} newest of {len(stopped)} shown.</p>'
    return table


def _study_attrs_html(study: optuna.Study) -> str:
    if not study.user_attrs:
        return ""
    text = json.dumps(study.user_attrs, indent=2, sort_keys=True, default=str)
    return (
        "<details><summary>Study settings (data, training, search space)</summary>"
        f"<pre>{html.escape(text)}</pre></details>"
    )


def _outcome_counts(summaries: Sequence[figures.TrialSummary]) -> str:
    counts = Counter(summary.outcome for summary in summaries)
    return ", ".join(f"{count} {outcome}" for outcome, count in sorted(counts.items()))


def _architecture_html(item: _ArchitectureStudy) -> str:
    section_id = f"arch-{item.architecture}"
    counts = f"{len(item.summaries)} finished trials"
    if item.summaries:
        counts += f" ({_outcome_counts(item.summaries)})"
    if item.num_running:
        counts += f", {item.num_running} running"
    parts = [
        f'<section class="architecture" id="{html.escape(section_id)}">',
        f"<h2>{html.escape(item.architecture)}</h2>",
        (
            f'<p class="meta">Study <code>{html.escape(item.study.study_name)}</code>: '
            f"{html.escape(counts)}.</p>"
        ),
        _study_attrs_html(item.study),
    ]
    if not item.summaries:
        parts += [_message("No finished trial yet."), "</section>"]
        return "\n".join(parts)

    curve_trials = figures.select_curve_trials(
        item.summaries, max_best=CURVES_MAX_BEST, max_stopped=CURVES_MAX_STOPPED
    )
    parts += [
        "<h3>Best configurations</h3>",
        _best_configs_html(item),
        "<h3>Optimisation history</h3>",
        _history_html(item, section_id),
        "<h3>Parameter importances</h3>",
        _importance_html(item, section_id),
        "<h3>Train and validation F1 by epoch</h3>",
        (
            '<p class="meta">The best completed trials and the latest stopped ones; pick a '
            "trial in the menu. Validation F1 above a flat train F1 marks an underfit "
            "model.</p>"
        ),
        _figure_html(
            figures.f1_curves_figure(
                curve_trials, title=f"{figures.TITLE_F1_CURVES}: {item.architecture}"
            ),
            f"{section_id}-curves",
        ),
        _figure_html(
            figures.train_vs_val_figure(
                item.summaries, title=f"{figures.TITLE_TRAIN_VS_VAL}: {item.architecture}"
            ),
            f"{section_id}-train-vs-val",
        ),
        "<h3>F1 against parameter count</h3>",
        _figure_html(
            figures.f1_vs_parameters_figure(
                {item.architecture: item.summaries},
                title=f"{figures.TITLE_F1_VS_PARAMETERS}: {item.architecture}",
            ),
            f"{section_id}-f1-vs-parameters",
        ),
        "<h3>Pruned and failed trials</h3>",
        _stopped_html(item),
        "</section>",
    ]
    return "\n".join(parts)


def _summary_html(items: Sequence[_ArchitectureStudy]) -> str:
    rows = []
    for item in items:
        completed = [s for s in item.summaries if s.state == TrialState.COMPLETE]
        best = max(completed, key=lambda s: s.best_val_f1 or 0.0, default=None)
        counts = Counter(s.state for s in item.summaries)
        rows.append(
            [
                item.architecture,
                str(counts[TrialState.COMPLETE]),
                str(counts[TrialState.PRUNED]),
                str(counts[TrialState.FAIL]),
                _format_f1(best.best_val_f1) if best else "–",
                _format_f1(best.train_f1_at_best) if best else "–",
                str(best.number) if best else "–",
                f"{best.num_parameters:,}" if best and best.num_parameters is not None else "–",
            ]
        )
    header = [
        "architecture",
        "complete",
        "pruned",
        "failed",
        "best val F1",
        "train F1",
        "best trial",
        "num params",
    ]
    table = _table(header, rows, numeric={1, 2, 3, 4, 5, 6, 7})
    figure = figures.f1_vs_parameters_figure(
        {item.architecture: item.summaries for item in items},
        title=f"{figures.TITLE_F1_VS_PARAMETERS}: all architectures",
        colour_by="series",
    )
    return (
        '<section id="summary"><h2>Summary</h2>'
        + table
        + _figure_html(figure, "summary-f1-vs-parameters")
        + "</section>"
    )


def build_report(storage: BaseStorage, group: str, *, storage_label: str | None = None) -> str:
    """Build the HTML report of the study group ``group``.

    ``storage_label`` names the storage in the header; pass a masked URL.

    Raises:
        ReportError: the storage has no study in the group.
    """
    studies = find_group_studies(storage, group)
    items = []
    for architecture, study in studies.items():
        trials = study.get_trials(deepcopy=False)
        items.append(
            _ArchitectureStudy(
                architecture=architecture,
                study=study,
                summaries=figures.summarize_trials(trials),
                num_running=sum(1 for t in trials if t.state == TrialState.RUNNING),
            )
        )

    created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    source = f" from {html.escape(storage_label)}" if storage_label else ""
    navigation = " · ".join(
        f'<a href="#arch-{html.escape(item.architecture)}">{html.escape(item.architecture)}</a>'
        for item in items
    )
    sections = "\n".join(_architecture_html(item) for item in items)
    title = f"archsweep report: {group}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style>"
        # plotly.js inline, once: the file must open without network access.
        f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>'
        "</head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f'<p class="meta">Study group <code>{html.escape(group)}</code>{source}, '
        f"created {created}.</p>"
        f"<nav>{navigation}</nav>"
        f"{_summary_html(items)}\n{sections}"
        "</body></html>\n"
    )


def write_report(
    storage: BaseStorage,
    group: str,
    out: str | os.PathLike[str],
    *,
    storage_label: str | None = None,
) -> Path:
    """Build the report of ``group`` and write it to ``out``; return the path written.

    The file is written under a temporary name and then renamed, so a reader never sees
    half a report. Missing parent directories are created.
    """
    path = Path(out)
    if path.is_dir():
        raise ReportError(
            f"--out {str(path)!r} is a directory; name a file, such as {str(path / 'report.html')!r}"
        )

    document = build_report(storage, group, storage_label=storage_label)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", delete=False
    ) as handle:
        handle.write(document)
        temporary = Path(handle.name)
    try:
        temporary.chmod(default_file_mode())  # NamedTemporaryFile creates it 0600
        temporary.replace(path)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise
    _logger.info("Wrote the report of study group %r to %s", group, path)
    return path


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``archsweep report`` to ``parser``."""
    parser.add_argument(
        "--study", required=True, help="study group: the report covers <study>/<architecture>"
    )
    parser.add_argument(
        "--storage",
        default=None,
        help="SQLAlchemy URL or journal file path (default: $ARCHSWEEP_STORAGE, "
        "else archsweep.journal)",
    )
    parser.add_argument(
        "--out", default="report.html", help="HTML file to write (default report.html)"
    )


def run_report(args: argparse.Namespace) -> int:
    """Run ``archsweep report``: write the report and print its path.

    Returns the exit code: 0 on success, 1 when the storage cannot be opened, the group has
    no studies or the file cannot be written, 2 for an invalid storage value.
    """
    from storage import (
        StorageError,
        StorageURLError,
        check_storage_exists,
        close_storage,
        mask_url,
        open_storage,
        resolve_storage_url,
    )

    storage_url = resolve_storage_url(args.storage)
    try:
        check_storage_exists(storage_url)
        # The report runs no trials, so it sends no heartbeats.
        storage = open_storage(storage_url, heartbeat_interval=0)
    except StorageURLError as error:
        _logger.error("%s", error)
        return 2
    except StorageError as error:
        _logger.error("%s", error)
        return 1

    try:
        path = write_report(storage, args.study, args.out, storage_label=mask_url(storage_url))
    except (StorageError, ReportError) as error:
        _logger.error("%s", error)
        return 1
    except OSError as error:
        _logger.error("Could not write the report to %s: %s", args.out, error)
        return 1
    finally:
        close_storage(storage)

    print(path)
    return 0
