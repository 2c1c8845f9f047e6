"""The dense retriever: an ordinary bi-encoder (HF backbone + pooling + optional L2 norm, optional LoRA).

It knows nothing about LLMs or how it is trained; it saves in the sentence-transformers layout so that
``SentenceTransformer(saved_dir).encode(texts)`` reproduces :meth:`Retriever.encode`.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from dreamir.artefacts import artefact_directory, read_manifest, verify, write_manifest
from dreamir.data.errors import DataFormatError, read_json_file, type_problem
from dreamir.retriever.backbone import (
    add_compress_tokens,
    cap_length,
    load_backbone,
    prepare_tokenizer,
    with_lora,
)
from dreamir.retriever.config import CONFIG_FILE, Pooling, RetrieverConfig
from dreamir.retriever.dropout import ATTENTION_NAME as EAGER_ATTENTION
from dreamir.retriever.dropout import attention_dropout, use_fast_dropout
from dreamir.retriever.st_format import local_dir, read_directory, write_directory
from dreamir.similarity import similarity_matrix

# Sizes in a Hugging Face config.json that must be whole numbers (a string there fails deep in the model).
_HF_CONFIG_INTEGERS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "max_position_embeddings",
    "vocab_size",
)
# Texts tokenised at once by ``encode`` before length-sorting: big enough to sort well, small enough
# that the Python token lists stay modest for huge corpora.
_ENCODE_CHUNK = 16384
# ``show_progress=None`` shows a bar only above this many batches.
_AUTO_PROGRESS_BATCHES = 5


def last_positions(attention_mask: Tensor, count: int = 1) -> Tensor:
    """Positions [n, count] of the last ``count`` non-padding tokens, in order, whichever side the padding is."""
    seq_len = attention_mask.shape[1]
    values, from_end = attention_mask.flip(1).max(dim=1)
    last = torch.where(values == 0, 0, seq_len - 1 - from_end)
    return (last.unsqueeze(1) - torch.arange(count - 1, -1, -1, device=last.device)).clamp_min(0)


def compress_states(hidden: Tensor, attention_mask: Tensor, count: int) -> Tensor:
    """The final states [n, count, h] of the compress tokens (the last ``count`` tokens of every text)."""
    index = last_positions(attention_mask.to(hidden.device), count)
    return hidden.gather(1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))


def pool(hidden: Tensor, attention_mask: Tensor, mode: Pooling, compress_tokens: int = 1) -> Tensor:
    """Pool token states [n, t, h] to [n, h] (float32), ignoring padding on either side.

    Index choices mirror sentence-transformers' Pooling so saved models encode identically there.
    """
    hidden = hidden.float()
    mask = attention_mask.to(hidden.device)
    if mode == "compress":
        return compress_states(hidden, mask, compress_tokens).mean(dim=1)
    if mode == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
    if mode == "cls":
        # First non-padding token (position 0 under right padding).
        idx = mask.to(torch.int32).argmax(dim=1)
    elif mode == "last":
        idx = last_positions(mask)[:, 0]
    else:
        raise ValueError(f"unknown pooling {mode!r}")
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]


class Retriever(torch.nn.Module):
    """Bi-encoder: HF ``AutoModel`` backbone + pooling (+ L2 normalisation), optionally LoRA-wrapped."""

    def __init__(
        self,
        backbone: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: RetrieverConfig | None = None,
    ) -> None:
        super().__init__()
        self.config = config if config is not None else RetrieverConfig()
        self.tokenizer = prepare_tokenizer(tokenizer, self.config.ends_with_eos)
        # Pre-tokenised batches are padded with tokenizer.pad, which would otherwise advise against it.
        self.tokenizer.deprecation_warnings["Asking-to-pad-a-fast-tokenizer"] = True

        base_forward = inspect.signature(backbone.forward).parameters
        self._forward_keys = {"input_ids", "attention_mask", "token_type_ids", "position_ids"} & set(
            base_forward
        )
        self._accepts_use_cache = "use_cache" in base_forward
        hidden_size = getattr(backbone.config.get_text_config(), "hidden_size", None)
        self.embedding_dim = int(hidden_size or backbone.get_input_embeddings().embedding_dim)
        # Compress pooling: the k appended tokens' input embeddings are learnt (with LoRA too).
        self.compress_token_ids: list[int] = []
        if self.config.pooling == "compress":
            self.compress_token_ids = add_compress_tokens(
                backbone, self.tokenizer, self.config.compress_tokens
            )
        # The attention the backbone was loaded with, used whenever the retriever is not training.
        self._inference_attention: str | None = getattr(backbone.config, "_attn_implementation", None)
        self.backbone = (
            with_lora(backbone, self.config.lora, self.compress_token_ids)
            if self.config.lora is not None
            else backbone
        )
        use_fast_dropout(self.backbone)  # PyTorch's own off a CPU

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls,
        path_or_dir: str | Path,
        config: RetrieverConfig | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = torch.float32,
    ) -> Retriever:
        """Load from a local HF model directory or sentence-transformers directory (never the hub).

        With ``config=None`` the settings come from ``dreamir_retriever.json`` if present, else from the
        sentence-transformers files (pooling, normalisation, similarity, max_seq_length, prompts), else
        defaults.
        """
        root = Path(path_or_dir)
        if read_manifest(local_dir(root)) is not None:
            verify(root, ("model", "export"))
        _check_hf_config(root / "config.json")
        try:
            model_dir, _ = read_directory(root)
            config = config if config is not None else cls.read_config(root)
            _check_hf_config(model_dir / "config.json")
            hf_config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
            backbone = load_backbone(model_dir, hf_config, config.num_layers, dtype)
            tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        except (TypeError, KeyError, AttributeError, IndexError, RuntimeError) as error:
            # A file of the directory holds what the loaders do not expect: name it, not a traceback.
            raise DataFormatError(
                root, None, None, f"cannot be loaded as a retriever ({type(error).__name__}: {error})"
            ) from None
        if config.max_length > cap_length(config.max_length, hf_config):
            config = dataclasses.replace(config, max_length=cap_length(config.max_length, hf_config))
        model = cls(backbone, tokenizer, config)
        return model.to(device)

    @classmethod
    def read_config(cls, path_or_dir: str | Path) -> RetrieverConfig:
        """The settings :meth:`from_pretrained` starts from with ``config=None``, read without loading the
        weights (``max_length`` is capped to the backbone's positions only when the model is loaded)."""
        root = local_dir(path_or_dir)
        if (root / CONFIG_FILE).is_file():
            return RetrieverConfig.from_dict(read_json_file(root / CONFIG_FILE), root / CONFIG_FILE)
        return read_directory(root)[1] or RetrieverConfig()

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Retriever:
        """Load a directory written by :meth:`save` (LoRA, if configured, is re-attached fresh)."""
        return cls.from_pretrained(path, device=device)

    # ------------------------------------------------------------------ encoding

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _prefixed(self, texts: Sequence[str], is_query: bool) -> list[str]:
        """The texts inside the query or document template (prefix + text + suffix)."""
        config = self.config
        prefix, suffix = (
            (config.query_prefix, config.query_suffix)
            if is_query
            else (config.document_prefix, config.document_suffix)
        )
        return [prefix + t + suffix for t in texts] if prefix or suffix else list(texts)

    def _length_limit(self, max_length: int | None) -> int:
        return min(max_length or self.config.max_length, self.config.max_length)

    def tokenize(
        self, texts: Sequence[str], is_query: bool = False, max_length: int | None = None
    ) -> dict[str, Tensor]:
        """Tokenise (with the query or document prefix), padded to the longest, on the model's device;
        ``max_length`` (default: the model's own) can only shorten."""
        enc = self.tokenizer(
            self._prefixed(texts, is_query),
            padding=True,
            truncation=True,
            max_length=self._length_limit(max_length),
            return_tensors="pt",
        )
        device = self.device
        return {k: v.to(device) for k, v in enc.items() if k in self._forward_keys}

    def hidden_states(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The backbone's last hidden states [n, t, h] of a pre-tokenised batch, and its attention mask."""
        device = self.device
        inputs = {k: v.to(device) for k, v in batch.items() if k in self._forward_keys}
        if self._accepts_use_cache:
            inputs["use_cache"] = False  # no KV cache for a single encoding pass
        return self.backbone(**inputs, return_dict=True).last_hidden_state, inputs["attention_mask"]

    def embed(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Embed a pre-tokenised batch (``input_ids``, ``attention_mask``, ...) -> [n, dim] float32."""
        hidden, mask = self.hidden_states(batch)
        emb = pool(hidden, mask, self.config.pooling, self.config.compress_tokens)
        return F.normalize(emb, p=2, dim=-1) if self.config.normalize else emb

    def compress(self, texts: Sequence[str], is_query: bool, max_length: int | None = None) -> Tensor:
        """The k compress-token states [n, k, h] of each text, with autograd: the soft prompt a frozen
        decoder reads (compress pooling only; the embedding is their mean)."""
        if self.config.pooling != "compress":
            raise ValueError(
                f"compress() needs pooling 'compress', this retriever pools {self.config.pooling!r}"
            )
        hidden, mask = self.hidden_states(self.tokenize(texts, is_query, max_length))
        return compress_states(hidden, mask, self.config.compress_tokens)

    def forward(self, texts: Sequence[str], is_query: bool, max_length: int | None = None) -> Tensor:
        """Embeddings with autograd, [n, dim] (L2-normalised when ``config.normalize``)."""
        return self.embed(self.tokenize(texts, is_query, max_length))

    @overload
    def encode(
        self,
        texts: Sequence[str] | str,
        is_query: bool = ...,
        batch_size: int = ...,
        show_progress: bool | None = ...,
        convert_to_numpy: Literal[True] = ...,
        max_length: int | None = ...,
    ) -> np.ndarray: ...
    @overload
    def encode(
        self,
        texts: Sequence[str] | str,
        is_query: bool = ...,
        batch_size: int = ...,
        show_progress: bool | None = ...,
        convert_to_numpy: Literal[False] = ...,
        max_length: int | None = ...,
    ) -> Tensor: ...
    def encode(
        self,
        texts: Sequence[str] | str,
        is_query: bool = False,
        batch_size: int = 64,
        show_progress: bool | None = None,
        convert_to_numpy: bool = True,
        max_length: int | None = None,
    ) -> np.ndarray | Tensor:
        """Inference embeddings [n, dim] float32 in input order (a single string gives [dim]).

        ``max_length`` (default: the model's own) can only shorten the texts.

        Texts are sorted by token length (longest first) so each batch pads to a near-equal length.
        """
        single = isinstance(texts, str)
        items = self._prefixed([texts] if single else texts, is_query)
        n = len(items)
        out = torch.empty(n, self.embedding_dim, dtype=torch.float32)
        n_batches = math.ceil(n / batch_size)
        show = n_batches > _AUTO_PROGRESS_BATCHES if show_progress is None else show_progress
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode(), tqdm(total=n, desc="Encoding", unit="text", disable=not show) as bar:
                for start in range(0, n, _ENCODE_CHUNK):
                    chunk = items[start : start + _ENCODE_CHUNK]
                    enc = self.tokenizer(chunk, truncation=True, max_length=self._length_limit(max_length))
                    lists = {k: v for k, v in enc.items() if k in self._forward_keys}
                    order = sorted(range(len(chunk)), key=lambda i: -len(lists["input_ids"][i]))
                    for b in range(0, len(order), batch_size):
                        rows = order[b : b + batch_size]
                        batch = self.tokenizer.pad(
                            {k: [seqs[i] for i in rows] for k, seqs in lists.items()},
                            return_attention_mask=True,
                            return_tensors="pt",
                        )
                        out[torch.tensor(rows) + start] = self.embed(batch).float().cpu()
                        bar.update(len(rows))
        finally:
            self.train(was_training)
        if single:
            out = out[0]
        return out.numpy() if convert_to_numpy else out

    def encode_queries(self, texts: Sequence[str] | str, **kwargs: Any) -> np.ndarray | Tensor:
        return self.encode(texts, is_query=True, **kwargs)

    def encode_documents(self, texts: Sequence[str] | str, **kwargs: Any) -> np.ndarray | Tensor:
        return self.encode(texts, is_query=False, **kwargs)

    def similarity(self, queries: np.ndarray | Tensor, documents: np.ndarray | Tensor) -> np.ndarray | Tensor:
        """Scores [m, n] of query rows against document rows by ``config.similarity``, the one definition
        used in training, evaluation and search (numpy in, numpy out: dreamir.similarity)."""
        if not (isinstance(queries, Tensor) and isinstance(documents, Tensor)):
            return similarity_matrix(np.asarray(queries), np.asarray(documents), self.config.similarity)
        if self.config.similarity == "cosine" and not self.config.normalize:
            queries, documents = F.normalize(queries, dim=-1), F.normalize(documents, dim=-1)
        # Normalised embeddings are not normalised again: cosine is their dot product as it stands.
        return queries @ documents.T

    # ------------------------------------------------------------------ training helpers

    def train(self, mode: bool = True) -> Retriever:
        """Training mode on CPU also switches the backbone to eager attention: PyTorch's fused CPU attention
        (sdpa) is fast forward but its backward is not (measured here on the raw backbone, bf16: 19 ms per
        layer call against 2 ms forward; a whole LoRA step 0.63 s eager against 0.86 s). Where the backbone
        drops attention probabilities it is ``dropout.eager_attention``, whose masks are drawn cheaply, as
        the backbone's dropout modules' are (``dropout.FastDropout``). The two compute the same attention;
        inference keeps the implementation the model was loaded with."""
        super().train(mode)
        training_on_cpu = mode and self.device.type == "cpu"
        self._use_attention(self._training_attention() if training_on_cpu else self._inference_attention)
        return self

    def _training_attention(self) -> str:
        """dropout.eager_attention where the backbone drops attention probabilities (BERT-style encoders),
        transformers' own eager attention of the model otherwise (it may do more, e.g. soft-capping)."""
        return EAGER_ATTENTION if attention_dropout(self._base_model().config) > 0 else "eager"

    def _base_model(self) -> PreTrainedModel:
        """The backbone under its LoRA wrapper, if any (whose config holds the attention implementation)."""
        return self.backbone.get_base_model() if self.is_lora else self.backbone

    def _use_attention(self, name: str | None) -> None:
        model = self._base_model()
        current = getattr(model.config, "_attn_implementation", None)
        if name is not None and current is not None and current != name:
            model.set_attn_implementation(name)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters that require grad (only the LoRA ones when LoRA is on)."""
        return [p for p in self.parameters() if p.requires_grad]

    @property
    def is_lora(self) -> bool:
        return self.config.lora is not None

    # ------------------------------------------------------------------ saving

    def merged_backbone(self) -> PreTrainedModel:
        """The backbone with LoRA merged in, as a copy; the live (trainable) module is left untouched."""
        if not self.is_lora:
            return self.backbone
        return copy.deepcopy(self.backbone).merge_and_unload()

    def save(self, path: str | Path) -> Path:
        """Write a sentence-transformers directory (LoRA merged) plus ``dreamir_retriever.json``, as a whole,
        with a manifest. Replaces only an earlier save (one from before manifests has ``dreamir_retriever.json``)
        or an empty directory, never a directory of the user's own, and keeps the files a user added to it."""
        path = Path(path)
        earlier_save = (path / CONFIG_FILE).is_file()
        with artefact_directory(path, "model", overwrite=earlier_save) as tmp:
            write_directory(tmp, self.merged_backbone(), self.tokenizer, self.config, self.embedding_dim)
            # The settings sentence-transformers has no place for (LoRA, cutting, EOS), for Retriever.load.
            settings = json.dumps(self.config.to_dict(), indent=2, ensure_ascii=False)
            (tmp / CONFIG_FILE).write_text(settings + "\n", encoding="utf-8")
            write_manifest(tmp, "model")  # every file's checksum, verified when it is loaded
        return path


def _check_hf_config(path: Path) -> None:
    """config.json is a JSON object whose sizes are integers (named with the file, not a traceback)."""
    if not path.is_file():
        return  # transformers says what is missing
    config = read_json_file(path)
    for name in _HF_CONFIG_INTEGERS:
        problem = type_problem(config[name], int | None) if name in config else None
        if problem:
            raise DataFormatError(path, None, name, problem)
