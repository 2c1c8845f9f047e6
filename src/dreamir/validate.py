"""`dreamir validate PATH...`: check corpus, queries, qrels, training and head files and report every problem
found (file, line, field, what was expected), not only the first."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from dreamir.artefacts import DESCRIPTION, MANIFEST_FILE, verify
from dreamir.data.beir import read_corpus, read_qrels, read_queries
from dreamir.data.errors import DataFormatError, EmptyFileError
from dreamir.data.training import read_training_file
from dreamir.llm.heads import HeadSet
from dreamir.search import load_index

MAX_PROBLEMS_PER_FILE = 100


def _every_problem(path: Path, read: Callable[[Path], Any]) -> tuple[list[str], Any]:
    """Run ``read`` until it passes, blanking each line it rejects (loaders skip blank lines, so line
    numbers and checks across lines, such as duplicate ids, stay as they are). Returns the problems and
    what ``read`` returned for the remaining lines (None when the file could not be read at all)."""
    try:
        lines = path.read_bytes().splitlines(keepends=True)
    except OSError as error:
        return [f"{path}: cannot be read ({error.strerror or error})"], None
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / path.name
        while len(problems) < MAX_PROBLEMS_PER_FILE:
            copy.write_bytes(b"".join(lines))
            try:
                return problems, read(copy)
            except EmptyFileError as error:
                # Every line was rejected above: those are the problems, not the emptiness that follows.
                return (problems or [str(EmptyFileError(path, error.reason))]), None
            except DataFormatError as error:
                problems.append(str(DataFormatError(path, error.line, error.field, error.reason)))
                if error.line is None:
                    return problems, None
                lines[error.line - 1] = b"\n"
            except (UnicodeDecodeError, ValueError) as error:
                # The message names the scratch copy: name the user's file instead.
                problems.append(
                    f"{path}: {str(error).replace(str(copy) + ': ', '').replace(str(copy), str(path))}"
                )
                return problems, None
    problems.append(f"{path}: stopped after {MAX_PROBLEMS_PER_FILE} problems")
    return problems, None


def _kind(path: Path) -> str:
    """What a file holds, from its name: qrels (.tsv), head file (.json), corpus, queries or training."""
    if path.suffix == ".tsv":
        return "qrels"
    if path.suffix == ".json":
        return "heads"
    if "corpus" in path.name:
        return "corpus"
    if "quer" in path.name:
        return "queries"
    return "training"


def validate_file(path: Path, kind: str | None = None) -> list[str]:
    kind = kind or _kind(path)
    if kind == "heads":
        try:
            HeadSet.load(path)
        except ValueError as error:
            return [str(error)]
        return []
    readers = {
        "qrels": read_qrels,
        "corpus": read_corpus,
        "queries": read_queries,
        "training": read_training_file,
    }
    return _every_problem(path, readers[kind])[0]


def validate_beir_directory(directory: Path) -> list[str]:
    """corpus.jsonl, queries.jsonl and every qrels/*.tsv, the qrels' ids checked against the other two; a
    directory with neither queries.jsonl nor qrels/ is a corpus directory (what `dreamir adapt` reads), whose
    corpus.jsonl alone is checked."""
    corpus_problems, corpus = _every_problem(directory / "corpus.jsonl", read_corpus)
    if not (directory / "queries.jsonl").exists() and not (directory / "qrels").exists():
        return corpus_problems
    query_problems, queries = _every_problem(directory / "queries.jsonl", read_queries)
    problems = corpus_problems + query_problems
    qrels_files = sorted((directory / "qrels").glob("*.tsv"))
    if not qrels_files:
        problems.append(f"{directory / 'qrels'}: no qrels/*.tsv file")
    for qrels in qrels_files:
        problems += _every_problem(qrels, lambda p: read_qrels(p, queries, corpus))[0]
    return problems


def validate_artefact(directory: Path) -> list[str]:
    """An index, export, evaluation or adapted model: every file against its manifest's checksum (and an
    index loaded, which checks its ids, titles and vectors)."""
    try:
        manifest = verify(directory, tuple(DESCRIPTION))
        if manifest and manifest["kind"] == "index":
            load_index(directory)
    except ValueError as error:
        return [str(error)]
    return []


def validate_paths(paths: Iterable[str | Path]) -> list[str]:
    problems: list[str] = []
    for path in map(Path, paths):
        if path.is_dir() and (path / MANIFEST_FILE).is_file():
            problems += validate_artefact(path)
        elif path.is_dir():
            problems += validate_beir_directory(path)
        elif not path.exists():
            problems.append(f"{path}: no such file or directory")
        else:
            problems += validate_file(path)
    return problems


def run_validate(paths: list[str]) -> int:
    """Print every problem; exit status 1 when there is any, 0 when every file is sound."""
    problems = validate_paths(paths)
    for problem in problems:
        print(problem)
    print(
        f"{len(problems)} problem(s) in {len(paths)} path(s)" if problems else f"{len(paths)} path(s) valid"
    )
    return 1 if problems else 0
