"""Helpers shared by bench_search.py and bench_pruner.py: data, small spaces, result files.

The benchmarks run from the repository root (``python benchmarks/bench_search.py``), so
this module puts the root on ``sys.path`` before anything imports ``search``.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
DOCS_FILE = REPO_ROOT / "docs" / "benchmarks.md"

_logger = logging.getLogger(__name__)

# Small spaces for CPU runs. Every d_model is a multiple of 16, so each head count in
# {1, 2, 4} divides it. lr reaches down to 3e-5 so that some trials learn too slowly
# for the epoch cap, which is what the pruners are for.
SEARCH_SPACE: dict[str, dict[str, Any]] = {
    "transformer": {
        "d_model": {"low": 16, "high": 64, "step": 16},
        "num_heads": {"choices": [1, 2, 4]},
        "d_ff_factor": {"choices": [1, 2, 4]},
        "num_layers": {"low": 1, "high": 3},
        "dropout": {"low": 0.0, "high": 0.4, "step": 0.05},
        "lr": {"low": 3.0e-5, "high": 3.0e-3, "log": True},
    },
    "mamba": {
        "d_model": {"low": 16, "high": 64, "step": 16},
        "num_layers": {"low": 1, "high": 3},
        "dropout": {"low": 0.0, "high": 0.4, "step": 0.05},
        "d_state": {"choices": [4, 8, 16]},
        "expand": {"choices": [1, 2]},
        "lr": {"low": 3.0e-5, "high": 3.0e-3, "log": True},
    },
}

# A wider space for the pruner benchmark: tiny widths, dropout up to 0.6 and learning
# rates down to 1e-5 make some trials starve, so the underfit rule has cases to catch.
STARVED_SPACE: dict[str, dict[str, Any]] = {
    "transformer": {
        "d_model": {"low": 8, "high": 64, "step": 8},
        "num_heads": {"choices": [1, 2]},
        "d_ff_factor": {"choices": [1, 2]},
        "num_layers": {"low": 1, "high": 2},
        "dropout": {"low": 0.0, "high": 0.6, "step": 0.05},
        "lr": {"low": 1.0e-5, "high": 3.0e-3, "log": True},
    },
    "mamba": {
        "d_model": {"low": 8, "high": 64, "step": 8},
        "num_layers": {"low": 1, "high": 2},
        "dropout": {"low": 0.0, "high": 0.6, "step": 0.05},
        "d_state": {"choices": [4, 8]},
        "expand": {"choices": [1, 2]},
        "lr": {"low": 1.0e-5, "high": 3.0e-3, "log": True},
    },
}


def configure_cpu(threads: int = 1) -> None:
    """Pin torch to ``threads`` CPU threads, so figures compare across runs on a shared machine."""
    import torch

    torch.set_num_threads(threads)


def epf_spec(max_train_sessions: int | None, stride: int) -> Any:
    """Return the DataSpec of the built-in ``epf`` data with fewer train days and a stride."""
    return data_spec("epf", max_train_sessions, stride)


def data_spec(name: str, max_train_sessions: int | None, stride: int | None) -> Any:
    """Return the DataSpec of a built-in data set; None keeps the data set's own default.

    ``max_train_sessions`` 0 keeps every train session, like None.
    """
    from search.data import DataSpec

    max_train_sessions = max_train_sessions or None
    return DataSpec(name=name, stride=stride, max_train_sessions=max_train_sessions)


def machine_description() -> str:
    """Describe the CPU the run used, e.g. ``2 CPU cores (x86_64, Linux), shared``."""
    cores = os.cpu_count() or 0
    return f"{cores} CPU cores ({platform.machine()}, {platform.system()}), shared"


def git_revision() -> str | None:
    """Return the short commit hash of the checkout, or None outside a git work tree."""
    try:
        completed = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout.strip() or None


def run_header(command: str) -> dict[str, Any]:
    """Return the fields every result file starts with: command, machine, date, versions."""
    import optuna
    import torch

    return {
        "command": command,
        "machine": machine_description(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_revision": git_revision(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
    }


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON, creating the parent directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    _logger.info("wrote %s", path)


def append_docs_row(section_marker: str, row: str) -> bool:
    """Insert ``row`` (one Markdown table row) before the line ``<!-- end SECTION -->``.

    Returns False, with a warning, when docs/benchmarks.md lacks the marker, so a run
    never fails for want of the docs file.
    """
    end_marker = f"<!-- end {section_marker} -->"
    if not DOCS_FILE.exists():
        _logger.warning("%s not found; row not added: %s", DOCS_FILE, row)
        return False

    lines = DOCS_FILE.read_text().splitlines()
    if end_marker not in lines:
        _logger.warning("%s has no %s marker; row not added: %s", DOCS_FILE, end_marker, row)
        return False

    lines.insert(lines.index(end_marker), row)
    DOCS_FILE.write_text("\n".join(lines) + "\n")
    return True


def command_line() -> str:
    """Return the command that started this process, as a user would type it."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(REPO_ROOT)
    except ValueError:
        pass
    return shlex.join(["python", str(script), *sys.argv[1:]])
