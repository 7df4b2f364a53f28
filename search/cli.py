"""The archsweep command line: ``archsweep [-v|-q] COMMAND ...``.

Results go to stdout and logs to stderr. Exit status:

- 0: success.
- 1: failure at run time, including data or files that cannot be used (a missing file,
  bad values in it, a split without both classes).
- 2: usage error: an unknown option, or an option value that is invalid before any data
  is read (an unknown data set name, split fractions that do not sum to 1, an unknown
  architecture, a malformed storage URL).
- 130: interrupted by Ctrl-C; ``run`` records the running trial as failed and resumes
  when started again.

Each command has a ``_add_<command>_command(commands)`` function, called by ``build_parser``.
It adds the command's parser with ``_add_command`` and sets ``handler``: a function that
takes the parsed arguments and returns the exit status. The handlers live in
``search.commands`` (and ``search.dashboard``, ``search.report``) and are imported only
when their command runs, so ``archsweep --help`` loads no torch, optuna or ray.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO, TypeAlias

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
    ("search.commands", "UsageError", EXIT_USAGE),
    ("search.commands", "CommandError", EXIT_FAILURE),
    ("search.data", "DataOptionError", EXIT_USAGE),
    ("search.data", "DataError", EXIT_FAILURE),
    ("storage", "StorageURLError", EXIT_USAGE),
    ("storage", "StorageError", EXIT_FAILURE),
    ("search.space", "SpaceError", EXIT_FAILURE),
    ("models", "PresetError", EXIT_FAILURE),
    ("search.engine", "StudyMismatchError", EXIT_FAILURE),
    ("search.training", "TrialFailed", EXIT_FAILURE),
    ("builtins", "FileNotFoundError", EXIT_FAILURE),
    ("builtins", "PermissionError", EXIT_FAILURE),
    ("builtins", "IsADirectoryError", EXIT_FAILURE),
    ("builtins", "NotADirectoryError", EXIT_FAILURE),
)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = {-2: logging.ERROR, -1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}


def _verbosity_options(default: object) -> _Parser:
    """Return a parent parser with -v/-q, accepted before and after the command name."""
    parent = _Parser(add_help=False)
    parent.add_argument(
        "-v", "--verbose", action="count", default=default,
        help="log more (debug messages and error details); logs go to stderr",
    )
    parent.add_argument(
        "-q", "--quiet", action="count", default=default,
        help="log less: -q warnings and errors only, -qq errors only",
    )
    return parent


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line: ``archsweep: error: ...``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"archsweep: error: {message}; see '{self.prog} --help'\n")


_Commands: TypeAlias = "argparse._SubParsersAction[Any]"


# Subcommand parsers must not reset a -v given before the command name, so their
# defaults are suppressed.
_COMMAND_PARENTS = [_verbosity_options(argparse.SUPPRESS)]


def _add_command(
    commands: _Commands,
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
    parser = _Parser(
        prog="archsweep",
        description="Hyperparameter search that sizes sequence classifiers "
        "with Optuna, Ray and PyTorch.",
        parents=[_verbosity_options(0)],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_data_command(commands)
    _add_run_command(commands)
    _add_worker_command(commands)
    _add_status_command(commands)
    _add_export_command(commands)
    _add_train_command(commands)
    _add_capacity_command(commands)
    _add_dashboard_command(commands)
    _add_report_command(commands)
    return parser


def _add_data_command(
    commands: _Commands,
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


# Options shared by the commands that work on studies.

STORAGE_HELP = (
    "where studies are stored: an SQLAlchemy URL (sqlite:///FILE.db, "
    "postgresql+psycopg://USER@HOST:5432/DB) or the path of an Optuna journal file "
    "(default: $ARCHSWEEP_STORAGE, else archsweep.journal in the working directory)"
)
ARCH_HELP = (
    "architectures: all (the default) or names separated by commas, from transformer, tft, "
    "bayesian, mcdropout, mamba, xlstm"
)


def _add_study_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--study", required=True, metavar="NAME",
        help="study group; each architecture has its own study NAME/ARCHITECTURE",
    )
    parser.add_argument("--storage", metavar="URL|PATH", help=STORAGE_HELP)


def _add_run_command(commands: _Commands) -> None:
    run = _add_command(
        commands, "run", "create or resume studies and run trials",
        "Create the study of each selected architecture, or resume it, and run trials: "
        "sample a configuration, train it with early stopping and pruning, and record "
        "its curves. Progress goes to stderr, a summary to stdout. In-process runs take "
        "the architectures in turns, one trial each; Ctrl-C fails the running trial "
        "(fail_reason interrupted) and the same command resumes.",
    )
    _add_study_arguments(run)

    search = run.add_argument_group("search options")
    search.add_argument("--arch", default="all", metavar="all|NAME[,NAME]", help=ARCH_HELP)
    search.add_argument(
        "--trials", type=int, metavar="N",
        help="trials per architecture, counting the study's earlier trials (default 20; "
        "unlimited when only --timeout is given)",
    )
    search.add_argument(
        "--timeout", type=float, metavar="SECONDS",
        help="time limit of the whole run in seconds; no trial starts after it, a "
        "running trial finishes",
    )
    search.add_argument(
        "--epochs", type=int, metavar="MAX",
        help="maximum epochs per trial (default 70; recorded in new studies)",
    )
    search.add_argument(
        "--seed", type=int, metavar="SEED",
        help="seed of the sampler and of training (default 0; recorded in new studies)",
    )
    search.add_argument(
        "--space", metavar="FILE",
        help="search space YAML; the architectures it names replace the default space "
        "(search/spaces/default.yaml)",
    )

    ray = run.add_argument_group("Ray options")
    ray.add_argument(
        "--workers", type=int, metavar="N",
        help="parallel trial processes on Ray; 1 (the default) runs in this process",
    )
    ray.add_argument(
        "--gpus-per-trial", type=float, metavar="F",
        help="GPUs each Ray trial reserves; a fraction lets trials share a GPU (default: "
        "1 on a cluster with GPUs, else 0)",
    )
    ray.add_argument(
        "--ray-address", metavar="ADDR",
        help="address of a running Ray cluster (HOST:PORT or auto); runs the trials there",
    )

    add_data_arguments(run)
    run.set_defaults(handler=_handle("search.commands.run", "run_command"))


def _add_worker_command(commands: _Commands) -> None:
    worker = _add_command(
        commands, "worker", "run trials of existing studies",
        "Run trials of existing studies, in parallel with other workers: the data, "
        "space and training settings are read from each study.",
    )
    _add_study_arguments(worker)
    worker.add_argument("--arch", default="all", metavar="all|NAME[,NAME]", help=ARCH_HELP)
    worker.set_defaults(handler=_handle("search.commands.run", "worker_command"))


def _add_status_command(commands: _Commands) -> None:
    status = _add_command(
        commands, "status", "show trials by state and the best results",
        "Per architecture: trials by state, how many each pruner stopped, and the best "
        "completed trial with its validation F1, parameters and parameter count.",
    )
    _add_study_arguments(status)
    status.set_defaults(handler=_handle("search.commands.status", "status_command"))


def _add_export_command(commands: _Commands) -> None:
    export = _add_command(
        commands, "export", "write a preset per architecture",
        "Write DIR/ARCHITECTURE.yaml for every architecture of the study from its best "
        "completed trial (never a pruned or failed one). Architectures without a completed "
        "trial are reported and the command exits with status 1 after writing the others.",
    )
    _add_study_arguments(export)
    export.add_argument("--out", required=True, metavar="DIR", help="folder for the presets")
    export.add_argument(
        "--weights", action="store_true",
        help="also copy the best trial's best-epoch weights to DIR/ARCHITECTURE.safetensors",
    )
    export.set_defaults(handler=_handle("search.commands.export", "export_command"))


def _add_train_command(commands: _Commands) -> None:
    train = _add_command(
        commands, "train", "retrain a preset and score it on validation and test",
        "Retrain the configuration of a preset from scratch with its seed, settings and "
        "data, then print validation and test F1 and AUPRC. Data options override the "
        "preset's data. This is the only command that reads the test split.",
    )
    train.add_argument("--preset", required=True, metavar="FILE", help="preset YAML file")
    add_data_arguments(train)
    train.set_defaults(handler=_handle("search.commands.train", "train_command"))


def _add_capacity_command(
    commands: _Commands,
) -> None:
    capacity = _add_command(
        commands, "capacity", "check that an architecture can memorise a small training set",
        "Train the architecture at its default size on two training sessions and score it "
        "on one held-out validation session. It passes when train F1 reaches 0.95 within "
        "30 epochs. Exits with status 0 either way; the last line is the verdict.",
    )
    capacity.add_argument(
        "--arch", required=True, metavar="NAME",
        help="architecture: transformer, tft, bayesian, mcdropout, mamba or xlstm",
    )
    add_data_arguments(capacity)
    capacity.set_defaults(handler=_handle("search.commands.train", "capacity_command"))


def _add_dashboard_command(
    commands: _Commands,
) -> None:
    dashboard = _add_command(
        commands, "dashboard", "serve optuna-dashboard over the studies",
        "Serve optuna-dashboard over every study in the storage, with each trial's F1 "
        "curves and outcome attached. Ctrl-C stops it.",
    )
    dashboard.add_argument("--storage", metavar="URL|PATH", help=STORAGE_HELP)
    # The defaults repeat search.dashboard.DEFAULT_HOST and DEFAULT_PORT: importing that
    # module loads optuna and plotly, which `archsweep --help` must not wait for.
    dashboard.add_argument(
        "--host", default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only)",
    )
    dashboard.add_argument("--port", type=int, default=8080, help="TCP port (default 8080)")
    dashboard.set_defaults(handler=_handle("search.dashboard", "run_dashboard"))


def _add_report_command(commands: _Commands) -> None:
    report = _add_command(
        commands, "report", "write an HTML report of a study",
        "Write one self-contained HTML file with the best configurations, optimisation "
        "history, parameter importances and F1 curves of every architecture.",
    )
    _add_study_arguments(report)
    report.add_argument(
        "--out", default="report.html", metavar="FILE.html",
        help="HTML file to write (default report.html)",
    )
    report.set_defaults(handler=_handle("search.report", "run_report"))


def _handle(module_name: str, function_name: str) -> Callable[[argparse.Namespace], int]:
    """Return a handler that imports ``module_name`` only when the command runs."""

    def handler(args: argparse.Namespace) -> int:
        module = importlib.import_module(module_name)
        return int(getattr(module, function_name)(args))

    return handler


class _CliLogHandler(logging.StreamHandler[TextIO]):
    """The stderr handler that the CLI installs; its own class lets a second call replace it."""


def _drop_interrupt_traceback(record: logging.LogRecord) -> bool:
    """Keep the record but drop its traceback when Ctrl-C caused it (Optuna logs one)."""
    if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
        record.exc_info = None
        record.exc_text = None
    return True


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
    handler.addFilter(_drop_interrupt_traceback)
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
