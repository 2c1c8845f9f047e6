"""Data-format errors that always name the file, the line and the field at fault.

Also holds the two small readers every data format here shares (JSONL records, typed fields),
so each format reports problems the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class DataFormatError(ValueError):
    """Bad input data: ``path:line: field 'name': reason``.

    ``line`` is 1-based; it and ``field`` are None when the problem is not tied to one line or field.
    """

    def __init__(self, path: str | Path, line: int | None, field: str | None, reason: str) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.reason = reason
        location = self.path if line is None else f"{self.path}:{line}"
        where = location if field is None else f"{location}: field '{field}'"
        super().__init__(f"{where}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle through their args by default; keep the structured attributes instead.
        return (type(self), (self.path, self.line, self.field, self.reason))


class EmptyFileError(DataFormatError):
    """A data file with no records at all."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(path, None, None, reason)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.reason))


def open_data_file(path: str | Path):
    """Open a data file for reading bytes; a directory given instead is a DataFormatError naming it."""
    path = Path(path)
    if path.is_dir():
        raise DataFormatError(path, None, None, "is a directory, expected a file")
    return path.open("rb")


def decode_line(raw: bytes, path: str | Path, line_number: int) -> str:
    """One line of a text data file as UTF-8; undecodable bytes are a DataFormatError naming the line."""
    try:
        # utf-8-sig tolerates a byte-order mark on the first line (common from Windows tools).
        return raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
    except UnicodeDecodeError as error:
        raise DataFormatError(path, line_number, None, f"not valid UTF-8 ({error.reason})") from None


def iter_jsonl_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSONL file.

    Raises DataFormatError for undecodable bytes, malformed JSON or a value that is not an object.
    """
    path = Path(path)
    with open_data_file(path) as handle:
        for line_number, raw in enumerate(handle, start=1):
            text = decode_line(raw, path, line_number)
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                raise DataFormatError(
                    path, line_number, None, f"malformed JSON: {error.msg} (column {error.colno})"
                ) from None
            if not isinstance(record, dict):
                raise DataFormatError(
                    path, line_number, None, f"expected a JSON object, got {type(record).__name__}"
                )
            yield line_number, record


def require_string(
    record: dict[str, Any], field: str, path: str | Path, line: int, *, allow_empty: bool = True
) -> str:
    """Return ``record[field]``, which must be present and a string (non-blank unless ``allow_empty``)."""
    if field not in record or record[field] is None:
        raise DataFormatError(path, line, field, "missing")
    return _checked_string(record[field], field, path, line, allow_empty)


def optional_string(
    record: dict[str, Any], field: str, path: str | Path, line: int, *, allow_empty: bool = True
) -> str | None:
    """Like require_string, but an absent or null field gives None."""
    if record.get(field) is None:
        return None
    return _checked_string(record[field], field, path, line, allow_empty)


def _checked_string(value: Any, field: str, path: str | Path, line: int, allow_empty: bool) -> str:
    if not isinstance(value, str):
        raise DataFormatError(path, line, field, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataFormatError(path, line, field, "must not be empty")
    return value
