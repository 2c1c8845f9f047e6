"""BM25 candidate mining (label-free) and BM25 runs for evaluation, built on ``bm25s``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import bm25s
import numpy as np

from dreamir.data.beir import BeirDataset, Document
from dreamir.data.training import TrainingExample, with_candidates

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


class BM25Index:
    """A BM25 index over a corpus of Documents, searched with ``search``."""

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
    ) -> None:
        if len(doc_ids) != len(texts):
            raise ValueError(f"{len(doc_ids)} document ids but {len(texts)} texts")
        if not doc_ids:
            raise ValueError("cannot build a BM25 index over an empty corpus")
        self.doc_ids = list(doc_ids)
        self.stemmer = stemmer
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
        return cls(
            list(corpus),
            [doc.full_text for doc in corpus.values()],
            stemmer=default_stemmer() if stemmer == "auto" else stemmer,
            method=method,
            k1=k1,
            b=b,
            show_progress=show_progress,
        )

    def __len__(self) -> int:
        return len(self.doc_ids)

    def search(
        self, queries: list[str], k: int, show_progress: bool = False
    ) -> list[list[tuple[str, float]]]:
        """Top-``k`` ``(doc_id, score)`` per query, best first; ``k`` is capped at the corpus size.

        Every query gets exactly min(k, len(index)) hits: when fewer documents share a word with the
        query, the rest are filled with zero-score documents.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if not queries:
            return []
        k = min(k, len(self.doc_ids))
        query_tokens = bm25s.tokenize(
            queries, stopwords=STOPWORDS, stemmer=self.stemmer, show_progress=False, return_ids=False
        )
        # Map words to the index's ids ourselves: words the corpus never saw are dropped.
        token_ids = [self._retriever.get_tokens_ids(tokens) for tokens in query_tokens]
        matched = [row for row, ids in enumerate(token_ids) if ids]
        # A query with no known word matches nothing: every document scores 0, so the first k are
        # as good as any (bm25s itself would raise on it).
        no_match = [(doc_id, 0.0) for doc_id in self.doc_ids[:k]]
        results: list[list[tuple[str, float]]] = [list(no_match) for _ in queries]
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


def mine_candidates(
    examples: list[TrainingExample], index: BM25Index, k: int, show_progress: bool = False
) -> list[TrainingExample]:
    """Copies of ``examples`` whose candidate_ids are their query's BM25 top-``k``.

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
