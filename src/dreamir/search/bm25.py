"""BM25 search (``bm25s``), candidate mining (label-free) with any index, and BM25 runs for evaluation."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import bm25s
import numpy as np

from dreamir.data.beir import BeirDataset, Document
from dreamir.data.errors import DataFormatError, read_json_file, type_problem
from dreamir.data.training import TrainingExample, with_candidates
from dreamir.search.base import (
    Hits,
    IndexFormatError,
    SearchIndex,
    check_k,
    read_doc_ids,
    read_index_info,
    verify_index,
)

# bm25s sets its logger to DEBUG when imported (a DEBUG line on every run): follow the root logger instead.
logging.getLogger("bm25s").setLevel(logging.NOTSET)

# bm25s's reference SciFact figure (nDCG@10 0.687) uses these settings with English stopwords and
# the Snowball stemmer from PyStemmer.
BM25_METHOD = "lucene"
BM25_K1 = 1.5
BM25_B = 0.75
STOPWORDS = "en"

# What bm25s.tokenize calls: a list of words in, their stems out (same length and order).
StemFunction = Callable[[list[str]], list[str]]
BM25S_DIR = "bm25s"
# bm25s's own parameter file and the types its fields must have.
_BM25S_PARAMS = {
    "k1": float,
    "b": float,
    "delta": float,
    "method": str,
    "idf_method": str | None,
    "num_docs": int,
}


def default_stemmer() -> StemFunction | None:
    """PyStemmer's English Snowball stemmer when installed, else None (no stemming)."""
    try:
        import Stemmer as pystemmer  # optional: worth about +0.025 nDCG@10 on SciFact
    except ImportError:
        return None
    return pystemmer.Stemmer("english").stemWords


class BM25Index(SearchIndex):
    """A BM25 index over a corpus of Documents, searched with ``search``."""

    kind = "bm25"

    def __init__(
        self,
        doc_ids: Sequence[str],
        texts: Sequence[str],
        *,
        stemmer: StemFunction | None = None,
        method: str = BM25_METHOD,
        k1: float = BM25_K1,
        b: float = BM25_B,
        show_progress: bool = False,
        stemmer_name: str | None = None,
    ) -> None:
        if len(doc_ids) != len(texts):
            raise ValueError(f"{len(doc_ids)} document ids but {len(texts)} texts")
        if not doc_ids:
            raise ValueError("cannot build a BM25 index over an empty corpus")
        self.doc_ids = list(doc_ids)
        self.stemmer = stemmer
        # How to get the stemmer back when the index is loaded: "english" (PyStemmer), None, or "custom".
        self.stemmer_name = stemmer_name if stemmer is not None else None
        if stemmer is not None and stemmer_name is None:
            self.stemmer_name = "custom"
        self._bm25_settings = {"method": method, "k1": k1, "b": b}
        corpus_tokens = bm25s.tokenize(
            list(texts), stopwords=STOPWORDS, stemmer=stemmer, show_progress=show_progress
        )
        self._retriever = bm25s.BM25(method=method, k1=k1, b=b)
        self._retriever.index(corpus_tokens, show_progress=show_progress)

    @classmethod
    def from_corpus(
        cls,
        corpus: Mapping[str, Document],
        *,
        stemmer: StemFunction | Literal["auto"] | None = "auto",
        method: str = BM25_METHOD,
        k1: float = BM25_K1,
        b: float = BM25_B,
        show_progress: bool = False,
    ) -> BM25Index:
        """Index ``corpus`` (title + text); ``stemmer="auto"`` uses PyStemmer if installed, None none."""
        chosen = default_stemmer() if stemmer == "auto" else stemmer
        return cls(
            list(corpus),
            [doc.full_text for doc in corpus.values()],
            stemmer=chosen,
            stemmer_name="english" if stemmer == "auto" and chosen is not None else None,
            method=method,
            k1=k1,
            b=b,
            show_progress=show_progress,
        )

    def search(
        self, queries: Sequence[str], k: int, show_progress: bool = False, *, pad_to_k: bool = False
    ) -> Hits:
        """Top-``k`` ``(doc_id, score)`` per query, best first, among the documents that share a word with it
        (score > 0); a blank query is refused. ``pad_to_k`` (candidate mining): every query gets exactly
        min(k, len(index)) hits, the rest filled with zero-score documents, as training has always had.
        """
        check_k(k)
        if not queries:
            return []
        blank = next((i for i, query in enumerate(queries) if not query.strip()), None)
        if blank is not None and not pad_to_k:
            raise ValueError(f"query {blank + 1} of {len(queries)} is empty: BM25 has nothing to match")
        ranked = self._ranked(queries, k, show_progress)
        return ranked if pad_to_k else [[hit for hit in hits if hit[1] > 0] for hits in ranked]

    def _ranked(self, queries: Sequence[str], k: int, show_progress: bool) -> Hits:
        k = min(k, len(self.doc_ids))
        query_tokens = bm25s.tokenize(
            list(queries), stopwords=STOPWORDS, stemmer=self.stemmer, show_progress=False, return_ids=False
        )
        # Map words to the index's ids ourselves: words the corpus never saw are dropped.
        token_ids = [self._retriever.get_tokens_ids(tokens) for tokens in query_tokens]
        matched = [row for row, ids in enumerate(token_ids) if ids]
        # A query with no known word matches nothing: every document scores 0, so the first k are
        # as good as any (bm25s itself would raise on it).
        no_match = [(doc_id, 0.0) for doc_id in self.doc_ids[:k]]
        results: Hits = [list(no_match) for _ in queries]
        if matched:
            indices, scores = self._retriever.retrieve(
                [token_ids[row] for row in matched], k=k, show_progress=show_progress
            )
            for row, row_indices, row_scores in zip(
                matched, np.asarray(indices), np.asarray(scores), strict=True
            ):
                results[row] = [
                    (self.doc_ids[int(i)], float(s)) for i, s in zip(row_indices, row_scores, strict=True)
                ]
        return results

    def settings(self) -> dict[str, Any]:
        return {**self._bm25_settings, "stemmer": self.stemmer_name, "stopwords": STOPWORDS}

    def _save_files(self, directory: Path) -> None:
        if self.stemmer_name == "custom":
            raise ValueError("a BM25 index with a custom stemmer cannot be saved (its stemmer is code)")
        self._retriever.save(str(directory / BM25S_DIR))

    @classmethod
    def load(cls, directory: str | Path, *, manifest: Mapping[str, Any] | bool | None = False) -> BM25Index:
        """The index in ``directory``, its files verified against their checksums (unless the caller did,
        passing the ``manifest`` verify_index returned) and its scores finite."""
        if manifest is False:
            manifest = verify_index(directory)
        info = read_index_info(directory)
        if info["kind"] != cls.kind:
            raise IndexFormatError(directory, f"holds a {info['kind']!r} index, not a BM25 index")
        index = cls.__new__(cls)
        index.doc_ids = read_doc_ids(directory)
        index.stemmer_name = info.get("stemmer")
        index.stemmer = default_stemmer() if index.stemmer_name == "english" else None
        if index.stemmer_name == "english" and index.stemmer is None:
            raise IndexFormatError(directory, "was built with PyStemmer, which is not installed")
        index._bm25_settings = {key: info[key] for key in ("method", "k1", "b") if key in info}
        index._retriever = _load_bm25s(Path(directory) / BM25S_DIR, len(index.doc_ids))
        index.manifest = manifest
        return index


def _load_bm25s(path: Path, documents: int) -> bm25s.BM25:
    """bm25s's files, their parameters' types and the score matrix checked (finite, non-negative, within
    the documents), so a damaged file is one message naming it instead of a traceback or wrong scores."""
    params_file = path / "params.index.json"
    if not params_file.is_file():
        raise IndexFormatError(path, "no params.index.json: not a bm25s index")
    params = read_json_file(params_file)
    for name in ("data", "indices", "indptr"):  # named one by one: bm25s's own error names none
        array_file = path / f"{name}.csc.index.npy"
        try:
            np.load(array_file, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise IndexFormatError(array_file, f"cannot be read as a numpy array ({error})") from None
    for name, annotation in _BM25S_PARAMS.items():
        problem = type_problem(params[name], annotation) if name in params else None
        if problem:
            raise DataFormatError(params_file, None, name, problem)
    read_json_file(path / "vocab.index.json")
    try:
        retriever = bm25s.BM25.load(str(path))
    except Exception as error:  # bm25s and numpy raise many kinds for a damaged file
        raise IndexFormatError(path, f"cannot be read by bm25s ({type(error).__name__}: {error})") from None
    scores = retriever.scores
    if scores.get("num_docs") != documents:
        raise IndexFormatError(
            params_file, f"{scores.get('num_docs')} documents, but there are {documents} document ids"
        )
    data, indices = np.asarray(scores["data"]), np.asarray(scores["indices"])
    if not np.isfinite(data).all() or (data < 0).any():
        raise IndexFormatError(path / "data.csc.index.npy", "holds scores that are negative, NaN or infinite")
    if len(indices) != len(data) or (len(indices) and (indices.min() < 0 or indices.max() >= documents)):
        raise IndexFormatError(path / "indices.csc.index.npy", "holds document numbers outside the index")
    return retriever


def mine_candidates(
    examples: list[TrainingExample], index: SearchIndex, k: int, show_progress: bool = False
) -> list[TrainingExample]:
    """Copies of ``examples`` whose candidate_ids are their query's top-``k`` in ``index`` (BM25 or dense).

    Label-free: the gold document is not forced in, so training sees what retrieval would see.
    """
    # BM25 fills up with zero-score documents, so that every example gets k candidates.
    padding = {"pad_to_k": True} if isinstance(index, BM25Index) else {}
    hits = index.search([example.query for example in examples], k=k, show_progress=show_progress, **padding)
    return [
        with_candidates(example, [doc_id for doc_id, _ in ranked])
        for example, ranked in zip(examples, hits, strict=True)
    ]


def bm25_run(
    dataset: BeirDataset, k: int = 100, index: BM25Index | None = None
) -> dict[str, dict[str, float]]:
    """BM25 top-``k`` per query of ``dataset``: ``{query_id: {doc_id: score}}``."""
    index = BM25Index.from_corpus(dataset.corpus) if index is None else index
    query_ids = list(dataset.queries)
    hits = index.search([dataset.queries[query_id] for query_id in query_ids], k=k)
    return {query_id: dict(ranked) for query_id, ranked in zip(query_ids, hits, strict=True)}
