"""``archsweep export``: one preset per architecture from its best completed trial."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from search.commands import CommandError
from search.commands._common import (
    check_study_name,
    find_group_studies,
    format_f1,
    open_command_storage,
)

__all__ = ["export_command"]

_logger = logging.getLogger(__name__)


def _storage_password(storage: str | None) -> str | None:
    from storage import parse_storage_url, resolve_storage_url

    return parse_storage_url(resolve_storage_url(storage)).password


def export_command(args: argparse.Namespace) -> int:
    """Run ``archsweep export``; returns the exit status.

    Every architecture with a completed trial is exported. When some have none (or,
    with --weights, their best trial's weights are gone), the others are still
    written and the command ends with exit status 1 naming the missing ones.
    """
    import models
    from search.cli import EXIT_OK
    from search.presets import best_complete_trial, build_preset, write_preset
    from search.records import weights_file
    from storage import close_storage

    check_study_name(args.study)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out} is a file; pass a folder (it is created when missing)")
    password = _storage_password(args.storage)

    storage, storage_label = open_command_storage(args.storage, runs_trials=False, existing=True)
    try:
        studies = find_group_studies(storage, args.study, storage_label)
        problems = []  # (what is missing, how to fix it), per architecture not exported
        for study in studies.values():
            trial = best_complete_trial(study)
            if trial is None:
                problems.append((
                    f"{study.study_name} has no completed trial",
                    f"run more trials with archsweep run --study {args.study}",
                ))
                continue

            weights_source = None
            if args.weights:
                weights_source = weights_file(study, trial)
                if weights_source is None:
                    problems.append((
                        f"the weights of {study.study_name} trial {trial.number} are not kept",
                        "export without --weights and retrain with archsweep train --preset",
                    ))
                    continue

            try:
                preset = build_preset(study, trial, storage_label=storage_label)
            except ValueError as error:
                problems.append((f"{study.study_name}: {error}", "check the study's record"))
                continue
            path = write_preset(
                preset, out, weights_source=weights_source, forbidden_text=password
            )
            # Load what was written, as a user would; a mismatch is a bug worth failing on.
            models.from_preset(path)
            weights_note = f", weights {path.with_suffix('.safetensors').name}" if weights_source else ""
            print(
                f"{path}: trial {trial.number}, val F1 {format_f1(trial.value)}, "
                f"{preset['num_parameters']:,} parameters{weights_note}"
            )
    finally:
        close_storage(storage)

    if problems:
        exported = len(studies) - len(problems)
        missing = "; ".join(problem for problem, _ in problems)
        fixes = "; ".join(dict.fromkeys(fix for _, fix in problems))
        raise CommandError(
            f"exported {exported} of {len(studies)} presets to {out}; not exported: "
            f"{missing}. To export them: {fixes}"
        )
    return EXIT_OK
