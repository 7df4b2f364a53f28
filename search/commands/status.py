"""``archsweep status``: trials by state, pruner counts and the best trial per architecture."""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import TrialState

from search import records
from search.commands._common import (
    check_study_name,
    find_group_studies,
    format_f1,
    format_params,
    open_command_storage,
)

__all__ = ["StudyRow", "format_status", "format_summary_table", "status_command", "study_rows"]

# Fail reasons differ in their details (epoch, batch, error text), so status counts them by
# the words before the first detail.
_REASON_DETAIL = re.compile(r":| at epoch | on (?=cpu|cuda|mps)")


@dataclasses.dataclass
class StudyRow:
    """One architecture's line of the status table."""

    architecture: str
    complete: int
    pruned: int
    failed: int
    running: int
    waiting: int
    pruned_by: Counter[str]
    failed_by: Counter[str]
    best_value: float | None
    best_trial: int | None
    best_params: dict[str, Any]
    best_num_parameters: int | None

    @property
    def total(self) -> int:
        """Trials started: finished or running (queued WAITING trials are not counted)."""
        return self.complete + self.pruned + self.failed + self.running


def _study_row(architecture: str, study: optuna.Study) -> StudyRow:
    counts: Counter[TrialState] = Counter()
    pruned_by: Counter[str] = Counter()
    failed_by: Counter[str] = Counter()
    best = None
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state] += 1
        if trial.state is TrialState.PRUNED:
            pruned_by[str(trial.user_attrs.get(records.TRIAL_PRUNED_BY, "unknown"))] += 1
        elif trial.state is TrialState.FAIL:
            reason = str(trial.user_attrs.get(records.TRIAL_FAIL_REASON, "no reason recorded"))
            failed_by[_REASON_DETAIL.split(reason, maxsplit=1)[0]] += 1
        elif trial.state is TrialState.COMPLETE and trial.value is not None and (
            best is None or trial.value > (best.value or -math.inf)
        ):
            best = trial

    num_parameters = None if best is None else best.user_attrs.get(records.TRIAL_NUM_PARAMETERS)
    return StudyRow(
        architecture=architecture,
        complete=counts[TrialState.COMPLETE],
        pruned=counts[TrialState.PRUNED],
        failed=counts[TrialState.FAIL],
        running=counts[TrialState.RUNNING],
        waiting=counts[TrialState.WAITING],
        pruned_by=pruned_by,
        failed_by=failed_by,
        best_value=None if best is None else best.value,
        best_trial=None if best is None else best.number,
        best_params={} if best is None else dict(best.params),
        best_num_parameters=num_parameters if isinstance(num_parameters, int) else None,
    )


def study_rows(studies: Mapping[str, optuna.Study]) -> list[StudyRow]:
    """Summarise each study, in the order of ``studies``."""
    return [_study_row(architecture, study) for architecture, study in studies.items()]


def _counter_text(counter: Counter[str]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counter.items())) or "-"


def format_summary_table(rows: list[StudyRow]) -> str:
    """Format the table of trial states, pruner counts and best results."""
    header = (
        "architecture", "trials", "complete", "pruned", "failed", "running", "best val F1",
        "trial", "parameters", "pruned by",
    )
    table = [header]
    for row in rows:
        table.append((
            row.architecture,
            str(row.total),
            str(row.complete),
            str(row.pruned),
            str(row.failed),
            str(row.running),
            format_f1(row.best_value),
            "-" if row.best_trial is None else str(row.best_trial),
            "-" if row.best_num_parameters is None else f"{row.best_num_parameters:,}",
            _counter_text(row.pruned_by),
        ))

    widths = [max(len(line[column]) for line in table) for column in range(len(header))]
    lines = []
    for line in table:
        cells = []
        for column, cell in enumerate(line):
            # Names and the pruner list read left-aligned; numbers align on the right.
            if column in (0, len(header) - 1):
                cells.append(cell.ljust(widths[column]))
            else:
                cells.append(cell.rjust(widths[column]))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_status(group: str, storage_label: str, rows: list[StudyRow]) -> str:
    """Format the whole ``status`` output: the table, then best parameters and failures."""
    lines = [f"study {group} in {storage_label}", "", format_summary_table(rows), ""]
    lines.append("best configuration per architecture (best completed trial):")
    for row in rows:
        if row.best_trial is None:
            lines.append(f"  {row.architecture}: no completed trial yet")
            continue
        lines.append(
            f"  {row.architecture}: trial {row.best_trial}, val F1 {format_f1(row.best_value)}, "
            f"{row.best_num_parameters or 0:,} parameters: {format_params(row.best_params)}"
        )
    queued = [row for row in rows if row.waiting]
    if queued:
        lines.append("")
        lines.append(
            "queued trials (WAITING, run next): "
            + ", ".join(f"{row.architecture} {row.waiting}" for row in queued)
        )
    failures = [row for row in rows if row.failed_by]
    if failures:
        lines.append("")
        lines.append("failed trials by reason:")
        for row in failures:
            lines.append(f"  {row.architecture}: {_counter_text(row.failed_by)}")
    return "\n".join(lines)


def status_command(args: argparse.Namespace) -> int:
    """Run ``archsweep status``; returns the exit status."""
    from search.cli import EXIT_OK
    from storage import close_storage

    check_study_name(args.study)
    storage, storage_label = open_command_storage(args.storage, runs_trials=False, existing=True)
    try:
        studies = find_group_studies(storage, args.study, storage_label)
        print(format_status(args.study, storage_label, study_rows(studies)))
    finally:
        close_storage(storage)
    return EXIT_OK
