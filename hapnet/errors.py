"""User-facing errors: the CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import numbers
from pathlib import Path


class HapnetError(Exception):
    """An error caused by the user's input or settings, reported without a traceback."""


class InputError(HapnetError):
    """Bad input data: names the file, the line when known, and what is wrong."""

    def __init__(self, source: str | Path | None, reason: str, line: int | None = None):
        self.source = str(source) if source is not None else None
        # One line whatever the data hold: a line break inside a quoted cell is shown escaped.
        self.reason = reason.replace("\r", "\\r").replace("\n", "\\n")
        self.line = line
        where = self.source or "input"
        if line is not None:
            where = f"{where}, line {line}"
        super().__init__(f"{where}: {self.reason}")


def error_summary(error: BaseException) -> str:
    """An exception in one line: its first non-empty line of text, else its type's name."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def check_k(k: int) -> int:
    """`k`, the number of results to list (`-k/--k` of every command), or a one-line error when it
    is not a whole number of at least 1."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise HapnetError(f"--k must be at least 1, got {k!r}")
    return int(k)
