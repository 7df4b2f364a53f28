"""Implementations of the archsweep commands behind ``search.cli``.

Each module contains the handlers of one or two commands: ``run`` (run and worker),
``status``, ``export``, ``train`` (train and capacity). ``search.cli`` imports a
module only when its command runs, so these modules may import torch and optuna at
the top. This package itself stays light: the CLI imports it for the error classes.
"""

from __future__ import annotations

__all__ = ["CommandError", "StudyNotFoundError", "UsageError"]


class CommandError(RuntimeError):
    """A command cannot finish for a reason the user can fix; the CLI exits with status 1.

    The message is one or more sentences naming the value and the fix; the CLI prints
    it on one line after ``archsweep: error:``.
    """


class StudyNotFoundError(CommandError):
    """A command names a study group (or architecture) that the storage does not contain."""


class UsageError(ValueError):
    """An option value is invalid before anything is read or stored; the CLI exits with 2."""
