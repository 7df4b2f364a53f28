"""Helpers shared by the commands: architecture lists, storages and study groups."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import optuna
from optuna.storages import BaseStorage

from search.commands import StudyNotFoundError, UsageError

__all__ = [
    "ALL_ARCHITECTURES",
    "check_study_name",
    "configure_optuna_logging",
    "describe_groups",
    "find_group_studies",
    "open_command_storage",
    "parse_architectures",
    "split_study_name",
]

_logger = logging.getLogger(__name__)

# The value of --arch that selects every architecture.
ALL_ARCHITECTURES = "all"


def parse_architectures(text: str | None) -> list[str]:
    """Turn an --arch value (``all`` or ``NAME[,NAME]``) into architecture names in the
    contract's order, without repeats.

    Raises UsageError for an empty value, an unknown name or one this build lacks.
    """
    import models

    if text is None or text.strip() == ALL_ARCHITECTURES:
        requested = list(models.ARCHITECTURES)
    else:
        requested = [name.strip() for name in text.split(",")]
        if not all(requested):
            raise UsageError(
                f"--arch {text!r} has an empty name; use all or names separated by commas, "
                f"e.g. --arch transformer,tft"
            )
        unknown = [name for name in requested if name not in models.ARCHITECTURES]
        if unknown:
            raise UsageError(
                f"unknown architecture {', '.join(map(repr, unknown))} in --arch; valid "
                f"architectures are {', '.join(models.ARCHITECTURES)} (or all)"
            )

    missing = [name for name in requested if name not in models.CONFIG_CLASSES]
    if missing:
        # NOTE: only while an architecture's module is missing from models/.
        raise UsageError(
            f"architecture {', '.join(missing)} is not available in this build; available: "
            f"{', '.join(name for name in models.ARCHITECTURES if name in models.CONFIG_CLASSES)}"
        )
    return [name for name in models.ARCHITECTURES if name in requested]


def check_study_name(group: str) -> None:
    """Raise UsageError unless ``group`` can name a study group (non-empty, without '/')."""
    if not group.strip():
        raise UsageError("--study must not be empty; name the study group, e.g. --study demo")
    if "/" in group:
        raise UsageError(
            f"--study {group!r} must not contain '/', because archsweep appends "
            f"/<architecture> to it; use e.g. --study {group.replace('/', '-')}"
        )


def open_command_storage(
    storage: str | None, *, runs_trials: bool, existing: bool = False
) -> tuple[BaseStorage, str]:
    """Validate and open a --storage value; return the storage and its masked URL.

    The value is checked before any connection is made, so a malformed URL raises
    StorageURLError (exit status 2) and an unreachable server StorageError (exit 1).
    Commands that only read get no heartbeat thread. With ``existing``, a journal or
    SQLite file that does not exist raises StorageError instead of being created.
    """
    from storage import (
        check_storage_exists,
        mask_url,
        open_storage,
        parse_storage_url,
        resolve_storage_url,
    )

    url = resolve_storage_url(storage)
    parse_storage_url(url)
    if existing:
        check_storage_exists(url)
    opened = open_storage(url) if runs_trials else open_storage(url, heartbeat_interval=0)
    return opened, mask_url(url)


def split_study_name(study_name: str) -> tuple[str, str] | None:
    """Split ``<group>/<architecture>`` at its last slash; None for other names."""
    if "/" not in study_name:
        return None
    group, architecture = study_name.rsplit("/", 1)
    return group, architecture


def describe_groups(storage: BaseStorage) -> str:
    """Name the study groups in ``storage`` with their architectures, for error messages."""
    groups: dict[str, list[str]] = {}
    for frozen in storage.get_all_studies():
        parts = split_study_name(frozen.study_name)
        if parts is not None:
            groups.setdefault(parts[0], []).append(parts[1])
    if not groups:
        return "the storage has no archsweep studies yet; start one with archsweep run"
    listed = "; ".join(
        f"{group} ({', '.join(sorted(architectures))})"
        for group, architectures in sorted(groups.items())
    )
    return f"existing studies: {listed}"


def find_group_studies(
    storage: BaseStorage,
    group: str,
    storage_label: str,
    architectures: Sequence[str] | None = None,
) -> dict[str, optuna.Study]:
    """Load the studies ``<group>/<architecture>`` that exist, keyed by architecture.

    With ``architectures`` given, every one of them must exist. Raises
    StudyNotFoundError naming the groups the storage does contain.
    """
    import models

    existing = {
        parts[1]
        for parts in (split_study_name(s.study_name) for s in storage.get_all_studies())
        if parts is not None and parts[0] == group
    }
    if not existing:
        raise StudyNotFoundError(
            f"no study {group!r} in {storage_label}; {describe_groups(storage)}"
        )
    if architectures is not None:
        missing = [name for name in architectures if name not in existing]
        if missing:
            raise StudyNotFoundError(
                f"study {group!r} in {storage_label} has no "
                f"{', '.join(f'{group}/{name}' for name in missing)}; it has "
                f"{', '.join(sorted(existing))}"
            )
        selected = list(architectures)
    else:
        order = {name: index for index, name in enumerate(models.ARCHITECTURES)}
        selected = sorted(existing, key=lambda name: (order.get(name, len(order)), name))

    return {
        name: optuna.load_study(study_name=f"{group}/{name}", storage=storage)
        for name in selected
    }


def configure_optuna_logging(verbosity: int) -> None:
    """Route Optuna's log records through the CLI's stderr handler.

    Optuna's per-trial INFO lines repeat the CLI's progress lines, so they show only
    with -v.
    """
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(logging.DEBUG if verbosity > 0 else logging.WARNING)


def format_params(params: dict[str, Any]) -> str:
    """Format trial parameters as ``key=value`` pairs with short floats."""
    parts = []
    for key, value in params.items():
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        parts.append(f"{key}={shown}")
    return ", ".join(parts)


def format_f1(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@contextmanager
def sigint_ignored() -> Iterator[None]:
    """Ignore Ctrl-C while the block runs (cleanup after a first Ctrl-C must finish)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (``docker stop``, ``kill``) like Ctrl-C while the block runs."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def progress_stream() -> Any:
    """Return the stream that progress lines go to (stderr: stdout carries results)."""
    return sys.stderr
