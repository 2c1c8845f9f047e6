"""BM25 search (``bm25s``), candidate mining (label-free) with any index, and BM25 runs for evaluation."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import bm25s
import numpy as np

from dreamir.data.beir import BeirDataset, Document
from dreamir.data.training import TrainingExample, with_candidates
from dreamir.search.base import Hits, IndexFormatError, SearchIndex, check_k, read_doc_ids, read_index_info

# bm25s's reference SciFact figure (nDCG@10 0.687) uses these settings with English stopwords and
# the Snowball stemmer from PyStemmer.
BM25_METHOD = "lucene"
BM25_K1 = 1.5
BM25_B = 0.75
STOPWORDS = "en"

# What bm25s.tokenize calls: a list of words in, their stems out (same length and order).
StemFunction = Callable[[list[str]], list[str]]


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

    def search(self, queries: Sequence[str], k: int, show_progress: bool = False) -> Hits:
        """Top-``k`` ``(doc_id, score)`` per query, best first; ``k`` is capped at the corpus size.

        Every query gets exactly min(k, len(index)) hits: when fewer documents share a word with the
        query, the rest are filled with zero-score documents.
        """
        check_k(k)
        if not queries:
            return []
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
        self._retriever.save(str(directory / "bm25s"))

    @classmethod
    def load(cls, directory: str | Path) -> BM25Index:
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
        index._retriever = bm25s.BM25.load(str(Path(directory) / "bm25s"))
        return index


def mine_candidates(
    examples: list[TrainingExample], index: SearchIndex, k: int, show_progress: bool = False
) -> list[TrainingExample]:
    """Copies of ``examples`` whose candidate_ids are their query's top-``k`` in ``index`` (BM25 or dense).

    Label-free: the gold document is not forced in, so training sees what retrieval would see.
    """
    hits = index.search([example.query for example in examples], k=k, show_progress=show_progress)
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
