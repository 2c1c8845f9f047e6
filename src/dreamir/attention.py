"""Eager softmax attention weights, as transformers' eager path computes them: the one definition the
frozen LLM's injected heads (llm/injection.py) and the retriever's training attention (retriever/dropout.py)
share. A leaf: it knows no model."""

from __future__ import annotations

import torch
from torch import Tensor


def eager_weights(query: Tensor, key: Tensor, mask: Tensor | None, scaling: float) -> Tensor:
    """Softmax attention weights [B, H, T, S] (float32 softmax, cast back to the query's dtype); under GQA
    each key/value head serves its ``H / kv_heads`` consecutive query heads."""
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1) if groups > 1 else key
    logits = torch.matmul(query, key.transpose(2, 3)) * scaling
    if mask is not None:
        logits = logits + mask[:, :, :, : key.shape[-2]]
    return torch.softmax(logits, dim=-1, dtype=torch.float32).to(query.dtype)
