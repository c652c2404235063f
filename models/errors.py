"""The models room's errors: `ModelError` at the root, narrow subclasses carrying the where."""

from __future__ import annotations

from pathlib import Path


class ModelError(Exception):
    """Root of every error `models` raises on purpose."""


class LogFormatError(ModelError):
    """A logged-examples file is unreadable or a line is not a logged example."""

    def __init__(self, reason: str, *, path: Path, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")
        self.reason = reason
        self.path = path
        self.line = line
