"""Query generation with the frozen LLM (the ``genq`` recipe): batched, bf16, KV-cached, seeded."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from dreamir.models import resolve_model, use_safetensors

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
    bf16: bool = True


class QueryGenerator:
    """Callable: passages (anything with ``title`` and ``text``) -> one query each, in order."""

    def __init__(
        self, name_or_path: str | Path, settings: GenerationSettings | None = None, show_progress: bool = True
    ) -> None:
        self.settings = settings or GenerationSettings()
        path = resolve_model(name_or_path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"  # generation continues every row from its last token
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if self.settings.bf16 else torch.float32
        self.model = (
            AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=use_safetensors(path))
            .eval()
            .requires_grad_(False)
        )
        self.show_progress = show_progress
        self._calls = 0

    def _prompt(self, passage: DocumentLike) -> str:
        text = f"{passage.title}. {passage.text}" if passage.title else passage.text
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: self.settings.max_passage_tokens]
        messages = []
        for example_passage, example_query in self.settings.examples:
            messages.append({"role": "user", "content": self._ask(example_passage)})
            messages.append({"role": "assistant", "content": example_query})
        messages.append({"role": "user", "content": self._ask(self.tokenizer.decode(ids))})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _ask(self, passage_text: str) -> str:
        return f"{self.settings.instruction}\n\nPassage: {passage_text}"

    @torch.no_grad()
    def __call__(self, passages: Sequence[DocumentLike]) -> list[str]:
        settings = self.settings
        # Each call (round) has its own seed, so a rerun writes the same queries.
        generator_seed = settings.seed * 1_000_003 + self._calls
        self._calls += 1
        torch.manual_seed(generator_seed)
        # Similar lengths in a batch waste less padding.
        prompts = [self._prompt(p) for p in passages]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        queries = [""] * len(prompts)
        sample = settings.temperature > 0
        bar = tqdm(total=len(prompts), desc="generating queries", disable=not self.show_progress)
        for start in range(0, len(order), settings.batch_size):
            rows = order[start : start + settings.batch_size]
            batch = self.tokenizer(
                [prompts[i] for i in rows], return_tensors="pt", padding=True, add_special_tokens=False
            )
            output = self.model.generate(
                **batch,
                max_new_tokens=settings.max_new_tokens,
                do_sample=sample,
                temperature=settings.temperature if sample else None,
                top_p=settings.top_p if sample else None,
                top_k=None,
                pad_token_id=self.tokenizer.pad_token_id,
            )
            texts = self.tokenizer.batch_decode(
                output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
            )
            for i, text in zip(rows, texts, strict=True):
                queries[i] = clean_query(text)
            bar.update(len(rows))
        bar.close()
        return queries


def clean_query(text: str) -> str:
    """First line of the reply, without quotes or a "Query:" label."""
    line = next((part for part in text.strip().splitlines() if part.strip()), "")
    line = line.strip().strip('"“”').strip()
    for label in ("search query:", "query:"):
        if line.lower().startswith(label):
            line = line[len(label) :].strip().strip('"“”')
    return line
