"""The retriever's backbone: loading a local HF encoder (cut to its first layers if asked), the tokenizer
policy that keeps embeddings independent of batching, and LoRA wrapping."""

from __future__ import annotations

import functools
import logging
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from tokenizers import processors
from transformers import AutoModel, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from dreamir.models import use_safetensors
from dreamir.retriever.config import LoraSettings

logger = logging.getLogger(__name__)

# Checkpoint parts an AutoModel backbone legitimately leaves behind (LM/MLM/classifier heads) or lacks
# (BERT's pooler, which no pooling mode here reads).
_EXPECTED_UNUSED = re.compile(r"^(lm_head|cls|score|classifier|pre_classifier|qa_outputs)\.")
_EXPECTED_MISSING = re.compile(r"(^|\.)pooler\.")


def cap_length(max_length: int, hf_config: Any) -> int:
    """Never ask for more positions than a learned position table has."""
    limit = getattr(hf_config, "max_position_embeddings", None)
    return min(max_length, limit) if isinstance(limit, int) and limit > 0 else max_length


def cut_config(hf_config: Any, num_layers: int | None) -> re.Pattern[str] | None:
    """Shorten ``hf_config`` in place to its first ``num_layers`` layers, so that only those are built and
    loaded; returns the pattern of the dropped layers' checkpoint keys (None: nothing cut)."""
    total = getattr(hf_config, "num_hidden_layers", None)
    if num_layers is None or num_layers == total:
        return None
    if not isinstance(total, int):
        raise ValueError(
            f"cannot cut {type(hf_config).__name__} to {num_layers} layers: it has no num_hidden_layers"
        )
    if num_layers > total:
        raise ValueError(f"num_layers={num_layers} exceeds the backbone's {total} layers")
    hf_config.num_hidden_layers = num_layers
    layer_types = getattr(hf_config, "layer_types", None)
    if isinstance(layer_types, list):
        hf_config.layer_types = layer_types[:num_layers]
    dropped_ids = "|".join(str(i) for i in range(num_layers, total))
    return re.compile(rf"(^|\.)(layers?|h|blocks?)\.({dropped_ids})\.")


def load_backbone(model_dir: Path, hf_config: Any, num_layers: int | None, dtype: torch.dtype | None) -> Any:
    """``AutoModel.from_pretrained``; with ``num_layers`` below the depth, build and load only those layers.

    transformers' load report is replaced by a warning about unexpected problems only, so that the
    expected leftovers (an LLM's lm_head, the weights of cut layers) do not drown real ones.
    """
    dropped = cut_config(hf_config, num_layers)
    load = functools.partial(
        AutoModel.from_pretrained,
        model_dir,
        config=hf_config,
        dtype=dtype,
        local_files_only=True,
        output_loading_info=True,
        use_safetensors=use_safetensors(model_dir),
    )
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        backbone, info = load()
    except Exception:
        # A hard failure (e.g. size mismatch) points at transformers' report: load again to show it.
        hf_logging.set_verbosity(verbosity)
        load()
        raise
    finally:
        hf_logging.set_verbosity(verbosity)
    unexpected = [
        k
        for k in info.get("unexpected_keys", [])
        if not _EXPECTED_UNUSED.search(k) and not (dropped and dropped.search(k))
    ]
    missing = [k for k in info.get("missing_keys", []) if not _EXPECTED_MISSING.search(k)]
    if missing or unexpected:
        logger.warning(
            "Loading %s: weights missing from the checkpoint (randomly initialised): %s; "
            "checkpoint weights left unused: %s",
            model_dir,
            sorted(missing),
            sorted(unexpected),
        )
    return backbone


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, end_with_eos: bool) -> PreTrainedTokenizerBase:
    """Set the tokenizer up (in place) for encoding: a pad token, right padding, EOS at the end if asked."""
    if tokenizer.pad_token is None:
        # Decoder backbones ship without a pad token; eos is the usual stand-in.
        if tokenizer.eos_token is None:
            raise ValueError("tokenizer has neither a pad token nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    # Right padding keeps every real token at its unpadded position (causal models build position ids
    # from 0 regardless of the mask), so embeddings do not depend on what else is in the batch.
    tokenizer.padding_side = "right"
    if end_with_eos:
        _end_texts_with_eos(tokenizer)
    return tokenizer


def _end_texts_with_eos(tokenizer: PreTrainedTokenizerBase) -> None:
    """Make the tokenizer itself append EOS (within max_length), so that the saved tokenizer does the same
    inside sentence-transformers; a tokenizer that already ends texts with EOS is left alone."""
    if tokenizer("a")["input_ids"][-1] == tokenizer.eos_token_id:
        return
    if hasattr(tokenizer, "add_eos_token"):
        tokenizer.add_eos_token = True
    if tokenizer("a")["input_ids"][-1] != tokenizer.eos_token_id:
        raise ValueError(
            f"append_eos is set but {type(tokenizer).__name__} cannot be made to append its eos token; "
            "pass RetrieverConfig(append_eos=False) (on the command line: --no-append-eos)"
        )


def compress_token_names(count: int) -> list[str]:
    return [f"<EMBED{i}>" for i in range(count)]


def add_compress_tokens(
    backbone: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, count: int, seed: int = 0
) -> list[int]:
    """Give the tokenizer (in place) ``count`` special tokens ``<EMBED0>..`` that it appends to every text,
    and the backbone an input embedding for each; return their ids. A model saved with them is left as it is.

    New embeddings start at the mean of the existing ones plus seeded noise of their spread, so that the k
    tokens differ from the first step and a run does not depend on the global random state."""
    names = compress_token_names(count)
    tokenizer.add_tokens(names, special_tokens=True)
    ids = [int(i) for i in tokenizer.convert_tokens_to_ids(names)]
    table = backbone.get_input_embeddings()
    if table.num_embeddings <= max(ids):
        old = table.num_embeddings
        backbone.resize_token_embeddings(max(ids) + 1, mean_resizing=False)
        table = backbone.get_input_embeddings()
        with torch.no_grad():
            known = table.weight[:old]
            noise = torch.randn(
                table.num_embeddings - old, known.shape[1], generator=torch.Generator().manual_seed(seed)
            )
            table.weight[old:] = known.mean(0) + noise.to(known.dtype) * known.std(0)
    _append_tokens(tokenizer, names, ids)
    return ids


def _append_tokens(tokenizer: PreTrainedTokenizerBase, names: list[str], ids: list[int]) -> None:
    """Make the tokenizer itself end every text with ``names`` (kept by truncation), so that the saved
    tokenizer does the same inside sentence-transformers."""
    if tokenizer("a")["input_ids"][-len(ids) :] == ids:
        return
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"compress pooling needs a fast tokenizer; {type(tokenizer).__name__} is not one")
    appended = " ".join(names)
    template = processors.TemplateProcessing(
        single=f"$A {appended}", pair=f"$A $B:1 {appended}", special_tokens=list(zip(names, ids, strict=True))
    )
    existing = backend.post_processor
    backend.post_processor = template if existing is None else processors.Sequence([existing, template])
    if tokenizer("a")["input_ids"][-len(ids) :] != ids:
        raise ValueError(f"{type(tokenizer).__name__} cannot be made to append the compress tokens {names}")


def with_lora(
    backbone: PreTrainedModel, lora: LoraSettings, trainable_tokens: list[int] | None = None
) -> PreTrainedModel:
    """``backbone`` wrapped with fresh LoRA adapters (only they train, with the input embeddings of
    ``trainable_tokens`` if given), initialised from ``lora.init_seed``."""
    from peft import LoraConfig, get_peft_model

    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        trainable_token_indices=trainable_tokens or None,
    )
    with warnings.catch_warnings():
        # peft probes a deprecated transformers property; nothing for us to act on.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(lora.init_seed)
            return get_peft_model(backbone, peft_config)
