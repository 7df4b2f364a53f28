"""The archsweep command line: ``archsweep [-v|-q] COMMAND ...``.

Results go to stdout and logs to stderr. Exit status:

- 0: success.
- 1: failure at run time, including data or files that cannot be used (a missing file,
  bad values in it, a split without both classes).
- 2: usage error: an unknown option, or an option value that is invalid before any data
  is read (an unknown data set name, split fractions that do not sum to 1).

Each command has a ``_add_<command>_command(commands)`` function, called by ``build_parser``.
It adds the command's parser with ``_add_command`` and sets ``handler``: a function that
takes the parsed arguments and returns the exit status. Handlers import torch, optuna and
ray themselves, so ``archsweep --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TextIO

from search.data import DATA_HELP, add_data_arguments, data_spec_from_args

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "build_parser", "configure_logging", "main"]

_logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it

# Errors that reach the user as one line, as (module, class name, exit status). The first
# match wins, so list subclasses first. A class is looked up only when its module is already
# imported: an exception of that class cannot exist before.
KNOWN_ERRORS: tuple[tuple[str, str, int], ...] = (
    ("search.data", "DataOptionError", EXIT_USAGE),
    ("search.data", "DataError", EXIT_FAILURE),
    ("builtins", "FileNotFoundError", EXIT_FAILURE),
    ("builtins", "PermissionError", EXIT_FAILURE),
    ("builtins", "IsADirectoryError", EXIT_FAILURE),
    ("builtins", "NotADirectoryError", EXIT_FAILURE),
)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = {-2: logging.ERROR, -1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}


def _verbosity_options(default: object) -> argparse.ArgumentParser:
    """Return a parent parser with -v/-q, accepted before and after the command name."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-v", "--verbose", action="count", default=default,
        help="log more (debug messages and error details); logs go to stderr",
    )
    parent.add_argument(
        "-q", "--quiet", action="count", default=default,
        help="log less: -q warnings and errors only, -qq errors only",
    )
    return parent


# Subcommand parsers must not reset a -v given before the command name, so their
# defaults are suppressed.
_COMMAND_PARENTS = [_verbosity_options(argparse.SUPPRESS)]


def _add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
    description: str,
) -> argparse.ArgumentParser:
    """Add the parser of one command (or subcommand), with the shared -v/-q options."""
    return commands.add_parser(
        name, help=help_text, description=description, parents=_COMMAND_PARENTS
    )


def build_parser() -> argparse.ArgumentParser:
    """Build the parser of every archsweep command."""
    parser = argparse.ArgumentParser(
        prog="archsweep",
        description="Hyperparameter search that sizes sequence classifiers "
        "with Optuna, Ray and PyTorch.",
        parents=[_verbosity_options(0)],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_data_command(commands)
    return parser


def _add_data_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    data = _add_command(
        commands, "data", "inspect a data set",
        "Inspect a data set: its windows, features and session split.",
    )
    data_commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    describe = _add_command(
        data_commands, "describe", "print window length, features and split sizes",
        "Load a data set, split it and print the window length and feature count, then "
        "windows, sessions, positives and positive rate per split and in total.",
    )
    describe.add_argument("data", metavar="DATA", help=DATA_HELP)
    add_data_arguments(describe, include_data=False)
    describe.set_defaults(handler=_run_data_describe)


def _run_data_describe(args: argparse.Namespace) -> int:
    from search.data import load_dataset

    dataset = load_dataset(data_spec_from_args(args))
    print(dataset.describe())
    return EXIT_OK


class _CliLogHandler(logging.StreamHandler[TextIO]):
    """The stderr handler that the CLI installs; its own class lets a second call replace it."""


def configure_logging(verbosity: int) -> None:
    """Send log records to stderr at the level that -v/-q select (0 is INFO).

    Only the CLI calls this; as a library archsweep configures no handlers.
    """
    level = LOG_LEVELS[max(min(verbosity, 1), -2)]
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _CliLogHandler):
            root.removeHandler(handler)
    handler = _CliLogHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(level)
    root.addHandler(handler)
    root.setLevel(level)


def _known_error_status(error: BaseException) -> int | None:
    """Return the exit status for an error the user can fix, or None for a bug."""
    for module_name, class_name, status in KNOWN_ERRORS:
        error_class = getattr(sys.modules.get(module_name), class_name, None)
        if isinstance(error_class, type) and isinstance(error, error_class):
            return status
    return None


def _error_message(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.strerror}: {error.filename}"
    return " ".join(str(error).split())  # One line, whatever the message contains.


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command in `argv` (default: sys.argv[1:]) and return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # argparse exits after --help and on usage errors.
        code = exit_request.code
        return code if isinstance(code, int) else EXIT_USAGE
    configure_logging(getattr(args, "verbose", 0) - getattr(args, "quiet", 0))

    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("archsweep: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        status = _known_error_status(error)
        if status is None:
            raise
        _logger.debug("error details", exc_info=True)
        print(f"archsweep: error: {_error_message(error)}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
