"""Query generation with the frozen LLM (the ``genq`` recipe): batched, KV-cached, seeded, in the compute
dtype dreamir.precision chooses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Cache,
    DynamicCache,
    LogitsProcessorList,
    StaticCache,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)
from transformers.cache_utils import StaticLayer

from dreamir import precision as compute
from dreamir.llm.frozen import sliding_window
from dreamir.models import resolve_model, use_safetensors
from dreamir.precision import Precision

DEFAULT_QUERY_INSTRUCTION = (
    "Write one short search query that a user would type to find the passage below. "
    "Reply with the query only."
)

# Worked examples shown before each passage as earlier chat turns. A small instruct model asked with the
# instruction alone mostly replies with a preamble ("A user would type:") or copies the passage; with these
# turns it replies with a query. They come from three unrelated fields so that no corpus's domain is
# favoured.
DEFAULT_QUERY_EXAMPLES: tuple[tuple[str, str], ...] = (
    (
        "Photosynthesis. Photosynthesis is the process by which green plants and some other organisms use "
        "sunlight to synthesize foods from carbon dioxide and water. It generally involves the green pigment "
        "chlorophyll and generates oxygen as a by-product.",
        "how do plants make food from sunlight",
    ),
    (
        "Global interpreter lock. A global interpreter lock (GIL) is a mechanism used in computer-language "
        "interpreters to synchronize the execution of threads so that only one native thread can execute at "
        "a time, even on multi-core processors.",
        "why can python threads not run in parallel",
    ),
    (
        "Treaty of Versailles. The Treaty of Versailles was signed on 28 June 1919 and ended the state of war "
        "between Germany and the Allied Powers. It required Germany to accept responsibility for the war and "
        "to pay reparations.",
        "what did the treaty of versailles require from germany",
    ),
)


class DocumentLike(Protocol):
    title: str
    text: str


@dataclass
class GenerationSettings:
    instruction: str = DEFAULT_QUERY_INSTRUCTION
    # (passage, query) pairs shown as earlier turns of the chat; empty asks with the instruction alone
    examples: tuple[tuple[str, str], ...] = DEFAULT_QUERY_EXAMPLES
    max_passage_tokens: int = 192
    max_new_tokens: int = 32
    batch_size: int = 16
    # 0 is greedy: sampled queries from a small generator drift off the passage ("what were the results of
    # the experiment?"). Further rounds of the same passages need sampling, or they repeat the first.
    temperature: float = 0.0
    top_p: float = 0.9
    seed: int = 0
    # auto: bf16 weights where the processor computes bf16 natively, float32 elsewhere (dreamir.precision)
    precision: Precision = "auto"


class QueryGenerator:
    """Callable: passages (anything with ``title`` and ``text``) -> one query each, in order."""

    def __init__(
        self, name_or_path: str | Path, settings: GenerationSettings | None = None, show_progress: bool = True
    ) -> None:
        self.settings = settings or GenerationSettings()
        path = resolve_model(name_or_path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = compute.dtype_of(self.settings.precision)
        self.model = (
            AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=use_safetensors(path))
            .eval()
            .requires_grad_(False)
        )
        self.show_progress = show_progress
        self._calls = 0
        config = self.model.config.get_text_config(decoder=True)
        self.sliding_window = sliding_window(config)
        supported = {"sliding_attention", "full_attention"}
        if self.sliding_window is not None and set(config.layer_types) - supported:
            raise ValueError(
                f"query generation supports full and sliding-window attention, not {config.layer_types}"
            )

    def _prompt(self, passage: DocumentLike) -> str:
        """The whole chat prompt for one passage (what the model reads; generation splits it in two)."""
        head, tail = self._render_around_passage()
        return head + self._passage_text(passage) + tail

    def _passage_text(self, passage: DocumentLike) -> str:
        text = f"{passage.title}. {passage.text}" if passage.title else passage.text
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: self.settings.max_passage_tokens]
        return self.tokenizer.decode(ids)

    def _render_around_passage(self) -> tuple[str, str]:
        """The chat template rendered around the passage: everything before it (the same for every
        passage: instruction, worked examples) and everything after it."""
        marker = "\u2063PASSAGE\u2063"  # invisible separators: no template or instruction contains them
        messages = []
        for example_passage, example_query in self.settings.examples:
            messages.append({"role": "user", "content": self._ask(example_passage)})
            messages.append({"role": "assistant", "content": example_query})
        messages.append({"role": "user", "content": self._ask(marker)})
        rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        head, tail = rendered.split(marker)
        return head, tail

    def _ask(self, passage_text: str) -> str:
        return f"{self.settings.instruction}\n\nPassage: {passage_text}"

    @torch.no_grad()
    def __call__(self, passages: Sequence[DocumentLike]) -> list[str]:
        settings = self.settings
        # Each call (round) has its own seed, so a rerun writes the same queries.
        torch.manual_seed(settings.seed * 1_000_003 + self._calls)
        self._calls += 1
        # The worked examples are most of every prompt and the same in all: their keys and values are
        # computed once and each batch continues from them.
        head, tail = self._render_around_passage()
        shared_text = head.rstrip(" ")  # the space goes with the passage's first word, as in one string
        shared_ids = self.tokenizer(shared_text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        shared_cache = self._read_shared_prefix(shared_ids)
        spacing = head[len(shared_text) :]
        suffixes = [
            self.tokenizer(spacing + self._passage_text(p) + tail, add_special_tokens=False)["input_ids"]
            for p in passages
        ]
        # Similar lengths in a batch waste less padding.
        order = sorted(range(len(suffixes)), key=lambda i: len(suffixes[i]))
        queries = [""] * len(suffixes)
        bar = tqdm(total=len(suffixes), desc="generating queries", disable=not self.show_progress)
        for start in range(0, len(order), settings.batch_size):
            rows = order[start : start + settings.batch_size]
            replies = self._continue(shared_ids.shape[1], shared_cache, [suffixes[i] for i in rows])
            for i, reply in zip(rows, replies, strict=True):
                queries[i] = clean_query(self.tokenizer.decode(reply, skip_special_tokens=True))
            bar.update(len(rows))
        bar.close()
        return queries

    def _continue(
        self, shared_length: int, shared_cache: DynamicCache, suffixes: list[list[int]]
    ) -> list[list[int]]:
        """Generate a reply for each suffix, every one continuing the shared prefix's cache.

        The suffixes are left-padded after the prefix ([prefix][pads][suffix][reply]); the pads are masked
        and the positions skip them, so each row computes what it would alone. The keys and values live in
        one preallocated cache written in place: a growing cache would copy all of them, shared prefix
        included, at every generated token (about 6% of generation measured at two threads on AVX2).
        """
        settings = self.settings
        rows, width = len(suffixes), max(len(s) for s in suffixes)
        input_ids = torch.full((rows, width), self.tokenizer.pad_token_id, dtype=torch.long)
        suffix_mask = torch.zeros(rows, width, dtype=torch.bool)
        for row, ids in enumerate(suffixes):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            suffix_mask[row, width - len(ids) :] = True
        positions = (shared_length + suffix_mask.long().cumsum(1) - 1).clamp(min=shared_length)
        slots = shared_length + width + settings.max_new_tokens
        window = self.sliding_window
        if window is None:
            cache = StaticCache(config=self.model.config, max_cache_len=slots)
        else:
            # A sliding-window layer's static cache holds only the window, in a rolling order the masks below
            # do not know: every layer gets a full cache, and the window is applied by the mask instead.
            layer_count = len(shared_cache.layers)
            cache = Cache(layers=[StaticLayer(max_cache_len=slots) for _ in range(layer_count)])
        for layer, shared in zip(cache.layers, shared_cache.layers, strict=True):
            expand = (rows, -1, -1, -1)
            layer.update(shared.keys.expand(expand), shared.values.expand(expand))
        # Which slots hold a real key: the prefix, the suffix's tokens (not its pads), each reply token once
        # written. A query at slot i sees the real keys at slots <= i.
        written = torch.zeros(rows, slots, dtype=torch.bool)
        written[:, :shared_length] = True
        written[:, shared_length : shared_length + width] = suffix_mask
        slot_index = torch.arange(slots)
        # The position each slot's key was written at (pads skipped), for the sliding window.
        slot_positions = slot_index.expand(rows, slots).clone()
        slot_positions[:, shared_length : shared_length + width] = positions

        def mask_for(
            query_slots: torch.Tensor, query_positions: torch.Tensor
        ) -> torch.Tensor | dict[str, torch.Tensor]:
            causal = slot_index[None, :] <= query_slots[:, None]  # [queries, slots]
            full = written[:, None, None, :] & causal[None, None]  # [rows, 1, queries, slots]
            return masks_by_layer_type(full, slot_positions, query_positions, window)

        query_slots = torch.arange(shared_length, shared_length + width)
        # Only the last position's logits are read: the output projection over the whole vocabulary at
        # every prompt position would be about a fifth of the prompt's cost.
        logits = self.model(
            input_ids=input_ids,
            attention_mask=mask_for(query_slots, positions),
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1]
        next_position = shared_length + suffix_mask.sum(1)
        stop = torch.tensor(sorted(self._stop_ids))
        finished = torch.zeros(rows, dtype=torch.bool)
        replies: list[list[int]] = [[] for _ in range(rows)]
        for step in range(settings.max_new_tokens):
            token = self._pick(logits.float())
            for row in (~finished).nonzero().flatten().tolist():
                replies[row].append(int(token[row]))
            finished |= torch.isin(token, stop)
            if bool(finished.all()) or step == settings.max_new_tokens - 1:
                break
            slot = shared_length + width + step
            written[:, slot] = True
            slot_positions[:, slot] = next_position
            logits = self.model(
                input_ids=token[:, None],
                attention_mask=mask_for(torch.tensor([slot]), next_position[:, None]),
                position_ids=next_position[:, None],
                past_key_values=cache,
                use_cache=True,
            ).logits[:, -1]
            next_position = next_position + 1
        return replies

    def _read_shared_prefix(self, shared_ids: torch.Tensor) -> DynamicCache:
        """The shared prefix's keys and values, every one of them: a sliding-window layer's own cache would
        keep only the window's last keys, so such a model reads the prefix into plain layers, the window
        applied by the mask, and its continuations are masked alike."""
        window = self.sliding_window
        if window is None:
            cache, mask = DynamicCache(config=self.model.config), None
        else:
            cache = DynamicCache()
            index = torch.arange(shared_ids.shape[1])
            causal = (index[None, :] <= index[:, None])[None, None]
            mask = masks_by_layer_type(causal, index[None], index[None], window)
        self.model(input_ids=shared_ids, attention_mask=mask, past_key_values=cache, use_cache=True)
        return cache

    @property
    def _stop_ids(self) -> set[int]:
        configured = self.model.generation_config.eos_token_id
        ids = set(configured if isinstance(configured, list) else [configured]) - {None}
        return ids | {self.tokenizer.eos_token_id}

    def _pick(self, logits: torch.Tensor) -> torch.Tensor:
        """Greedy at temperature 0; otherwise nucleus sampling at the settings' temperature and top-p."""
        if self.settings.temperature <= 0:
            return logits.argmax(dim=-1)
        warpers = LogitsProcessorList(
            [TemperatureLogitsWarper(self.settings.temperature), TopPLogitsWarper(self.settings.top_p)]
        )
        scores = warpers(None, logits.float())  # these warpers read only the scores
        return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(-1)


def masks_by_layer_type(
    full: torch.Tensor, key_positions: torch.Tensor, query_positions: torch.Tensor, window: int | None
) -> torch.Tensor | dict[str, torch.Tensor]:
    """The attention mask for a model without sliding-window layers (``full``, [rows, 1, queries, keys]), or
    one per layer type for one with them: there a query sees, as alone, the keys fewer than ``window``
    positions behind its own (``key_positions`` [rows, keys], ``query_positions`` [rows, queries])."""
    if window is None:
        return full
    near = key_positions[:, None, :] > query_positions[:, :, None] - window  # [rows, queries, keys]
    return {"full_attention": full, "sliding_attention": full & near[:, None]}


def clean_query(text: str) -> str:
    """First line of the reply, without quotes or a "Query:" label."""
    line = next((part for part in text.strip().splitlines() if part.strip()), "")
    line = line.strip().strip('"“”').strip()
    for label in ("search query:", "query:"):
        if line.lower().startswith(label):
            line = line[len(label) :].strip().strip('"“”')
    return line
