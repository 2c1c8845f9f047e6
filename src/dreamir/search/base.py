"""What every index shares: ``search(queries, k)`` returns each query's ranked ``(doc_id, score)`` hits,
``run`` turns that into a BEIR/TREC run, and ``save``/``load`` keep the index in a directory together with
a ``index.json`` that says which kind of index it is and how it was built."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from dreamir.data.errors import DataFormatError
from dreamir.io import atomic_path

INDEX_FILE = "index.json"
DOC_IDS_FILE = "doc_ids.json"
TITLES_FILE = "titles.json"

# One list per query, best first: (document id, score).
Hits = list[list[tuple[str, float]]]
# {query_id: {doc_id: score}}, what pytrec_eval and TREC run files hold.
Run = dict[str, dict[str, float]]


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
    ) -> Path:
        """Write the index atomically; ``metadata`` (e.g. the model that encoded it) joins index.json and
        ``titles`` (one per document, for display) go to titles.json."""
        if titles is not None and len(titles) != len(self.doc_ids):
            raise ValueError(f"{len(titles)} titles but {len(self.doc_ids)} documents")
        directory = Path(directory)
        earlier = (directory / INDEX_FILE).is_file()
        with atomic_path(directory, replace_directory=earlier) as tmp:
            tmp.mkdir()
            self._save_files(tmp)
            (tmp / DOC_IDS_FILE).write_text(json.dumps(self.doc_ids, ensure_ascii=False), encoding="utf-8")
            if titles is not None:
                (tmp / TITLES_FILE).write_text(json.dumps(list(titles), ensure_ascii=False), encoding="utf-8")
            info = {"kind": self.kind, "documents": len(self.doc_ids), **self.settings(), **(metadata or {})}
            (tmp / INDEX_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", "utf-8")
        return directory


def read_index_info(directory: str | Path) -> dict[str, Any]:
    """index.json of an index directory, with a clear error when it is not one."""
    path = Path(directory) / INDEX_FILE
    if not path.is_file():
        raise IndexFormatError(directory, f"no {INDEX_FILE}: not an index written by `dreamir index`")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise IndexFormatError(path, f"malformed JSON: {error.msg} (line {error.lineno})") from None
    if not isinstance(info, dict) or not isinstance(info.get("kind"), str):
        raise IndexFormatError(path, "field 'kind': expected the index kind (a string)")
    return info


def read_doc_ids(directory: str | Path) -> list[str]:
    path = Path(directory) / DOC_IDS_FILE
    if not path.is_file():
        raise IndexFormatError(directory, f"no {DOC_IDS_FILE}")
    doc_ids = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(doc_ids, list) or not all(isinstance(i, str) for i in doc_ids):
        raise IndexFormatError(path, "expected a JSON list of document ids (strings)")
    return doc_ids


def hits_from_arrays(doc_ids: Sequence[str], indices: Any, scores: Any) -> Hits:
    """Row-wise (index, score) arrays -> Hits; negative indices (FAISS's "no result") are dropped."""
    return [
        [(doc_ids[int(i)], float(s)) for i, s in zip(row_i, row_s, strict=True) if int(i) >= 0]
        for row_i, row_s in zip(indices, scores, strict=True)
    ]
