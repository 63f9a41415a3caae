"""Exceptions raised by nfcl.

Every error the package raises on purpose derives from NfclError, so callers
can catch them all; DataError and InputError also derive from ValueError.
"""

from __future__ import annotations


class NfclError(Exception):
    """Base class of the errors raised by nfcl."""


class DataError(NfclError, ValueError):
    """Malformed input data: a file or table nfcl cannot read as documented.

    The message starts with where the problem is, as far as it is known:
    ``"plays.csv, line 12, column 'ms_played': not a number: 'abc'"``.
    ``column`` is a column or key name (str) or a character position (int, for
    JSON syntax errors). ``row`` is a 0-based row for in-memory tables, used
    where there is no file line. The parts are kept as attributes.
    """

    def __init__(
        self,
        message: str,
        file: str | None = None,
        line: int | None = None,
        column: str | int | None = None,
        row: int | None = None,
    ):
        self.reason = message
        self.file = None if file is None else str(file)
        self.line = line
        self.column = column
        self.row = row
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.file is not None:
            where.append(self.file)
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.row is not None:
            where.append(f"row {self.row}")
        if isinstance(self.column, str):
            where.append(f"column {self.column!r}")
        elif self.column is not None:
            where.append(f"column {self.column}")
        return f"{', '.join(where)}: {self.reason}" if where else self.reason


class InputError(NfclError, ValueError):
    """An argument of the wrong type, shape, dtype or value."""
