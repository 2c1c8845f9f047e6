"""Artefacts you can trust: every directory a command writes (an index, an export, an evaluation, an adapted
model, a saved retriever) carries ``dreamir_manifest.json``, saying what made it (the command and its settings,
the dreamir version), what it was built from (model and corpus fingerprints) and the SHA-256 of each of its
files. Reading an artefact back verifies the checksums, and its model and corpus are compared with the ones
it is used with: a mismatch is an error naming the artefact and what differs, never a result.

Writing follows one rule: a command writes only to a new path, an empty directory, or an artefact of its own
kind (its manifest says so); anything else is refused before any work unless ``overwrite`` is given. The
directory is built as a hidden temporary and renamed into place (whole or not at all), the files a user
added beside an earlier artefact are carried over, and the temporaries of a killed run are cleaned first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from dreamir.data.errors import DataFormatError, read_json_file
from dreamir.io import (
    OutputPathError,
    atomic_path,
    check_output_file,
    file_sha256,
    remove_stale_temporaries,
    write_json_atomic,
)
from dreamir.models import resolve_model

logger = logging.getLogger(__name__)

MANIFEST_FILE = "dreamir_manifest.json"
Kind = Literal["index", "export", "eval", "adapt", "model"]
# Each kind as messages name it, and the command that writes it.
DESCRIPTION = {
    "index": ("an index", "dreamir index"),
    "export": ("an export", "dreamir export"),
    "eval": ("an evaluation", "dreamir eval"),
    "adapt": ("an adapted model", "dreamir adapt"),
    "model": ("a saved retriever", "dreamir train"),
}


class ArtefactError(DataFormatError):
    """An artefact that cannot be trusted: a damaged file, or built from another model or corpus."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(path, None, None, reason)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.reason))


def dreamir_version() -> str:
    try:
        return importlib.metadata.version("dreamir")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# ---- fingerprints ----------------------------------------------------------------------------------------
def corpus_fingerprint(documents: Mapping[str, Any]) -> dict[str, Any]:
    """``{documents, ids_sha256, content_sha256}`` of ``{doc_id: Document}``: the ids in order, and every
    id, title and text (so a corrected passage counts as another corpus)."""
    ids, content = hashlib.sha256(), hashlib.sha256()
    for doc_id, document in documents.items():
        ids.update(doc_id.encode() + b"\0")
        for part in (doc_id, document.title, document.text):
            content.update(part.encode() + b"\0")
    return {"documents": len(documents), "ids_sha256": ids.hexdigest(), "content_sha256": content.hexdigest()}


def directory_sha256(directory: Path) -> str:
    """One checksum of every file under ``directory`` (names and contents, the manifest aside); computed
    once per process for files that have not changed (a command compares a model several times)."""
    files = sorted(p for p in Path(directory).resolve().rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    return _directory_sha256(
        tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files), str(directory)
    )


@functools.lru_cache(maxsize=16)
def _directory_sha256(files: tuple[tuple[str, int, int], ...], directory: str) -> str:
    root = Path(directory).resolve()
    digest = hashlib.sha256()
    for name, _, _ in files:
        digest.update(f"{Path(name).relative_to(root).as_posix()}\0{file_sha256(name)}\0".encode())
    return digest.hexdigest()


def model_fingerprint(name: str, directory: Path | None) -> dict[str, Any]:
    """The model an artefact was made with: ``bm25``, or a retriever directory and the checksum of its files."""
    if directory is None:
        return {"name": name, "kind": "bm25"}
    return {
        "name": name,
        "kind": "dense",
        "path": str(directory.resolve()),
        "sha256": directory_sha256(directory),
    }


def file_checksums(directory: Path, names: Iterable[str] | None = None) -> dict[str, str]:
    """SHA-256 of every file under ``directory`` (or of ``names``, relative paths), the manifest aside."""
    if names is None:
        names = (
            p.relative_to(directory).as_posix()
            for p in directory.rglob("*")
            if p.is_file() and p.name != MANIFEST_FILE
        )
    return {name: file_sha256(directory / name) for name in sorted(names)}


# ---- the manifest ----------------------------------------------------------------------------------------
def write_manifest(
    directory: Path,
    kind: Kind,
    *,
    command: Mapping[str, Any] | None = None,
    model: Mapping[str, Any] | None = None,
    corpus: Mapping[str, Any] | None = None,
    files: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Write ``directory``'s manifest, last, over every file in it (or over ``files``)."""
    manifest = {
        "kind": kind,
        "dreamir_version": dreamir_version(),
        "command": dict(command or {}),
        "model": dict(model) if model else None,
        "corpus": dict(corpus) if corpus else None,
        "sha256": file_checksums(directory, files),
    }
    write_json_atomic(directory / MANIFEST_FILE, manifest)
    return manifest


def command_record(name: str, settings: Any) -> dict[str, Any]:
    """What made an artefact: the command and its settings (a dataclass of them)."""
    as_dict = dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else dict(settings)
    return {"name": f"dreamir {name}", "settings": json.loads(json.dumps(as_dict, default=str))}


def write_adapt_manifest(out: Path, args: Any, corpus: Mapping[str, Any]) -> None:
    """``dreamir adapt``'s manifest over what it hands over (the model, the report and the curves; work/ is
    its resumable state, not the artefact)."""
    model = sorted(p.relative_to(out).as_posix() for p in (out / "model").rglob("*") if p.is_file())
    report = [name for name in ("report.json", "report.md", "curves.png") if (out / name).is_file()]
    write_manifest(
        out,
        "adapt",
        command=command_record("adapt", args),
        model=model_fingerprint(args.retriever, resolve_model(args.retriever)),
        corpus=corpus_fingerprint(corpus),
        files=model + report,
    )


def read_manifest(directory: str | Path) -> dict[str, Any] | None:
    """``directory``'s manifest, None when it has none; a malformed one names the file and field."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        return None
    manifest = read_json_file(path)
    if not isinstance(manifest.get("kind"), str):
        raise DataFormatError(path, None, "kind", "expected the artefact kind (a string)")
    checksums = manifest.get("sha256")
    if not isinstance(checksums, dict) or not all(isinstance(v, str) for v in checksums.values()):
        raise DataFormatError(path, None, "sha256", "expected an object of file names and checksums")
    for name in ("model", "corpus"):
        if not isinstance(manifest.get(name), dict | None):
            raise DataFormatError(path, None, name, "expected an object or null")
    return manifest


def verify(directory: str | Path, kinds: tuple[str, ...]) -> dict[str, Any] | None:
    """Check ``directory`` is an artefact of one of ``kinds`` whose files all match their checksums; returns
    its manifest, or None (with a warning) for one written before manifests existed."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        logger.warning(
            "%s has no %s (written by an older dreamir): its files are not verified; write it again to add one",
            directory,
            MANIFEST_FILE,
        )
        return None
    if manifest["kind"] not in kinds:
        raise ArtefactError(
            directory, f"holds a {manifest['kind']!r} artefact, not {' or '.join(map(repr, kinds))}"
        )
    for name, checksum in manifest["sha256"].items():
        path = directory / name
        if not path.is_file():
            raise ArtefactError(path, f"is missing (listed in {MANIFEST_FILE})")
        if file_sha256(path) != checksum:
            raise ArtefactError(
                path,
                f"does not match its checksum in {MANIFEST_FILE} (damaged, or changed since it was written)",
            )
    return manifest


def check_corpus(
    artefact: str | Path,
    manifest: Mapping[str, Any] | None,
    doc_ids: list[str],
    corpus: Mapping[str, Any],
    source: str | Path,
) -> None:
    """Refuse to use the artefact (an index) with another corpus than it was built over: its ids, then
    (when its manifest records it) its content."""
    if set(doc_ids) != set(corpus):
        missing = [i for i in doc_ids if i not in corpus]
        example = (
            f"{len(missing)} of its {len(doc_ids)} document ids are not in it (e.g. {missing[0]!r})"
            if missing
            else f"{len(corpus) - len(doc_ids)} of its documents are not in the index"
        )
        raise ArtefactError(artefact, f"was built over another corpus than {source}: {example}")
    recorded = (manifest or {}).get("corpus") or {}
    if (
        recorded.get("content_sha256")
        and recorded["content_sha256"]
        != corpus_fingerprint({i: corpus[i] for i in doc_ids})["content_sha256"]
    ):
        raise ArtefactError(
            artefact,
            f"was built over another version of {source}: same document ids, different titles or texts",
        )


# ---- writing ---------------------------------------------------------------------------------------------
def is_own(directory: Path, kind: Kind) -> bool:
    try:
        manifest = read_manifest(directory)
    except DataFormatError:
        return False
    return manifest is not None and manifest["kind"] == kind


def check_output_directory(path: str | Path, kind: Kind, overwrite: bool = False) -> Path:
    """Refuse, before any work, an output directory that is neither new, empty, nor an artefact of this
    kind (``overwrite`` allows writing into a directory of the user's: only the artefact's own files are
    replaced). Cleans the temporaries a killed write of ``path`` left."""
    path = check_output_file(path) if not Path(path).is_dir() else Path(path)
    remove_stale_temporaries(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(path, f"is a file; refusing to replace it with a {kind} directory")
    if path.is_dir() and any(path.iterdir()) and not is_own(path, kind) and not overwrite:
        raise OutputPathError(
            path,
            f"exists and is not {DESCRIPTION[kind][0]} written by `{DESCRIPTION[kind][1]}` (no {MANIFEST_FILE} "
            "saying so); refusing to "
            "replace it: give a new path, or --overwrite to write into it (its other files are kept)",
        )
    parent = next((p for p in path.parents if p.exists()), Path("."))
    if not os.access(parent, os.W_OK):
        raise OutputPathError(path, f"cannot be created: {parent} is not writable")
    return path


@contextlib.contextmanager
def artefact_directory(path: str | Path, kind: Kind, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory; when the block ends (having written the manifest), it replaces
    ``path`` in one rename, carrying over every file of ``path`` its earlier manifest does not list."""
    path = check_output_directory(path, kind, overwrite)
    with atomic_path(path, replace_directory=True) as tmp:
        tmp.mkdir()
        yield tmp
        if not (tmp / MANIFEST_FILE).is_file():
            raise RuntimeError(f"{kind} written without its manifest")
        _carry_over_user_files(path, tmp, kind)
        normalise_modes(tmp)


def _carry_over_user_files(old: Path, new: Path, kind: Kind) -> None:
    """Link (or copy) into ``new`` the files of ``old`` that an earlier artefact of ``kind`` did not write."""
    if not old.is_dir():
        return
    manifest = read_manifest(old) if is_own(old, kind) else None
    written = set((manifest or {}).get("sha256", {})) | {MANIFEST_FILE}
    for source in sorted(old.rglob("*")):
        name = source.relative_to(old).as_posix()
        if not source.is_file() or name in written or (new / name).exists():
            continue
        target = new / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def normalise_modes(directory: Path) -> None:
    """Files 0644 and directories 0755 (less the umask) throughout: some writers make 0600 files."""
    mask = _umask()
    directory.chmod(0o777 & ~mask)
    for path in directory.rglob("*"):
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def replaceable_file(path: str | Path, is_own_kind: Any, what: str, overwrite: bool = False) -> Path:
    """Refuse, before any work, an output file that exists and is not ``what`` (``is_own_kind(path)``)."""
    path = check_output_file(path)
    remove_stale_temporaries(path)
    if path.is_file() and not overwrite and not is_own_kind(path):
        raise OutputPathError(
            path, f"exists and is not {what}; refusing to replace it: give a new path, or --overwrite"
        )
    return path
