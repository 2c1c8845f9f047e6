"""BEIR-layout datasets: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``."""

from __future__ import annotations

import logging
from collections.abc import Container, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreamir.data.errors import (
    DataFormatError,
    EmptyFileError,
    decode_line,
    iter_jsonl_records,
    open_data_file,
    optional_string,
    require_string,
)
from dreamir.io import write_jsonl_atomic, write_text_atomic

logger = logging.getLogger(__name__)
QRELS_HEADER = ("query-id", "corpus-id", "score")


@dataclass(frozen=True)
class Document:
    doc_id: str
    title: str
    text: str

    @property
    def full_text(self) -> str:
        # Same concatenation as BEIR's sentence-transformers evaluation, so scores stay comparable.
        return (self.title + " " + self.text).strip()


@dataclass
class BeirDataset:
    name: str
    corpus: dict[str, Document]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def read_corpus(path: str | Path) -> dict[str, Document]:
    """Read ``corpus.jsonl``: objects with string ``_id`` and ``text``; ``title`` may be absent."""
    corpus: dict[str, Document] = {}
    for line, record in iter_jsonl_records(path):
        doc_id = require_string(record, "_id", path, line, allow_empty=False)
        text = require_string(record, "text", path, line)
        title = optional_string(record, "title", path, line) or ""
        if doc_id in corpus:
            raise DataFormatError(path, line, "_id", f"duplicate document id {doc_id!r}")
        corpus[doc_id] = Document(doc_id=doc_id, title=title, text=text)
    if not corpus:
        raise EmptyFileError(path, "holds no documents (an empty corpus)")
    return corpus


def read_queries(path: str | Path) -> dict[str, str]:
    """Read ``queries.jsonl``: objects with string ``_id`` and ``text`` (other keys are ignored)."""
    queries: dict[str, str] = {}
    for line, record in iter_jsonl_records(path):
        query_id = require_string(record, "_id", path, line, allow_empty=False)
        text = require_string(record, "text", path, line)
        if query_id in queries:
            raise DataFormatError(path, line, "_id", f"duplicate query id {query_id!r}")
        queries[query_id] = text
    return queries


def read_qrels(
    path: str | Path,
    known_query_ids: Container[str] | None = None,
    known_doc_ids: Container[str] | None = None,
) -> dict[str, dict[str, int]]:
    """Read a tab-separated qrels file (``query-id corpus-id score``, header optional).

    Ids are checked against ``known_query_ids`` / ``known_doc_ids`` when given.
    """
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    with open_data_file(path) as handle:
        for line_number, raw_bytes in enumerate(handle, start=1):
            row = decode_line(raw_bytes, path, line_number).rstrip("\r\n")
            if not row.strip():
                continue
            columns = row.split("\t")
            if line_number == 1 and columns[0].strip() == QRELS_HEADER[0]:
                continue
            if len(columns) != 3:
                raise DataFormatError(
                    path,
                    line_number,
                    None,
                    f"expected 3 tab-separated columns (query-id, corpus-id, score), got {len(columns)}",
                )
            query_id, doc_id, score_text = (column.strip() for column in columns)
            if not query_id:
                raise DataFormatError(path, line_number, "query-id", "must not be empty")
            if not doc_id:
                raise DataFormatError(path, line_number, "corpus-id", "must not be empty")
            try:
                score = int(score_text)
            except ValueError:
                raise DataFormatError(
                    path, line_number, "score", f"expected an integer, got {score_text!r}"
                ) from None
            if known_query_ids is not None and query_id not in known_query_ids:
                raise DataFormatError(path, line_number, "query-id", f"unknown query id {query_id!r}")
            if known_doc_ids is not None and doc_id not in known_doc_ids:
                raise DataFormatError(path, line_number, "corpus-id", f"unknown document id {doc_id!r}")
            judged = qrels.setdefault(query_id, {})
            if judged.get(doc_id, score) != score:
                raise DataFormatError(
                    path,
                    line_number,
                    "score",
                    f"conflicting judgements for ({query_id!r}, {doc_id!r}): {judged[doc_id]} and {score}",
                )
            judged[doc_id] = score
    if not qrels:
        raise EmptyFileError(path, "holds no judgements (empty qrels)")
    return qrels


def load_beir(directory: str | Path, split: str = "test") -> BeirDataset:
    """Load a BEIR dataset; only queries judged in ``split`` are kept, the corpus is kept whole."""
    directory = Path(directory)
    if not directory.is_dir():
        reason = "is a file" if directory.exists() else "does not exist"
        raise DataFormatError(
            directory,
            None,
            None,
            f"{reason}: expected a BEIR directory (corpus.jsonl, queries.jsonl, qrels/)",
        )
    qrels_path = directory / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        available = sorted(p.stem for p in (directory / "qrels").glob("*.tsv"))
        raise FileNotFoundError(f"{qrels_path}: no qrels for split {split!r} (available: {available})")
    corpus = read_corpus(directory / "corpus.jsonl")
    all_queries = read_queries(directory / "queries.jsonl")
    qrels = read_qrels(qrels_path, known_query_ids=all_queries, known_doc_ids=corpus)
    # BEIR convention: the split's queries are exactly those with judgements in its qrels.
    queries = {query_id: text for query_id, text in all_queries.items() if query_id in qrels}
    unjudged = [query_id for query_id, judged in qrels.items() if max(judged.values()) <= 0]
    if unjudged:
        logger.warning(
            "%s: %d of %d queries have no relevant document (every score <= 0, e.g. %r); they count as 0 "
            "in every average",
            qrels_path,
            len(unjudged),
            len(qrels),
            unjudged[0],
        )
    return BeirDataset(name=directory.name, corpus=corpus, queries=queries, qrels=qrels)


def write_beir(
    directory: str | Path,
    dataset: BeirDataset,
    split: str = "test",
    query_metadata: Mapping[str, dict[str, Any]] | None = None,
) -> None:
    """Write ``dataset`` in BEIR layout under ``directory`` (each file atomically).

    ``query_metadata`` (optional, by query id) goes into each query's "metadata" key, as in BEIR
    files; load_beir ignores it.
    """
    directory = Path(directory)
    for query_id, judged in dataset.qrels.items():
        # Refuse to write a dataset that load_beir would reject.
        if query_id not in dataset.queries:
            raise ValueError(f"qrels name query {query_id!r} that is not in the dataset's queries")
        missing = [doc_id for doc_id in judged if doc_id not in dataset.corpus]
        if missing:
            raise ValueError(f"qrels for query {query_id!r} name documents not in the corpus: {missing[:5]}")
    write_jsonl_atomic(
        directory / "corpus.jsonl",
        ({"_id": doc.doc_id, "title": doc.title, "text": doc.text} for doc in dataset.corpus.values()),
    )
    metadata = query_metadata or {}
    write_jsonl_atomic(
        directory / "queries.jsonl",
        (
            {
                "_id": query_id,
                "text": text,
                **({"metadata": metadata[query_id]} if query_id in metadata else {}),
            }
            for query_id, text in dataset.queries.items()
        ),
    )
    rows = ["\t".join(QRELS_HEADER)]
    for query_id, judged in dataset.qrels.items():
        for doc_id, score in judged.items():
            for value, name in ((query_id, "query id"), (doc_id, "document id")):
                if "\t" in value or "\n" in value:
                    raise ValueError(f"{name} {value!r} contains a tab or newline and cannot go in a TSV")
            rows.append(f"{query_id}\t{doc_id}\t{int(score)}")
    write_text_atomic(directory / "qrels" / f"{split}.tsv", "\n".join(rows) + "\n")
