"""A hybrid index: BM25 and a dense index over the same corpus, searched together and fused (see
dreamir.search.fusion). Saved as one index directory holding both parts (``lexical/`` and ``dense/``, each
laid out as an index of its own) under one manifest."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dreamir.search.base import Hits, IndexFormatError, SearchIndex, check_k, read_index_info, verify_index
from dreamir.search.bm25 import BM25Index
from dreamir.search.dense import DenseIndex, ExactIndex, FaissIndex, QueryEncoder
from dreamir.search.fusion import (
    DEFAULT_FUSION,
    FUSION_DEPTH,
    RRF_K,
    FusionMethod,
    check_fusion,
    default_weight,
    fuse,
)

LEXICAL_DIR = "lexical"
DENSE_DIR = "dense"
_DENSE_KINDS: dict[str, type[DenseIndex]] = {cls.kind: cls for cls in (ExactIndex, FaissIndex)}


class HybridIndex(SearchIndex):
    """BM25 and a dense index of the same documents; ``search`` fuses their top ``depth`` hits."""

    kind = "hybrid"

    def __init__(
        self,
        lexical: BM25Index,
        dense: DenseIndex,
        method: FusionMethod = DEFAULT_FUSION,
        weight: float | None = None,
        rrf_k: float = RRF_K,
        depth: int = FUSION_DEPTH,
    ) -> None:
        weight = default_weight(method, weight)
        check_fusion(method, weight, rrf_k)
        check_k(depth)
        if set(lexical.doc_ids) != set(dense.doc_ids) or len(lexical.doc_ids) != len(dense.doc_ids):
            raise ValueError(
                "the BM25 and dense indexes hold different documents: build both from one corpus"
            )
        self.lexical, self.dense = lexical, dense
        self.doc_ids = list(dense.doc_ids)
        self.method, self.weight, self.rrf_k, self.depth = method, weight, rrf_k, depth

    @property
    def encode_queries(self) -> QueryEncoder | None:
        return self.dense.encode_queries

    @encode_queries.setter
    def encode_queries(self, encoder: QueryEncoder | None) -> None:
        self.dense.encode_queries = encoder

    def with_fusion(
        self, method: FusionMethod | None = None, weight: float | None = None, rrf_k: float | None = None
    ) -> HybridIndex:
        """The same parts fused another way: None keeps this index's setting, except that another method
        without a weight gets that method's default weight."""
        if weight is None and method not in (None, self.method):
            weight = default_weight(method)
        return HybridIndex(
            self.lexical,
            self.dense,
            method or self.method,
            self.weight if weight is None else weight,
            self.rrf_k if rrf_k is None else rrf_k,
            self.depth,
        )

    def search(self, queries: Sequence[str], k: int, show_progress: bool = False) -> Hits:
        check_k(k)
        if not queries:
            return []
        blank = [i for i, query in enumerate(queries) if not query.strip()]
        if blank:
            raise ValueError(f"query {blank[0] + 1} of {len(queries)} is empty")
        depth = max(k, self.depth)
        # A query sharing no word with the corpus has no BM25 hits: the dense part alone ranks it.
        lexical = self.lexical.search(queries, depth, show_progress=show_progress)
        dense = self.dense.search(queries, depth, show_progress=show_progress)
        return fuse(lexical, dense, min(k, len(self.doc_ids)), self.method, self.weight, self.rrf_k)

    def settings(self) -> dict[str, Any]:
        return {
            "fusion": self.method,
            "fusion_weight": self.weight,
            "rrf_k": self.rrf_k,
            "fusion_depth": self.depth,
            "similarity": self.dense.similarity,
            "dimension": self.dense.dimension,
        }

    def _save_files(self, directory: Path) -> None:
        for name, part in ((LEXICAL_DIR, self.lexical), (DENSE_DIR, self.dense)):
            (directory / name).mkdir()
            part.write_files(directory / name)

    @classmethod
    def load(
        cls,
        directory: str | Path,
        encode_queries: QueryEncoder | None = None,
        *,
        manifest: Mapping[str, Any] | bool | None = False,
    ) -> HybridIndex:
        """The index in ``directory`` (its manifest covers both parts: verified once, here)."""
        if manifest is False:
            manifest = verify_index(directory)
        directory = Path(directory)
        info = read_index_info(directory)
        if info["kind"] != cls.kind:
            raise IndexFormatError(directory, f"holds a {info['kind']!r} index, not a hybrid index")
        lexical = BM25Index.load(directory / LEXICAL_DIR, manifest=None)
        dense_kind = read_index_info(directory / DENSE_DIR)["kind"]
        if dense_kind not in _DENSE_KINDS:
            raise IndexFormatError(directory / DENSE_DIR, f"holds a {dense_kind!r} index, not a dense index")
        dense = _DENSE_KINDS[dense_kind].load(directory / DENSE_DIR, encode_queries, manifest=None)
        index = cls(
            lexical,
            dense,
            info.get("fusion", DEFAULT_FUSION),  # type: ignore[arg-type]
            info.get("fusion_weight"),
            info.get("rrf_k", RRF_K),
            info.get("fusion_depth", FUSION_DEPTH),
        )
        index.manifest = manifest
        return index
