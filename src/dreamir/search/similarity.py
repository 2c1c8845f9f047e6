"""The similarity dense search ranks by, in one place.

Every dense index (exact and FAISS) turns vectors into a form whose inner product *is* the score; only
this module knows how. ``cosine`` (what the retriever is trained with and saves as its
``similarity_fn_name``) is the default; ``dot`` keeps vectors as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

Similarity = Literal["cosine", "dot"]
SIMILARITIES: tuple[str, ...] = ("cosine", "dot")


def l2_normalise(embeddings: np.ndarray) -> np.ndarray:
    matrix = np.asarray(embeddings, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"expected a 2-D embedding matrix, got shape {matrix.shape}")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    # A zero vector stays zero (scores 0) rather than turning into NaNs.
    return matrix / np.maximum(norms, np.float32(1e-12))


def _as_matrix(embeddings: np.ndarray) -> np.ndarray:
    matrix = np.asarray(embeddings, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"expected a 2-D embedding matrix, got shape {matrix.shape}")
    return matrix


_PREPARE: dict[str, Callable[[np.ndarray], np.ndarray]] = {"cosine": l2_normalise, "dot": _as_matrix}


def prepare(embeddings: np.ndarray, similarity: str = "cosine") -> np.ndarray:
    """Contiguous float32 vectors whose inner products are ``similarity`` scores."""
    if similarity not in _PREPARE:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    return np.ascontiguousarray(_PREPARE[similarity](embeddings))


def scores(queries: np.ndarray, documents: np.ndarray, similarity: str = "cosine") -> np.ndarray:
    """[m, n] similarity of every query with every document."""
    return prepare(queries, similarity) @ prepare(documents, similarity).T
