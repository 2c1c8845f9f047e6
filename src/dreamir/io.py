"""Atomic writes: a crash never leaves a half-written file or directory behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class OutputPathError(ValueError):
    """An output path that cannot be written without destroying something the user did not ask to replace."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        super().__init__(f"{path}: {reason}")


def check_output_file(path: str | Path) -> Path:
    """Refuse, before any work is done, an output file path that is an existing directory.

    Writing a file there would first have to delete the directory and everything in it.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(
            path, "is an existing directory; refusing to replace it with a file (give a file path instead)"
        )
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise OutputPathError(path, f"cannot be created: {blocking} is a file, not a directory")
    return path


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _temporaries(path: Path) -> list[Path]:
    """The hidden siblings ``atomic_path`` makes for ``path`` (``.NAME.`` and mkdtemp's 8 characters) that
    hold nothing but its own entries (the new version, the old one moved aside, or the temporary of a write
    nested inside it): anything else of that name is left alone."""
    pattern = re.compile(re.escape(f".{path.name}.") + r"[A-Za-z0-9_]{8}")
    if not path.parent.is_dir():
        return []
    return [
        sibling
        for sibling in path.parent.iterdir()
        if pattern.fullmatch(sibling.name)
        and sibling.is_dir()
        and not sibling.is_symlink()
        and all(
            entry.name in (path.name, path.name + ".old") or pattern.fullmatch(entry.name)
            for entry in sibling.iterdir()
        )
    ]


def remove_stale_temporaries(path: str | Path) -> None:
    """Clean what a killed write of ``path`` left behind. A kill between atomic_path's two renames leaves
    ``path`` missing and the previous version in the temporary: it is put back, not deleted."""
    path = Path(path)
    for temporary in _temporaries(path):
        previous = temporary / (path.name + ".old")
        if previous.exists() and not path.exists():
            logger.warning("restoring %s, moved aside by an interrupted write", path)
            os.replace(previous, path)
        logger.info("removing %s, left by an interrupted write", temporary)
        shutil.rmtree(temporary, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: str | Path, *, replace_directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; it is renamed onto ``path`` only if the block succeeds.

    Works for files and directories alike (the block decides what it creates at the yielded path). An
    existing directory at ``path`` is replaced only with ``replace_directory=True`` (a directory this
    program wrote itself); otherwise the write is refused and the directory left untouched.
    """
    path = Path(path)
    if not replace_directory:
        check_output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    tmp = tmp_dir / path.name
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            # A directory cannot be replaced atomically while it exists: move it aside first.
            old = tmp_dir / (path.name + ".old")
            os.replace(path, old)
            os.replace(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    write_text_atomic(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_log_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of an append-only JSONL log; a line cut short by a crash is skipped, not an error."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
