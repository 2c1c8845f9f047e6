"""The parallel document layout (Parallel Context Windows, Ratner et al. 2023; APE, 2025).

The instruction prefix comes once; every candidate is read as a continuation of that prefix alone (it
attends to the prefix and to itself, not to the other candidates) and all candidates sit at the same
positions right after it. The question and the target follow, at positions after the longest candidate,
and attend to the prefix, every candidate and themselves. A candidate's keys and values then depend only on
the LLM, the prompt settings and its own text, so they can be computed once per corpus (``doc_cache``).
Candidate blocks carry no "[i]" number, so the candidates' order changes nothing the LLM computes.

A batch row is laid out as [left padding, prefix, candidate 1, ..., candidate K | question + target, right
padding]: the keys up to ``prefix_length`` are what a document cache provides, the rest is the suffix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from dreamir.llm.prompt import (
    PromptBatch,
    PromptSettings,
    RowMarks,
    _truncate,
    empty_rows,
    format_document,
    mark_query_and_target,
    target_token_ids,
    token_span,
)

PADDING, PREFIX = -1, 0  # segment codes; candidate k is k + 1, the suffix num_candidates + 1
QUESTION = "Question: "


@dataclass
class ParallelPrompt:
    prefix_ids: list[int]  # chat template start + instruction: shared by every prompt of the settings
    document_ids: list[list[int]]  # each candidate's tokens, a continuation of the prefix alone
    suffix_ids: list[int]  # the question, the end of the user turn, the assistant header, the target
    query_span: tuple[int, int]  # token span of the query inside suffix_ids
    target_start: int  # suffix_ids[target_start:] are the target tokens


@dataclass
class ParallelBatch(PromptBatch):
    """A :class:`PromptBatch` in the parallel layout; ``prefix_length`` is where the suffix starts."""

    segment: Tensor  # [B, L] PADDING, PREFIX, k + 1 for candidate k, num_candidates + 1 for the suffix
    prefix_ids: list[int]
    document_ids: list[list[list[int]]]  # [B][K] token ids of each candidate (what a cache is keyed by)


def encode_parallel_prompt(
    tokenizer: PreTrainedTokenizerBase,
    query: str,
    documents: Sequence[tuple[str, str]],
    target: str | None,
    settings: PromptSettings,
) -> ParallelPrompt:
    """Tokenise one example in the parallel layout; the prefix, each candidate and the suffix are
    tokenised apart, split where the sequential prompt has a blank line."""
    query = _truncate(tokenizer, query, settings.max_query_tokens)
    head = settings.instruction + "\n\n"
    question = QUESTION + query if settings.show_query else ""
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": head + question}], tokenize=False, add_generation_prompt=True
    )
    offset = rendered.find(head + question)
    if offset < 0:
        raise ValueError("the chat template altered the user turn; cannot locate the instruction")
    split = offset + len(head)
    prefix_ids = list(tokenizer(rendered[:split], add_special_tokens=False)["input_ids"])
    document_ids = [
        list(
            tokenizer(_document_block(tokenizer, title, text, settings), add_special_tokens=False)[
                "input_ids"
            ]
        )
        for title, text in documents
    ]
    suffix = tokenizer(rendered[split:], add_special_tokens=False, return_offsets_mapping=True)
    suffix_ids = list(suffix["input_ids"])
    query_span = (
        token_span(suffix["offset_mapping"], len(QUESTION), len(question)) if settings.show_query else (0, 0)
    )
    target_start = len(suffix_ids)
    if target is not None:
        suffix_ids += target_token_ids(tokenizer, target, settings)
    return ParallelPrompt(prefix_ids, document_ids, suffix_ids, query_span, target_start)


def _document_block(
    tokenizer: PreTrainedTokenizerBase, title: str, text: str, settings: PromptSettings
) -> str:
    return _truncate(tokenizer, format_document(None, title, text), settings.max_document_tokens) + "\n\n"


def collate_parallel(
    prompts: Sequence[ParallelPrompt], pad_token_id: int, inject_query_rows: bool = False
) -> ParallelBatch:
    prefix_ids = prompts[0].prefix_ids
    if any(p.prefix_ids != prefix_ids for p in prompts):
        raise ValueError("collate_parallel: the prompts do not share their instruction prefix")
    cached = [len(prefix_ids) + sum(len(d) for d in p.document_ids) for p in prompts]
    prefix_length = max(cached)
    size = (len(prompts), prefix_length + max(len(p.suffix_ids) for p in prompts))
    num_candidates = max(max(len(p.document_ids) for p in prompts), 1)
    rows = empty_rows(size, pad_token_id)
    input_ids, labels, doc_index = rows["input_ids"], rows["labels"], rows["doc_index"]
    position_ids = torch.zeros(size, dtype=torch.long)
    segment = torch.full(size, PADDING, dtype=torch.long)
    candidate_mask = torch.zeros(len(prompts), num_candidates, dtype=torch.bool)
    start = len(prefix_ids)  # every candidate's first position
    for b, prompt in enumerate(prompts):
        cursor = prefix_length - cached[b]  # left padding of this row
        pieces = [(prefix_ids, PREFIX, 0)] + [(d, k + 1, start) for k, d in enumerate(prompt.document_ids)]
        for ids, code, first_position in pieces:
            end = cursor + len(ids)
            input_ids[b, cursor:end] = torch.tensor(ids, dtype=torch.long)
            position_ids[b, cursor:end] = torch.arange(first_position, first_position + len(ids))
            segment[b, cursor:end] = code
            if code > PREFIX:
                doc_index[b, cursor:end] = code - 1
                candidate_mask[b, code - 1] = len(ids) > 0
            cursor = end
        suffix_end = prefix_length + len(prompt.suffix_ids)
        longest = max((len(d) for d in prompt.document_ids), default=0)
        input_ids[b, prefix_length:suffix_end] = torch.tensor(prompt.suffix_ids, dtype=torch.long)
        position_ids[b, prefix_length:suffix_end] = torch.arange(len(prompt.suffix_ids)) + start + longest
        segment[b, prefix_length:suffix_end] = num_candidates + 1
        mark_query_and_target(
            RowMarks(labels[b], rows["inject_rows"][b], rows["query_rows"][b]),
            prefix_length,
            prompt.suffix_ids,
            prompt.target_start,
            prompt.query_span,
            inject_query_rows,
        )
    return ParallelBatch(
        **rows,
        attention_mask=(segment != PADDING).long(),
        position_ids=position_ids,
        candidate_mask=candidate_mask,
        prefix_length=prefix_length,
        segment=segment,
        prefix_ids=list(prefix_ids),
        document_ids=[p.document_ids for p in prompts],
    )


def block_mask(batch: ParallelBatch, dtype: torch.dtype = torch.float32) -> Tensor:
    """The parallel layout as one additive [B, 1, L, L] mask, for a single full-prompt pass (the reference
    the cached step is tested against): causal, candidates blind to each other, the suffix sees all."""
    segment = batch.segment
    length = segment.shape[1]
    suffix = batch.num_candidates + 1
    query_segment, key_segment = segment[:, :, None], segment[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment.device).tril()
    visible = (key_segment == PREFIX) | (key_segment == query_segment) | (query_segment == suffix)
    allowed = causal & visible & (key_segment != PADDING)
    # Padding rows see themselves only, so that no softmax row is empty.
    allowed |= torch.eye(length, dtype=torch.bool, device=segment.device) & (query_segment == PADDING)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def suffix_mask(batch: PromptBatch, dtype: torch.dtype = torch.float32) -> Tensor:
    """The additive [B, 1, T, L] mask of the T suffix rows over all L keys, for the cached step: every
    non-padding key before the suffix, and the suffix itself causally (the block mask's suffix rows)."""
    valid = batch.attention_mask.bool()
    split, length = batch.prefix_length, valid.shape[1]
    causal = torch.ones(length - split, length, dtype=torch.bool, device=valid.device).tril(split)
    allowed = causal[None] & valid[:, None, :]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=valid.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def stack_document_keys_values(
    batch: ParallelBatch, prefix: tuple[Tensor, Tensor], documents: list[list[tuple[Tensor, Tensor]]]
) -> tuple[Tensor, Tensor]:
    """The keys and values of every row's [left padding, prefix, candidates] part, as [layers, B, kv_heads,
    prefix_length, head_dim] each, from the prefix's and each candidate's cached entries (zeros on padding,
    which the attention mask hides), each entry copied once into place."""
    layers, kv_heads, _, dim = prefix[0].shape
    shape = (layers, len(documents), kv_heads, batch.prefix_length, dim)
    keys, values = prefix[0].new_zeros(shape), prefix[1].new_zeros(shape)
    for b, row in enumerate(documents):
        end = batch.prefix_length
        for key, value in reversed([prefix, *row]):  # right-aligned: the left padding stays zero
            start = end - key.shape[2]
            keys[:, b, :, start:end] = key
            values[:, b, :, start:end] = value
            end = start
    return keys, values
