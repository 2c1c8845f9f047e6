"""The DREAM reader: a frozen causal LM (dreamir.llm.causal_lm) with the DREAM attention function, which
reads K candidate documents in a prompt and computes the target's NTP loss with the retriever's
distribution written into the selected heads. Its parameters never change."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from dreamir.llm.causal_lm import FrozenCausalLM, Reduction
from dreamir.llm.doc_cache import BuildStats, DocumentKVCache, KeysValues, model_fingerprint
from dreamir.llm.injection import (
    ATTENTION_NAME,
    ConstantPrefix,
    DocumentMassProbe,
    InjectionMode,
    InjectionPlan,
    register,
)
from dreamir.llm.parallel import (
    ParallelBatch,
    ParallelPrompt,
    block_mask,
    collate_parallel,
    encode_parallel_prompt,
    stack_document_keys_values,
    suffix_mask,
)
from dreamir.llm.prompt import EncodedPrompt, PromptBatch, PromptSettings, collate_prompts, encode_prompt
from dreamir.precision import PRECISIONS, Precision

HeadList = Sequence[tuple[int, int]]
# Precision bf16 (asked for, or "auto" on a processor that computes it natively) runs the no-grad document
# encoding and the suffix that carries gradients under bf16 autocast; the injected heads stay float32.
__all__ = ["PRECISIONS", "FrozenLLM", "HeadList", "Precision"]


def sliding_window(config: Any) -> int | None:
    """The window of the model's sliding-window attention layers (Gemma 3: five in six), or None when
    every layer attends to the whole prompt."""
    layer_types = getattr(config, "layer_types", None) or []
    return getattr(config, "sliding_window", None) if "sliding_attention" in layer_types else None


class FrozenLLM(FrozenCausalLM):
    """A frozen causal LM that reads K candidate documents and scores a target under an injected distribution."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        heads: HeadList = (),
        mode: InjectionMode = "preserve",
        prompt: PromptSettings | None = None,
        precision: Precision = "float32",
        document_cache_dir: str | Path | None = None,
        show_progress: bool = False,
        document_cache_bytes: int | None = None,
    ) -> None:
        register()
        # Before the parent copies the model for bf16: the copy keeps the attention function.
        model.config._attn_implementation = ATTENTION_NAME
        super().__init__(model, tokenizer, precision)
        self.mode: InjectionMode = mode
        self.prompt = prompt or PromptSettings()
        self.sliding_window = sliding_window(self.model.config)
        self.set_heads(heads)
        # Parallel layout: candidates' keys and values, computed once (on disk too with a directory), stored
        # in the resolved precision's dtype (float32 keeps the cached step exactly equal to the one-pass
        # reference); the dtype is part of every entry's key, so one dtype's entries are never read as another's.
        self.documents = DocumentKVCache(
            self._encode_documents,
            model_fingerprint(self.model),
            dtype=torch.bfloat16 if self.precision == "bfloat16" else torch.float32,
            directory=document_cache_dir,
            show_progress=show_progress,
            max_disk_bytes=document_cache_bytes,
        )
        self._prefix_entries: dict[tuple[int, ...], KeysValues] = {}

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        heads: HeadList = (),
        mode: InjectionMode = "preserve",
        prompt: PromptSettings | None = None,
        device: str | torch.device = "cpu",
        **options: Any,
    ) -> FrozenLLM:
        register()
        model, tokenizer = cls.load_model(name_or_path, device, attn_implementation=ATTENTION_NAME)
        return cls(model, tokenizer, heads=heads, mode=mode, prompt=prompt, **options)

    def set_heads(self, heads: Iterable[tuple[int, int]]) -> None:
        heads = sorted({(int(layer), int(head)) for layer, head in heads})
        for layer, head in heads:
            if not (0 <= layer < self.num_layers and 0 <= head < self.num_heads):
                raise ValueError(
                    f"head ({layer}, {head}) outside the model's {self.num_layers} layers x {self.num_heads} heads"
                )
        self.heads = heads
        by_layer: dict[int, list[int]] = {}
        for layer, head in heads:
            by_layer.setdefault(layer, []).append(head)
        self._head_map = {layer: torch.tensor(h, dtype=torch.long) for layer, h in by_layer.items()}

    # ---- prompts -------------------------------------------------------------------------------------
    def encode(
        self, query: str, documents: Sequence[tuple[str, str]], target: str | None
    ) -> EncodedPrompt | ParallelPrompt:
        """One example in the settings' document layout; ``documents`` are (title, text) pairs."""
        if self.prompt.document_layout == "parallel":
            return encode_parallel_prompt(self.tokenizer, query, documents, target, self.prompt)
        return encode_prompt(self.tokenizer, query, documents, target, self.prompt)

    def collate(self, prompts: Sequence[EncodedPrompt] | Sequence[ParallelPrompt]) -> PromptBatch:
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else self.tokenizer.eos_token_id
        if isinstance(prompts[0], ParallelPrompt):
            batch = collate_parallel(prompts, pad, self.prompt.inject_query_rows)
            if self.sliding_window is not None:
                self._check_fits_the_window(batch)
            return batch.to(self.device)
        return collate_prompts(prompts, pad, self.prompt.inject_query_rows).to(self.device)

    def _check_fits_the_window(self, batch: ParallelBatch) -> None:
        """The parallel layout's masks are its own and leave the sliding window out: exact only while every
        prompt fits inside it."""
        span = int(batch.position_ids.max()) + 1
        if span > self.sliding_window:
            raise ValueError(
                f"the parallel layout does not apply sliding-window attention: a prompt spans {span} "
                f"positions, more than this LLM's window of {self.sliding_window}; use the sequential "
                "layout (--document-layout sequential) or fewer tokens (--max-document-tokens)"
            )

    def cache_documents(self, documents: Sequence[tuple[str, str]]) -> BuildStats:
        """Put (title, text) documents in the parallel layout's document cache now; what is there already
        is not built again. Returns what this call built."""
        blocks = encode_parallel_prompt(self.tokenizer, "", documents, None, self.prompt)
        return self.documents.build(blocks.prefix_ids, blocks.document_ids)

    # ---- the loss ------------------------------------------------------------------------------------
    def target_loss(
        self,
        batch: PromptBatch,
        doc_probs: Tensor | None,
        reuse_prefix: bool = True,
        reduction: Reduction = "mean",
    ) -> Tensor:
        """Cross-entropy of the target tokens with ``doc_probs`` [B, K] injected (None: the stock model).

        ``reuse_prefix`` runs the documents prefix once without autograd, keeping its keys and values, and
        only the query + target suffix with autograd; False is the straightforward full-prompt reference.
        ``reduction``: "mean" over all target tokens of the batch, or "example" for a [B] vector.
        """
        plan = None
        if doc_probs is not None and self._head_map:
            plan = InjectionPlan(self._head_map, batch.doc_index, doc_probs, batch.inject_rows, self.mode)
        with self.autocast():
            if reuse_prefix:
                hidden, start = self._hidden_with_cached_prefix(batch, plan), batch.prefix_length
            else:
                hidden, start = self._hidden_full(batch, plan), 0
        return self.reduce(*self.token_losses(hidden, batch.labels[:, start:]), reduction)

    def _hidden_full(self, batch: PromptBatch, plan: InjectionPlan | None) -> Tensor:
        # The parallel layout in one pass needs its block mask (the reference for the cached step).
        mask = block_mask(batch) if isinstance(batch, ParallelBatch) else batch.attention_mask
        return self.decoder(
            input_ids=batch.input_ids,
            attention_mask=mask,
            position_ids=batch.position_ids,
            use_cache=False,
            dream_injection=plan,
        ).last_hidden_state

    def _hidden_with_cached_prefix(self, batch: PromptBatch, plan: InjectionPlan | None) -> Tensor:
        split = batch.prefix_length
        if plan is not None:
            plan = InjectionPlan(
                plan.heads, plan.doc_index, plan.doc_probs, plan.row_mask[:, split:], plan.mode
            )
        # Layers below the first injected one see no tensor that requires grad, so autograd records nothing
        # there by itself; the graph starts at the first injected head.
        return self._suffix_hidden(batch, self._prefix_cache(batch), dream_injection=plan)

    def _suffix_hidden(
        self, batch: PromptBatch, prefix: DynamicCache | ConstantPrefix, **attention_kwargs
    ) -> Tensor:
        """The suffix (question + target) after the keys and values of everything before it."""
        split = batch.prefix_length
        if isinstance(prefix, ConstantPrefix):
            # The parallel layout's suffix is short against its cached keys: eager math is faster there,
            # and the cached keys are read where they lie (no cache object copies them layer by layer).
            return self.decoder(
                input_ids=batch.input_ids[:, split:],
                attention_mask=suffix_mask(batch),
                position_ids=batch.position_ids[:, split:],
                use_cache=False,
                dream_eager=True,
                dream_prefix=prefix,
                **attention_kwargs,
            ).last_hidden_state
        return self.decoder(
            input_ids=batch.input_ids[:, split:],
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids[:, split:],
            past_key_values=prefix,
            use_cache=True,
            **attention_kwargs,
        ).last_hidden_state

    @torch.no_grad()
    def _prefix_cache(self, batch: PromptBatch) -> DynamicCache | ConstantPrefix:
        """Keys and values of the part before the suffix: encoded now (sequential) or assembled from the
        document cache (parallel)."""
        split = batch.prefix_length
        if not isinstance(batch, ParallelBatch):
            with self.autocast():
                return self.decoder(
                    input_ids=batch.input_ids[:, :split],
                    attention_mask=batch.attention_mask[:, :split],
                    position_ids=batch.position_ids[:, :split],
                    # A cache without the config's layer types keeps every key: transformers' own would keep
                    # only a sliding-window layer's window, and the candidates' index would no longer match.
                    past_key_values=DynamicCache(),
                    use_cache=True,
                ).past_key_values
        unique = list({tuple(d): d for row in batch.document_ids for d in row}.values())
        entries = dict(zip(map(tuple, unique), self.documents.get(batch.prefix_ids, unique), strict=True))
        rows = [[entries[tuple(d)] for d in row] for row in batch.document_ids]
        if all(row == batch.document_ids[0] for row in batch.document_ids[1:]):
            # Every row reads the same documents (in-batch candidates: the batch's pool): one copy of their
            # keys and values, broadcast over the rows by the attention, instead of one copy per row.
            rows = rows[:1]
        keys, values = stack_document_keys_values(batch, self._prefix_entry(batch.prefix_ids), rows)
        dtype = self.documents.dtype
        return ConstantPrefix(keys.to(self.device, dtype), values.to(self.device, dtype))

    def _cache_from(self, keys: Tensor, values: Tensor) -> DynamicCache:
        """A transformers cache holding [layers, B, kv_heads, tokens, head_dim] keys and values."""
        return DynamicCache(ddp_cache_data=list(zip(keys.unbind(0), values.unbind(0), strict=True)))

    @staticmethod
    def _stack(cache: DynamicCache) -> KeysValues:
        return (
            torch.stack([layer.keys for layer in cache.layers]),
            torch.stack([layer.values for layer in cache.layers]),
        )

    @torch.no_grad()
    def _prefix_entry(self, prefix_ids: list[int]) -> KeysValues:
        """The instruction prefix's keys and values, [layers, kv_heads, P, head_dim], computed once."""
        key = tuple(prefix_ids)
        if key not in self._prefix_entries:
            ids = torch.tensor([prefix_ids], device=self.device)
            with self.autocast():
                cache = self.decoder(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    past_key_values=DynamicCache(),  # every key kept, as in _prefix_cache
                    use_cache=True,
                ).past_key_values
            keys, values = self._stack(cache)
            self._prefix_entries[key] = (
                keys[:, 0].to(self.documents.dtype),
                values[:, 0].to(self.documents.dtype),
            )
        return self._prefix_entries[key]

    @torch.no_grad()
    def _encode_documents(self, prefix_ids: list[int], documents: list[list[int]]) -> list[KeysValues]:
        """Each document read as a continuation of the prefix alone (the parallel layout), in one batch:
        right-padded, so padding comes after every real token and changes nothing before it."""
        prefix_keys, prefix_values = self._prefix_entry(prefix_ids)
        count, length, start = len(documents), max(len(d) for d in documents), len(prefix_ids)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((count, length), pad, dtype=torch.long)
        mask = torch.zeros(count, start + length, dtype=torch.long)
        mask[:, :start] = 1
        for i, document in enumerate(documents):
            ids[i, : len(document)] = torch.tensor(document, dtype=torch.long)
            mask[i, start : start + len(document)] = 1
        expand = (-1, count, -1, -1, -1)
        cache = self._cache_from(prefix_keys[:, None].expand(expand), prefix_values[:, None].expand(expand))
        with self.autocast():
            cache = self.decoder(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=(torch.arange(length) + start).expand(count, -1).to(self.device),
                past_key_values=cache,
                use_cache=True,
            ).past_key_values
        keys, values = self._stack(cache)
        return [
            (keys[:, i, :, start : start + len(d)].cpu(), values[:, i, :, start : start + len(d)].cpu())
            for i, d in enumerate(documents)
        ]

    @torch.no_grad()
    def document_mass(
        self, batches: Sequence[PromptBatch], rows: Sequence[Tensor] | None = None
    ) -> list[Tensor]:
        """Every head's attention mass on each candidate, averaged over ``rows`` (default: the query's rows).

        The batches must share their documents prefix (same candidates, other queries, e.g. the "N/A"
        calibration query): it is encoded once and its keys and values reused. Rows must lie after the
        documents. Returns one [B, layers, heads, K] tensor per batch.
        """
        first = batches[0]
        split = first.prefix_length
        for other in batches[1:]:
            if other.prefix_length != split or not torch.equal(
                other.input_ids[:, :split], first.input_ids[:, :split]
            ):
                raise ValueError("document_mass: the batches do not share their documents prefix")
        prefix = self._prefix_cache(first)
        masses = []
        for i, batch in enumerate(batches):
            probe_rows = batch.query_rows if rows is None else rows[i]
            if probe_rows[:, :split].any():
                raise ValueError("document_mass: probe rows must come after the documents")
            probe = DocumentMassProbe(batch.doc_index, batch.num_candidates, probe_rows[:, split:])
            with self.autocast():
                # A transformers cache grows with each pass: every batch but the last gets a copy.
                reusable = isinstance(prefix, ConstantPrefix) or i == len(batches) - 1
                self._suffix_hidden(batch, prefix if reusable else copy.deepcopy(prefix), dream_probe=probe)
            masses.append(torch.stack([probe.masses[layer] for layer in range(self.num_layers)], dim=1))
        return masses
