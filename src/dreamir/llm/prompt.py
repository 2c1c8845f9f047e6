"""Prompt layout: chat template, user turn = instruction, the K documents, the query; assistant = target.

Documents come first, so in a causal LM their hidden states cannot depend on the retriever's scores; this
is what lets the optimised step encode them once without autograd. Every candidate's token span is
recovered from the tokenizer's character offsets, so the spans are exact whatever the template adds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

DEFAULT_INSTRUCTION = "Answer the question using the documents below. Reply with a short answer only."
# For a prompt without the query, whose target is the query itself (query likelihood).
QUERY_TARGET_INSTRUCTION = "Write a search query that the documents below answer. Reply with the query only."
# sequential: documents one after another, each attending to those before it; parallel: every document a
# continuation of the instruction alone, all at the same positions (see dreamir.llm.parallel).
DocumentLayout = Literal["sequential", "parallel"]
DOCUMENT_LAYOUTS: tuple[str, ...] = ("sequential", "parallel")


@dataclass
class PromptSettings:
    instruction: str = DEFAULT_INSTRUCTION
    max_document_tokens: int = 128
    max_query_tokens: int = 64
    max_target_tokens: int = 16
    # Injected rows: those predicting target tokens; optionally also the query's rows.
    inject_query_rows: bool = False
    # False: the user turn ends after the documents (the target is then the query itself, predicted from
    # the documents alone, so the LLM judges which documents the query asks about).
    show_query: bool = True
    document_layout: DocumentLayout = "sequential"

    def __post_init__(self) -> None:
        if self.document_layout not in DOCUMENT_LAYOUTS:
            raise ValueError(
                f"document_layout must be one of {DOCUMENT_LAYOUTS}, got {self.document_layout!r}"
            )


@dataclass
class EncodedPrompt:
    input_ids: list[int]
    document_spans: list[tuple[int, int]]  # token [start, end) of each candidate, in prompt order
    query_span: tuple[int, int]
    target_start: int  # input_ids[target_start:] are the target tokens (end-of-turn included)
    documents_end: int  # the documents prefix input_ids[:documents_end] does not depend on the scores


@dataclass
class PromptBatch:
    """Padded batch: documents prefixes left-padded to ``prefix_length``, suffixes right-padded after it."""

    input_ids: Tensor  # [B, L]
    attention_mask: Tensor  # [B, L]
    position_ids: Tensor  # [B, L]
    labels: Tensor  # [B, L] target token ids, -100 elsewhere
    doc_index: Tensor  # [B, L] candidate number of each position, -1 outside documents
    inject_rows: Tensor  # [B, L] rows whose attention is redistributed
    query_rows: Tensor  # [B, L]
    candidate_mask: Tensor  # [B, K] which candidate slots hold a document
    prefix_length: int

    @property
    def num_candidates(self) -> int:
        return self.candidate_mask.shape[1]

    @property
    def target_tokens(self) -> int:
        """Target tokens the LLM predicts (the count its mean loss is taken over)."""
        return int(self.target_tokens_per_example.sum())

    @property
    def target_tokens_per_example(self) -> Tensor:
        """[B] target tokens each example's mean loss is taken over."""
        return (self.labels[:, 1:] != -100).sum(-1)

    def to(self, device: torch.device | str) -> PromptBatch:
        moved = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in self.__dict__.items()}
        return type(self)(**moved)


def _truncate(tokenizer: PreTrainedTokenizerBase, text: str, max_tokens: int) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    return tokenizer.decode(ids[:max_tokens], skip_special_tokens=True)


def format_document(number: int | None, title: str, text: str) -> str:
    """``[i] title: text``; without a number (parallel layout) a block does not depend on its position."""
    label = f"[{number}] " if number is not None else ""
    return f"{label}{title}: {text}" if title else f"{label}{text}"


def token_span(offsets: Sequence[tuple[int, int]], lo: int, hi: int) -> tuple[int, int]:
    """Token [start, end) of the tokens overlapping characters [lo, hi) (a leading-space token such as
    " What" starts one character early)."""
    inside = [i for i, (s, e) in enumerate(offsets) if s < hi and e > lo]
    return (inside[0], inside[-1] + 1) if inside else (0, 0)


def target_token_ids(tokenizer: PreTrainedTokenizerBase, target: str, settings: PromptSettings) -> list[int]:
    """The assistant turn: the (truncated) target, then the end-of-turn token."""
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"][: settings.max_target_tokens]
    return [*target_ids, _end_of_turn_id(tokenizer)]


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase,
    query: str,
    documents: Sequence[tuple[str, str]],
    target: str | None,
    settings: PromptSettings,
) -> EncodedPrompt:
    """Tokenise one example; ``documents`` are (title, text) pairs in the order the LLM reads them."""
    blocks = [
        _truncate(tokenizer, format_document(i + 1, title, text), settings.max_document_tokens)
        for i, (title, text) in enumerate(documents)
    ]
    query = _truncate(tokenizer, query, settings.max_query_tokens)
    pieces = [settings.instruction, "\n\n"]
    block_chars: list[tuple[int, int]] = []
    position = len(settings.instruction) + 2
    for block in blocks:
        block_chars.append((position, position + len(block)))
        pieces += [block, "\n\n"]
        position += len(block) + 2
    query_chars = (position, position)
    if settings.show_query:
        pieces.append("Question: ")
        query_chars = (position + len("Question: "), position + len("Question: ") + len(query))
        pieces.append(query)
    user_turn = "".join(pieces)

    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": user_turn}], tokenize=False, add_generation_prompt=True
    )
    offset = rendered.find(user_turn)
    if offset < 0:
        raise ValueError("the chat template altered the user turn; cannot locate document spans")
    encoding = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
    input_ids: list[int] = list(encoding["input_ids"])
    offsets = encoding["offset_mapping"]

    document_spans = [token_span(offsets, offset + a, offset + b) for a, b in block_chars]
    query_span = token_span(offsets, offset + query_chars[0], offset + query_chars[1])
    documents_end = max((end for _, end in document_spans), default=query_span[0])
    target_start = len(input_ids)
    if target is not None:
        input_ids += target_token_ids(tokenizer, target, settings)
    return EncodedPrompt(input_ids, document_spans, query_span, target_start, documents_end)


def _end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int:
    for token in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id is not None:
            return token_id
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no end-of-turn or eos token")
    return tokenizer.eos_token_id


def collate_prompts(
    prompts: Sequence[EncodedPrompt], pad_token_id: int, inject_query_rows: bool = False
) -> PromptBatch:
    """Left-pad the documents prefixes to a common split point and right-pad the suffixes."""
    prefix_length = max(p.documents_end for p in prompts)
    suffix_length = max(len(p.input_ids) - p.documents_end for p in prompts)
    num_candidates = max(max(len(p.document_spans) for p in prompts), 1)
    size = (len(prompts), prefix_length + suffix_length)
    rows = empty_rows(size, pad_token_id)
    input_ids, labels, doc_index = rows["input_ids"], rows["labels"], rows["doc_index"]
    inject_rows, query_rows = rows["inject_rows"], rows["query_rows"]
    attention_mask = torch.zeros(size, dtype=torch.long)
    candidate_mask = torch.zeros(len(prompts), num_candidates, dtype=torch.bool)
    for b, prompt in enumerate(prompts):
        shift = prefix_length - prompt.documents_end  # left padding of this row
        length = len(prompt.input_ids)
        input_ids[b, shift : shift + length] = torch.tensor(prompt.input_ids)
        attention_mask[b, shift : shift + length] = 1
        for k, (start, end) in enumerate(prompt.document_spans):
            doc_index[b, shift + start : shift + end] = k
            candidate_mask[b, k] = end > start
        mark_query_and_target(
            RowMarks(labels[b], inject_rows[b], query_rows[b]),
            shift,
            prompt.input_ids,
            prompt.target_start,
            prompt.query_span,
            inject_query_rows,
        )
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return PromptBatch(
        **rows,
        attention_mask=attention_mask,
        position_ids=position_ids,
        candidate_mask=candidate_mask,
        prefix_length=prefix_length,
    )


def empty_rows(size: tuple[int, int], pad_token_id: int) -> dict[str, Tensor]:
    """A batch's per-position tensors before any prompt is written in: padding, no label, no document."""
    return {
        "input_ids": torch.full(size, pad_token_id, dtype=torch.long),
        "labels": torch.full(size, -100, dtype=torch.long),
        "doc_index": torch.full(size, -1, dtype=torch.long),
        "inject_rows": torch.zeros(size, dtype=torch.bool),
        "query_rows": torch.zeros(size, dtype=torch.bool),
    }


@dataclass
class RowMarks:
    """One batch row's label, injected-row and query-row tensors (views, written in place)."""

    labels: Tensor
    inject_rows: Tensor
    query_rows: Tensor


def mark_query_and_target(
    marks: RowMarks,
    offset: int,
    input_ids: Sequence[int],
    target_start: int,
    query_span: tuple[int, int],
    inject_query_rows: bool,
) -> None:
    """Labels, injected rows and query rows of a token sequence placed at ``offset`` of a batch row."""
    length = len(input_ids)
    marks.labels[offset + target_start : offset + length] = torch.tensor(input_ids[target_start:])
    # Rows t predicting target tokens t+1: from the last prompt token to the second-to-last target token.
    if length > target_start:
        marks.inject_rows[offset + target_start - 1 : offset + length - 1] = True
    q_start, q_end = query_span
    marks.query_rows[offset + q_start : offset + q_end] = True
    if inject_query_rows:
        marks.inject_rows[offset + q_start : offset + q_end] = True
