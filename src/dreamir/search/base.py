"""What every index shares: ``search(queries, k)`` returns each query's ranked ``(doc_id, score)`` hits,
``run`` turns that into a BEIR/TREC run, and ``save``/``load`` keep the index in a directory together with
a ``index.json`` that says which kind of index it is and how it was built."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from dreamir.artefacts import artefact_directory, verify, write_manifest
from dreamir.data.errors import DataFormatError, read_json_file, type_problem

INDEX_FILE = "index.json"
DOC_IDS_FILE = "doc_ids.json"
TITLES_FILE = "titles.json"

# One list per query, best first: (document id, score).
Hits = list[list[tuple[str, float]]]
# {query_id: {doc_id: score}}, what pytrec_eval and TREC run files hold.
Run = dict[str, dict[str, float]]
# The fields of index.json and their types (checked when read, so an edited file is named, not a traceback).
INFO_FIELDS: dict[str, Any] = {
    "kind": str,
    "documents": int,
    "model": str,
    "model_path": str,
    "corpus": str,
    "similarity": str,
    "dimension": int,
    "faiss": Literal["flat", "hnsw"],
    "hnsw_m": int,
    "ef_construction": int,
    "ef_search": int,
    "method": str,
    "k1": float,
    "b": float,
    "stemmer": str | None,
    "stopwords": str | None,
    "build_seconds": float,
    "fusion": Literal["rrf", "interpolation"],
    "fusion_weight": float,
    "rrf_k": float,
    "fusion_depth": int,
}


class IndexFormatError(DataFormatError):
    """An index directory that is missing a file or holds another kind of index."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(path, None, None, reason)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.reason))


def check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")


class SearchIndex(ABC):
    """A searchable corpus. Subclasses set ``kind`` and implement search, _save_files and _load."""

    kind: ClassVar[str]
    doc_ids: list[str]

    def __len__(self) -> int:
        return len(self.doc_ids)

    @abstractmethod
    def search(self, queries: Sequence[str], k: int, show_progress: bool = False) -> Hits:
        """Top-``k`` ``(doc_id, score)`` per query text, best first; ``k`` is capped at the corpus size."""

    def run(self, queries: Mapping[str, str], k: int = 100, show_progress: bool = False) -> Run:
        """Search ``{query_id: text}`` and return ``{query_id: {doc_id: score}}``."""
        query_ids = list(queries)
        hits = self.search([queries[q] for q in query_ids], k, show_progress=show_progress)
        return {query_id: dict(ranked) for query_id, ranked in zip(query_ids, hits, strict=True)}

    def settings(self) -> dict[str, Any]:
        """What else describes the index (written to index.json)."""
        return {}

    @abstractmethod
    def _save_files(self, directory: Path) -> None:
        """Write the index's own files into ``directory`` (which exists and is empty)."""

    def save(
        self,
        directory: str | Path,
        metadata: Mapping[str, Any] | None = None,
        titles: Sequence[str] | None = None,
        *,
        provenance: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Write the index as a whole (see dreamir.artefacts: a new directory, or one holding an earlier
        index); ``metadata`` (e.g. the model that encoded it) joins index.json, ``titles`` (one per document,
        for display) go to titles.json and ``provenance`` (command, model, corpus) to the manifest."""
        if titles is not None and len(titles) != len(self.doc_ids):
            raise ValueError(f"{len(titles)} titles but {len(self.doc_ids)} documents")
        directory = Path(directory)
        with artefact_directory(directory, "index", overwrite) as tmp:
            self.write_files(tmp, metadata, titles)
            write_manifest(tmp, "index", **(provenance or {}))
        return directory

    def write_files(
        self, directory: Path, metadata: Mapping[str, Any] | None = None, titles: Sequence[str] | None = None
    ) -> None:
        """The index's files, doc_ids.json, titles.json and index.json into the existing, empty
        ``directory`` (no manifest: ``save`` writes it over them, a hybrid index over both its parts)."""
        self._save_files(directory)
        (directory / DOC_IDS_FILE).write_text(json.dumps(self.doc_ids, ensure_ascii=False), encoding="utf-8")
        if titles is not None:
            (directory / TITLES_FILE).write_text(
                json.dumps(list(titles), ensure_ascii=False), encoding="utf-8"
            )
        info = {"kind": self.kind, "documents": len(self.doc_ids), **self.settings(), **(metadata or {})}
        (directory / INDEX_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", "utf-8")


def verify_index(directory: str | Path) -> dict[str, Any] | None:
    """Every file of the index matches its checksum (its manifest, None for an index older than manifests)."""
    if not (Path(directory) / INDEX_FILE).is_file():
        raise IndexFormatError(directory, f"no {INDEX_FILE}: not an index written by `dreamir index`")
    return verify(directory, ("index",))


def read_index_info(directory: str | Path) -> dict[str, Any]:
    """index.json of an index directory, with a clear error when it is not one."""
    path = Path(directory) / INDEX_FILE
    if not path.is_file():
        raise IndexFormatError(directory, f"no {INDEX_FILE}: not an index written by `dreamir index`")
    info = read_json_file(path)
    if "kind" not in info:
        raise DataFormatError(path, None, "kind", "missing (the index kind)")
    for name, annotation in INFO_FIELDS.items():
        problem = type_problem(info[name], annotation) if name in info else None
        if problem:
            raise DataFormatError(path, None, name, problem)
    return info


def read_doc_ids(directory: str | Path) -> list[str]:
    """doc_ids.json: distinct strings (a repeated id would return one document for another)."""
    path = Path(directory) / DOC_IDS_FILE
    if not path.is_file():
        raise IndexFormatError(directory, f"no {DOC_IDS_FILE}")
    doc_ids = read_json_file(path, list)
    seen: dict[str, int] = {}
    for position, doc_id in enumerate(doc_ids):
        if not isinstance(doc_id, str):
            raise DataFormatError(
                path, None, f"[{position}]", f"expected a document id (a string), got {doc_id!r}"
            )
        if doc_id in seen:
            raise DataFormatError(
                path, None, f"[{position}]", f"duplicate document id {doc_id!r} (also at [{seen[doc_id]}])"
            )
        seen[doc_id] = position
    return doc_ids


def read_titles(directory: str | Path, documents: int) -> list[str]:
    """titles.json (one string per document; none when the index has no titles file)."""
    path = Path(directory) / TITLES_FILE
    if not path.is_file():
        return [""] * documents
    titles = read_json_file(path, list)
    if len(titles) != documents:
        raise IndexFormatError(path, f"{len(titles)} titles but {documents} document ids")
    problem = next((i for i, title in enumerate(titles) if not isinstance(title, str)), None)
    if problem is not None:
        raise DataFormatError(
            path, None, f"[{problem}]", f"expected a title (a string), got {titles[problem]!r}"
        )
    return titles


def hits_from_arrays(doc_ids: Sequence[str], indices: Any, scores: Any) -> Hits:
    """Row-wise (index, score) arrays -> Hits; negative indices (FAISS's "no result") are dropped."""
    return [
        [(doc_ids[int(i)], float(s)) for i, s in zip(row_i, row_s, strict=True) if int(i) >= 0]
        for row_i, row_s in zip(indices, scores, strict=True)
    ]
