"""Similarity functions by name, on numpy arrays: the one definition search and evaluation score with.

The retriever carries its similarity's name (as sentence-transformers' ``similarity_fn_name`` does) and
computes the same function on tensors while training; code that knows nothing of models (evaluation,
search) takes the name and scores here.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

Similarity = Literal["cosine", "dot"]
SIMILARITIES: tuple[str, ...] = get_args(Similarity)


def check_similarity(name: str) -> Similarity:
    if name not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {list(SIMILARITIES)}, got {name!r}")
    return name  # type: ignore[return-value]


def embedding_matrix(embeddings: np.ndarray) -> np.ndarray:
    matrix = np.asarray(embeddings, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"expected a 2-D embedding matrix, got shape {matrix.shape}")
    return matrix


def l2_normalise(embeddings: np.ndarray) -> np.ndarray:
    matrix = embedding_matrix(embeddings)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    # A zero vector stays zero (scores 0) rather than turning into NaNs.
    return matrix / np.maximum(norms, np.float32(1e-12))


def prepare(embeddings: np.ndarray, similarity: Similarity) -> np.ndarray:
    """Float32 rows such that the similarity of two rows is their dot product (cosine: L2-normalised)."""
    check_similarity(similarity)
    matrix = l2_normalise(embeddings) if similarity == "cosine" else embedding_matrix(embeddings)
    # FAISS reads rows in place: they must be contiguous.
    return np.ascontiguousarray(matrix)


def similarity_matrix(queries: np.ndarray, documents: np.ndarray, similarity: Similarity) -> np.ndarray:
    """Scores [m, n] of every query row against every document row, float32."""
    return prepare(queries, similarity) @ prepare(documents, similarity).T
