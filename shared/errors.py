"""The one error type for unusable input: it names the file and, where known, the line."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Input data that cannot be used as it is.

    `str(error)` reads `path:line: message` (or `path: message`), so a user can
    open the file at the offending line.
    """

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        where = self.path or ""
        if self.path and line is not None:
            where += f":{line}"
        super().__init__(f"{where}: {message}" if where else message)
