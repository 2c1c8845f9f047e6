"""Dense search over embedding vectors: exact (numpy) and approximate (FAISS, flat or HNSW).

Both score by :mod:`dreamir.similarity` (cosine by default). Query texts are turned into vectors by
an ``encode_queries`` callable given when the index is built or loaded, so this module knows nothing of
models; ``search_vectors`` takes query vectors directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from dreamir.search.base import (
    Hits,
    IndexFormatError,
    Run,
    SearchIndex,
    check_k,
    hits_from_arrays,
    read_doc_ids,
    read_index_info,
    verify_index,
)
from dreamir.similarity import SIMILARITIES, prepare

QueryEncoder = Callable[[list[str]], np.ndarray]
FaissKind = Literal["flat", "hnsw"]
FAISS_KINDS: tuple[str, ...] = ("flat", "hnsw")
# Upper bound on the float32 score block of one query batch in exact search.
_SCORE_BLOCK_BYTES = 256 * 1024**2
EMBEDDINGS_FILE = "embeddings.npy"
FAISS_FILE = "faiss.index"


def _top_k(queries: np.ndarray, docs: np.ndarray, k: int, batch_size: int | None = None):
    """Row-wise top-``k`` (indices, scores) of ``queries @ docs.T``, best first (stable among ties)."""
    num_docs = docs.shape[0]
    k = min(k, num_docs)
    if batch_size is None:
        batch_size = max(1, min(1024, _SCORE_BLOCK_BYTES // (4 * max(num_docs, 1))))
    all_indices, all_scores = [], []
    for start in range(0, queries.shape[0], batch_size):
        scores = queries[start : start + batch_size] @ docs.T
        if k < num_docs:
            # argpartition is O(n): only the k winners get sorted below.
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        else:
            top = np.broadcast_to(np.arange(num_docs), scores.shape)
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        all_indices.append(np.take_along_axis(top, order, axis=1))
        all_scores.append(np.take_along_axis(top_scores, order, axis=1))
    if not all_indices:
        return np.zeros((0, k), dtype=np.int64), np.zeros((0, k), dtype=np.float32)
    return np.concatenate(all_indices), np.concatenate(all_scores)


def _check_shapes(queries: np.ndarray, docs: np.ndarray, query_ids: Sequence[str], doc_ids: Sequence[str]):
    if queries.shape[0] != len(query_ids):
        raise ValueError(f"{queries.shape[0]} query embeddings but {len(query_ids)} query ids")
    if docs.shape[0] != len(doc_ids):
        raise ValueError(f"{docs.shape[0]} document embeddings but {len(doc_ids)} document ids")
    if queries.shape[1] != docs.shape[1]:
        raise ValueError(f"query dimension {queries.shape[1]} != document dimension {docs.shape[1]}")


def exact_search(
    query_embeddings: np.ndarray,
    doc_embeddings: np.ndarray,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    k: int = 100,
    batch_size: int | None = None,
    similarity: str = "cosine",
) -> Run:
    """Top-``k`` documents per query by ``similarity`` (cosine: dot product of L2-normalised float32).

    Queries are scored in batches so the score block stays under ~256 MiB; ``batch_size`` overrides.
    """
    query_ids, doc_ids = list(query_ids), list(doc_ids)
    queries, docs = prepare(query_embeddings, similarity), prepare(doc_embeddings, similarity)
    _check_shapes(queries, docs, query_ids, doc_ids)
    check_k(k)
    if docs.shape[0] == 0:
        return {query_id: {} for query_id in query_ids}
    indices, scores = _top_k(queries, docs, k, batch_size)
    hits = hits_from_arrays(doc_ids, indices, scores)
    return {query_id: dict(ranked) for query_id, ranked in zip(query_ids, hits, strict=True)}


class DenseIndex(SearchIndex):
    """Document vectors plus the callable that encodes query texts the same way."""

    kind: ClassVar[str]

    def __init__(
        self,
        doc_ids: Sequence[str],
        doc_embeddings: np.ndarray,
        encode_queries: QueryEncoder | None = None,
        similarity: str = "cosine",
    ) -> None:
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        vectors = prepare(doc_embeddings, similarity)
        if vectors.shape[0] != len(doc_ids):
            raise ValueError(f"{vectors.shape[0]} document embeddings but {len(doc_ids)} document ids")
        if not doc_ids:
            raise ValueError("cannot build a dense index over an empty corpus")
        self.doc_ids = list(doc_ids)
        self.dimension = int(vectors.shape[1])
        self.similarity = similarity
        self.encode_queries = encode_queries
        self._build(vectors)

    def _build(self, vectors: np.ndarray) -> None:
        raise NotImplementedError

    def _top_k(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def search(self, queries: Sequence[str], k: int, show_progress: bool = False) -> Hits:
        if self.encode_queries is None:
            raise ValueError(f"this {self.kind} index has no query encoder: pass encode_queries, or vectors")
        if not queries:
            return []
        return self.search_vectors(np.asarray(self.encode_queries(list(queries))), k)

    def search_vectors(self, query_embeddings: np.ndarray, k: int) -> Hits:
        """Top-``k`` for query vectors (encoded as the documents were), best first."""
        check_k(k)
        queries = prepare(query_embeddings, self.similarity)
        if queries.shape[1] != self.dimension:
            raise ValueError(f"query dimension {queries.shape[1]} != index dimension {self.dimension}")
        indices, scores = self._top_k(queries, min(k, len(self.doc_ids)))
        return hits_from_arrays(self.doc_ids, indices, scores)

    def settings(self) -> dict[str, Any]:
        return {"similarity": self.similarity, "dimension": self.dimension}

    @classmethod
    def load(
        cls,
        directory: str | Path,
        encode_queries: QueryEncoder | None = None,
        *,
        manifest: Mapping[str, Any] | bool | None = False,
    ) -> DenseIndex:
        """The index in ``directory``, its files verified against their checksums (unless the caller did,
        passing the ``manifest`` verify_index returned) and its vectors finite."""
        if manifest is False:
            manifest = verify_index(directory)
        info = read_index_info(directory)
        if info["kind"] != cls.kind:
            raise IndexFormatError(directory, f"holds a {info['kind']!r} index, not a {cls.kind!r} index")
        if info.get("similarity", "cosine") not in SIMILARITIES:
            raise IndexFormatError(
                Path(directory) / "index.json", f"field 'similarity': one of {SIMILARITIES} expected"
            )
        index = cls.__new__(cls)
        index.doc_ids = read_doc_ids(directory)
        index.similarity = info.get("similarity", "cosine")
        index.encode_queries = encode_queries
        index.manifest = manifest
        vectors = index._load_files(Path(directory), info)
        _check_stored_vectors(vectors, len(index.doc_ids), Path(directory) / index.files[0])
        index.dimension = int(vectors.shape[1])
        if info.get("dimension", index.dimension) != index.dimension:
            raise IndexFormatError(
                Path(directory) / "index.json",
                f"field 'dimension': {info['dimension']}, but the stored vectors have {index.dimension}",
            )
        return index

    # The file holding the vectors (named in messages).
    files: ClassVar[tuple[str, ...]]

    def _load_files(self, directory: Path, info: dict[str, Any]) -> np.ndarray:
        """Read the index's own files; return the stored vectors (checked by the caller)."""
        raise NotImplementedError


def _check_stored_vectors(vectors: np.ndarray, documents: int, path: Path) -> None:
    """Refuse stored vectors that do not match the ids or are not finite (a NaN row would silently drop
    its document from every ranking)."""
    if vectors.ndim != 2 or vectors.shape[0] != documents:
        raise IndexFormatError(
            path, f"holds vectors of shape {vectors.shape}, but there are {documents} document ids"
        )
    rows = ~np.isfinite(vectors).all(axis=1)
    if rows.any():
        raise IndexFormatError(
            path,
            f"{int(rows.sum())} of {documents} stored vectors hold NaN or infinite values (first: row {int(rows.argmax())})",
        )


class ExactIndex(DenseIndex):
    """Every document scored for every query (numpy): the reference the approximate indexes are checked against."""

    kind = "exact"
    files = (EMBEDDINGS_FILE,)

    def _build(self, vectors: np.ndarray) -> None:
        self.vectors = vectors

    def _top_k(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return _top_k(queries, self.vectors, k)

    def _save_files(self, directory: Path) -> None:
        np.save(directory / EMBEDDINGS_FILE, self.vectors)

    def _load_files(self, directory: Path, info: dict[str, Any]) -> np.ndarray:
        path = directory / EMBEDDINGS_FILE
        if not path.is_file():
            raise IndexFormatError(directory, f"no {EMBEDDINGS_FILE}")
        try:
            self.vectors = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise IndexFormatError(path, f"cannot be read as a numpy array ({error})") from None
        if not np.issubdtype(self.vectors.dtype, np.floating):
            raise IndexFormatError(
                path, f"holds {self.vectors.dtype} values, expected floating-point vectors"
            )
        return self.vectors


class FaissIndex(DenseIndex):
    """FAISS inner-product index over the prepared vectors: ``flat`` (exact, BLAS) or ``hnsw`` (graph, fast,
    approximate; ``hnsw_m`` links per node, ``ef_construction``/``ef_search`` the build/search beam)."""

    kind = "faiss"
    files = (FAISS_FILE,)

    def __init__(
        self,
        *args: Any,
        faiss_kind: FaissKind = "flat",
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 128,
        **kwargs: Any,
    ) -> None:
        """DenseIndex's arguments (doc_ids, doc_embeddings, encode_queries, similarity) and FAISS's own."""
        if faiss_kind not in FAISS_KINDS:
            raise ValueError(f"faiss index kind must be one of {FAISS_KINDS}, got {faiss_kind!r}")
        self.faiss_kind = faiss_kind
        self.hnsw = {"hnsw_m": hnsw_m, "ef_construction": ef_construction, "ef_search": ef_search}
        super().__init__(*args, **kwargs)

    def _build(self, vectors: np.ndarray) -> None:
        import faiss

        if self.faiss_kind == "flat":
            self.index = faiss.IndexFlatIP(self.dimension)
        else:
            self.index = faiss.IndexHNSWFlat(self.dimension, self.hnsw["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = self.hnsw["ef_construction"]
            self.index.hnsw.efSearch = self.hnsw["ef_search"]
        self.index.add(vectors)

    def _top_k(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.faiss_kind == "hnsw":
            # The beam must hold at least k candidates, or fewer than k come back.
            self.index.hnsw.efSearch = max(self.hnsw["ef_search"], k)
        scores, indices = self.index.search(queries, k)
        return indices, scores

    def settings(self) -> dict[str, Any]:
        extra = self.hnsw if self.faiss_kind == "hnsw" else {}
        return {**super().settings(), "faiss": self.faiss_kind, **extra}

    def _save_files(self, directory: Path) -> None:
        import faiss

        faiss.write_index(self.index, str(directory / FAISS_FILE))

    def _load_files(self, directory: Path, info: dict[str, Any]) -> np.ndarray:
        import faiss

        path = directory / FAISS_FILE
        if not path.is_file():
            raise IndexFormatError(directory, f"no {FAISS_FILE}")
        try:
            self.index = faiss.read_index(str(path))
        except Exception as error:  # FAISS raises RuntimeError with a C++ trace for any unreadable file
            cause = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
            raise IndexFormatError(
                path, f"cannot be read by FAISS (truncated or not a FAISS index: {cause})"
            ) from None
        # What the file holds decides, and index.json must agree (a flat index has no HNSW settings).
        stored = "hnsw" if isinstance(self.index, faiss.IndexHNSW) else "flat"
        if not isinstance(self.index, faiss.IndexHNSW | faiss.IndexFlat):
            raise IndexFormatError(
                path, f"holds a {type(self.index).__name__}, not a flat or HNSW FAISS index"
            )
        if info.get("faiss", "flat") != stored:
            raise IndexFormatError(
                directory / "index.json",
                f"field 'faiss': says {info.get('faiss', 'flat')!r}, but {FAISS_FILE} holds a {stored} index",
            )
        self.faiss_kind = stored
        self.hnsw = {key: int(info[key]) for key in ("hnsw_m", "ef_construction", "ef_search") if key in info}
        if stored == "hnsw":
            self.hnsw.setdefault("ef_search", int(self.index.hnsw.efSearch))
        return (
            self.index.reconstruct_n(0, self.index.ntotal)
            if self.index.ntotal
            else np.zeros((0, self.index.d), "float32")
        )
