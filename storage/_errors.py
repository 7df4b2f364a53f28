"""Exceptions raised by the storage package."""

from __future__ import annotations

__all__ = ["StorageError", "StorageURLError"]


class StorageError(RuntimeError):
    """A storage could not be opened or used.

    The message names the backend, host, port and database (or the file) and the fix.
    It never contains a password.
    """


class StorageURLError(StorageError, ValueError):
    """A ``--storage`` value is malformed or names an unsupported backend or driver.

    It is also a ValueError, so a command line can report it as a usage error.
    """
