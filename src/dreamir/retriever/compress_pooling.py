"""Compress-token pooling as a sentence-transformers module: the mean of the final states of the last k
tokens of every text (the k compress tokens the saved tokenizer appends itself).

This file imports nothing from dreamir: it is copied into every saved compress-pooling model, so that
``SentenceTransformer(dir)`` with ``trust_remote_code`` on encodes as the retriever does without dreamir.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from sentence_transformers.base.modules.module import Module
from torch import Tensor


class CompressTokenPooling(Module):
    config_keys: ClassVar[list[str]] = ["embedding_dimension", "compress_tokens"]

    def __init__(self, embedding_dimension: int, compress_tokens: int) -> None:
        super().__init__()
        self.embedding_dimension = embedding_dimension
        self.compress_tokens = compress_tokens

    def forward(self, features: dict[str, Tensor | Any], **kwargs: Any) -> dict[str, Tensor | Any]:
        hidden = features["token_embeddings"]
        mask = features["attention_mask"].to(hidden.device)
        # The last k real tokens, whichever side the padding is on.
        real, from_end = mask.flip(1).max(dim=1)
        last = torch.where(real == 0, 0, mask.shape[1] - 1 - from_end)
        offsets = torch.arange(self.compress_tokens - 1, -1, -1, device=hidden.device)
        index = (last.unsqueeze(1) - offsets).clamp_min(0)
        states = hidden.gather(1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        features["sentence_embedding"] = states.float().mean(dim=1).to(hidden.dtype)
        return features

    def get_embedding_dimension(self) -> int:
        return self.embedding_dimension

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        self.save_config(output_path)
