"""Data-format errors that always name the file, the line and the field at fault.

Also holds the two small readers every data format here shares (JSONL records, typed fields),
so each format reports problems the same way.
"""

from __future__ import annotations

import json
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin


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


# Byte-order marks of the encodings a text file saved by another tool is most often in, instead of UTF-8.
_OTHER_ENCODINGS = {
    b"\xff\xfe\x00\x00": "UTF-32",
    b"\x00\x00\xfe\xff": "UTF-32",
    b"\xff\xfe": "UTF-16",
    b"\xfe\xff": "UTF-16",
}


def _other_encoding(start: bytes) -> str | None:
    """The encoding the first bytes of a file show, when it is not UTF-8 (UTF-16/32, by their mark or the
    zero bytes between ASCII characters)."""
    for mark, name in _OTHER_ENCODINGS.items():
        if start.startswith(mark):
            return name
    if len(start) >= 4 and start[1::2].count(0) > len(start) // 4 and 0 not in start[::2][:2]:
        return "UTF-16"
    return None


def open_data_file(path: str | Path):
    """Open a data file for reading bytes; a directory given instead, or a file in UTF-16 or UTF-32, is a
    DataFormatError naming it (one message, instead of one per line)."""
    path = Path(path)
    if path.is_dir():
        raise DataFormatError(path, None, None, "is a directory, expected a file")
    handle = path.open("rb")
    encoding = _other_encoding(handle.read(64))
    handle.seek(0)
    if encoding:
        handle.close()
        raise DataFormatError(path, None, None, f"is encoded in {encoding}, not UTF-8: save it as UTF-8")
    return handle


def read_json_file(path: str | Path, expected: type = dict) -> Any:
    """A JSON file's value, which must be an ``expected`` (dict or list); undecodable bytes, malformed JSON
    or another type is a DataFormatError naming the file (and the line)."""
    path = Path(path)
    try:
        with open_data_file(path) as handle:
            raw = handle.read()
    except OSError as error:
        raise DataFormatError(path, None, None, f"cannot be read ({error.strerror or error})") from None
    try:
        value = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        raise DataFormatError(path, None, None, f"not valid UTF-8 ({error.reason})") from None
    except json.JSONDecodeError as error:
        raise DataFormatError(
            path, error.lineno, None, f"malformed JSON: {error.msg} (column {error.colno})"
        ) from None
    if not isinstance(value, expected):
        kind = {dict: "object", list: "list"}.get(expected, expected.__name__)
        raise DataFormatError(path, None, None, f"expected a JSON {kind}, got {_json_name(value)}")
    return value


def _json_name(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list"}
    return "null" if value is None else names.get(type(value), "an object")


def type_problem(value: Any, annotation: Any) -> str | None:
    """Why a JSON value does not fit a type annotation (int, float, bool, str, None, Literal, list[X] and
    unions of them), or None when it does (or the annotation is not one of these). ``True`` is not an
    integer here, nor ``2.0``: JSON says which the file meant."""
    if _fits(value, annotation):
        return None
    return f"expected {_describe(annotation)}, got {json.dumps(value)} ({_json_name(value)})"


def _fits(value: Any, annotation: Any) -> bool:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is Literal:
        return any(type(value) is type(arg) and value == arg for arg in args)
    if origin in (list, Sequence, tuple):
        return isinstance(value, list) and (not args or all(_fits(v, args[0]) for v in value))
    checks = {
        type(None): lambda v: v is None,
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }
    check = checks.get(annotation)
    return True if check is None else check(value)


def _describe(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(arg) for arg in args)
    if origin in (list, Sequence, tuple):
        return "a list" + (f" of {_describe(args[0])}" if args else "")
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


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
