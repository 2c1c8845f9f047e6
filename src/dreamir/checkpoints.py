"""Checkpoint integrity and identity: a manifest of per-file SHA-256 checksums beside every checkpoint, the
newest valid checkpoint found by verifying them, the temporaries a kill leaves behind, and the settings a
checkpoint was trained with (so a resume with other settings is refused instead of silently mixed)."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from dreamir.io import file_sha256

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# Settings that may change between runs without changing what is trained.
FREE_TO_CHANGE = {"output_dir", "show_progress", "save_steps", "save_total_limit", "max_nonfinite_steps"}
FREE_TO_CHANGE |= {"threads", "train", "corpus", "allow_longer_run"}  # data is compared by content instead
FREE_TO_CHANGE |= {"document_cache", "document_cache_gb"}  # where keys and values are kept, not what they are


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: corrupt, or trained with other settings."""


def write_manifest(directory: Path) -> None:
    """Record the checksum of every file in ``directory`` (written last, inside the atomic write)."""
    files = {
        p.name: file_sha256(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST
    }
    (directory / MANIFEST).write_text(json.dumps({"sha256": files}, indent=2) + "\n", encoding="utf-8")


def problem_with(directory: Path, required: str) -> str | None:
    """Why ``directory`` is not a sound checkpoint, or None when every checksum matches."""
    if not (directory / required).is_file():
        return f"{required} is missing"
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return None  # written before manifests existed: nothing to verify against
    try:
        expected = json.loads(manifest.read_text(encoding="utf-8"))["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{MANIFEST} is unreadable ({error})"
    for name, checksum in expected.items():
        if not (directory / name).is_file():
            return f"{name} is missing"
        if file_sha256(directory / name) != checksum:
            return f"{name} does not match its checksum (truncated or corrupted)"
    return None


def newest_valid(
    checkpoints: Iterable[Path], required: str, load: Callable[[Path], Any]
) -> tuple[Path, Any] | None:
    """The newest checkpoint that verifies and loads, with what ``load`` returned; each one passed over is
    named in a warning, so a fallback to an older checkpoint is never silent."""
    for directory in sorted(checkpoints, reverse=True):
        problem = problem_with(directory, required)
        if problem is None:
            try:
                return directory, load(directory)
            except Exception as error:  # any unreadable file is a corrupt checkpoint, not a crash
                problem = f"cannot be loaded ({type(error).__name__}: {error})"
        logger.warning("checkpoint %s skipped: %s; trying an older one", directory, problem)
    return None


def remove_temporaries(output_dir: Path, checkpoints_dir: Path) -> None:
    """Delete the partial writes a kill leaves behind (the atomic writes' hidden siblings)."""
    for partial in [*checkpoints_dir.glob(".step-*"), *output_dir.glob(".final.*")]:
        logger.info("removing %s, left by an interrupted write", partial)
        shutil.rmtree(partial, ignore_errors=True)


def with_defaults(saved: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``saved`` with every setting it lacks taken from ``defaults``, section by section (an option added
    after a checkpoint was written counts as its default there)."""
    merged = dict(defaults) | dict(saved)
    for name, default in defaults.items():
        if isinstance(default, Mapping) and isinstance(saved.get(name), Mapping):
            merged[name] = with_defaults(saved[name], default)
    return merged


def settings_differences(saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``name: checkpoint X, now Y`` for every setting that matters and differs."""
    differences = []
    for name in sorted(set(saved) | set(current)):
        if name in FREE_TO_CHANGE:
            continue
        old, new = saved.get(name), current.get(name)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            differences += settings_differences(old, new, f"{prefix}{name}.")
        elif old != new and name == "data":
            differences.append(f"{prefix}data: the training rows or their passages differ (another --train?)")
        elif old != new:
            differences.append(f"{prefix}{name}: checkpoint {old!r}, now {new!r}")
    return differences
