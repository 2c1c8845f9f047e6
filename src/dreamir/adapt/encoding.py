"""The retriever's encodings for the label-free signals (validation, candidate refresh)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dreamir import precision as compute
from dreamir.retriever import Retriever


def encode(
    retriever: Retriever, texts: Sequence[str], is_query: bool, max_length: int | None, precision: str
) -> np.ndarray:
    # The run's compute dtype and the training length for the validation and mining passes: a relative
    # signal, several times cheaper than a full-length encoding.
    with compute.autocast(precision, retriever.device):
        return retriever.encode(
            list(texts), is_query=is_query, batch_size=64, show_progress=False, max_length=max_length
        )
