"""Kept so that ``from dreamir.candidates import ...`` still works: BM25 now lives in dreamir.search.bm25."""

from dreamir.search.bm25 import (
    BM25_B,
    BM25_K1,
    BM25_METHOD,
    STOPWORDS,
    BM25Index,
    StemFunction,
    bm25_run,
    default_stemmer,
    mine_candidates,
)

__all__ = [
    "BM25_B",
    "BM25_K1",
    "BM25_METHOD",
    "STOPWORDS",
    "BM25Index",
    "StemFunction",
    "bm25_run",
    "default_stemmer",
    "mine_candidates",
]
