"""archsweep's search engine: data sets, search spaces, pruners, training and the CLI."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("archsweep")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0"

__all__ = ["__version__"]
