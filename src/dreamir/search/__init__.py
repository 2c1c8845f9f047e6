"""Search a corpus: one interface (``SearchIndex.search(queries, k)``, ``run``, ``save``/``load``) with three
implementations: BM25 (bm25s), exact dense search (numpy) and FAISS (flat inner product, or HNSW), and a
hybrid of BM25 with a dense one whose rankings are fused (dreamir.search.fusion)."""

from __future__ import annotations

from pathlib import Path

from dreamir.search.base import Hits, IndexFormatError, Run, SearchIndex, read_index_info, verify_index
from dreamir.search.bm25 import BM25Index, bm25_run, mine_candidates
from dreamir.search.dense import DenseIndex, ExactIndex, FaissIndex, QueryEncoder, exact_search
from dreamir.search.fusion import FUSION_METHODS, FusionMethod, fuse, fuse_runs
from dreamir.search.hybrid import HybridIndex

_KINDS: dict[str, type[SearchIndex]] = {
    cls.kind: cls for cls in (BM25Index, ExactIndex, FaissIndex, HybridIndex)
}


def load_index(directory: str | Path, encode_queries: QueryEncoder | None = None) -> SearchIndex:
    """Any index written by ``SearchIndex.save``; dense ones search texts with ``encode_queries``."""
    manifest = verify_index(
        directory
    )  # checksums first: a damaged index.json is a damaged file, not bad JSON
    kind = read_index_info(directory)["kind"]
    if kind not in _KINDS:
        raise IndexFormatError(directory, f"unknown index kind {kind!r} (known: {', '.join(_KINDS)})")
    if kind == BM25Index.kind:
        return BM25Index.load(directory, manifest=manifest)
    if kind == HybridIndex.kind:
        return HybridIndex.load(directory, encode_queries, manifest=manifest)
    dense: type[DenseIndex] = _KINDS[kind]  # type: ignore[assignment]
    return dense.load(directory, encode_queries, manifest=manifest)


__all__ = [
    "FUSION_METHODS",
    "BM25Index",
    "DenseIndex",
    "ExactIndex",
    "FaissIndex",
    "FusionMethod",
    "Hits",
    "HybridIndex",
    "IndexFormatError",
    "QueryEncoder",
    "Run",
    "SearchIndex",
    "bm25_run",
    "exact_search",
    "fuse",
    "fuse_runs",
    "load_index",
    "mine_candidates",
]
