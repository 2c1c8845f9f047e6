"""Training examples from a corpus alone: no queries, no labels.

Two recipes turn passages into (query, target, source passage) triples:

- ``ict`` (inverse cloze, no generation): a sentence of a passage is the query, the sentences after it
  are the target, and the source passage *with the query sentence removed* is the pseudo-gold
  candidate (a derived document, id ``<source id>#ict<n>``). The LLM predicts the target more easily
  when it reads that passage, which still holds the target text. A passage too short to split (under
  3 sentences, as in records, catalogues or FAQ entries) gives its title as the query instead, its text
  the target, and the passage without its title the pseudo-gold (``<source id>#title``).
- ``genq`` (generated queries): a query written for the passage by a generator (the frozen LLM, see
  ``dreamir.llm.generate``); the target is the passage's opening and the pseudo-gold the passage itself.
  Passages under 3 sentences with a title give their title as the query, as in ``ict``
  (``short_passage_titles``): a record's title is already the query it is looked up by.

Degenerate examples (empty or too short queries, duplicates, queries copied verbatim from the passage
for ``genq``, passages too short to split) are dropped and counted. Nothing here knows any model: the
generator comes in as a callable from passages to queries.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dreamir.data.beir import Document
from dreamir.data.errors import DataFormatError, EmptyFileError, iter_jsonl_records, require_string
from dreamir.data.training import TrainingExample

Recipe = Literal["ict", "genq"]
RECIPES: tuple[str, ...] = ("ict", "genq")
DERIVED_SEPARATOR = "#"

# A sentence ends at . ! or ? followed by white space and an upper-case letter, digit or bracket.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[\"'])")
_WORD = re.compile(r"\w+")


@dataclass
class CorpusExampleSettings:
    recipe: Recipe = "ict"
    # Passages sampled from the corpus (all of them when the corpus is smaller).
    max_passages: int = 1000
    examples_per_passage: int = 1
    # Targets: up to this many words of the text after the query sentence (ict) or of the opening (genq);
    # the LLM prompt truncates further to its own max_target_tokens.
    target_words: int = 32
    # ict: keep the target's sentences in the pseudo-gold passage (the LLM can copy them) or remove them
    # (the LLM must predict the target from what the passage says around it, as from any other candidate).
    ict_target: Literal["kept", "removed"] = "kept"
    min_query_words: int = 5
    # ict on passages under 3 sentences: titles of at least this many words become the query.
    min_title_words: int = 2
    max_query_words: int = 64
    # genq: passages under 3 sentences with a usable title make a title example instead of a generated one.
    short_passage_titles: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {self.recipe!r}")
        if self.ict_target not in ("kept", "removed"):
            raise ValueError(f"ict_target must be 'kept' or 'removed', got {self.ict_target!r}")
        for name in (
            "max_passages",
            "examples_per_passage",
            "target_words",
            "min_query_words",
            "min_title_words",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_query_words < self.min_query_words:
            raise ValueError("max_query_words must be >= min_query_words")


@dataclass
class CorpusExamples:
    """Examples whose ``gold_id`` is their pseudo-gold passage; ``derived`` holds the derived documents
    (ict's passages with the query sentence removed), ``source_of`` maps every pseudo-gold id to the
    corpus passage it comes from."""

    examples: list[TrainingExample]
    derived: dict[str, Document] = field(default_factory=dict)
    source_of: dict[str, str] = field(default_factory=dict)
    dropped: Counter[str] = field(default_factory=Counter)
    passages_sampled: int = 0


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _first_words(text: str, count: int) -> str:
    words = text.split()
    return " ".join(words[:count])


def sample_passages(corpus: Mapping[str, Document], count: int, seed: int) -> list[Document]:
    """``count`` passages drawn without replacement (all when fewer), in a seeded order."""
    ids = sorted(corpus)
    random.Random(seed).shuffle(ids)
    return [corpus[i] for i in ids[:count]]


def _query_ok(query: str, settings: CorpusExampleSettings, seen: set[str], dropped: Counter[str]) -> bool:
    words = _words(query)
    if not words:
        dropped["empty query"] += 1
    elif len(words) < settings.min_query_words:
        dropped["query too short"] += 1
    elif len(words) > settings.max_query_words:
        dropped["query too long"] += 1
    elif " ".join(words) in seen:
        dropped["duplicate query"] += 1
    else:
        seen.add(" ".join(words))
        return True
    return False


def build_ict_examples(corpus: Mapping[str, Document], settings: CorpusExampleSettings) -> CorpusExamples:
    rng = random.Random(settings.seed)
    result = CorpusExamples(examples=[])
    seen: set[str] = set()
    passages = sample_passages(corpus, settings.max_passages, settings.seed)
    result.passages_sampled = len(passages)
    for passage in passages:
        sentences = split_sentences(passage.text)
        # The query sentence needs a target after it and something left of the passage besides.
        positions = list(range(len(sentences) - 1))
        if len(sentences) < 3:
            if not _add_title_example(passage, settings, seen, result):
                result.dropped["passage under 3 sentences, no usable title"] += 1
            continue
        rng.shuffle(positions)
        made = 0
        for position in positions:
            if made == settings.examples_per_passage:
                break
            query = sentences[position]
            if not _query_ok(query, settings, seen, result.dropped):
                continue
            target = _first_words(" ".join(sentences[position + 1 :]), settings.target_words)
            removed = {position}
            if settings.ict_target == "removed":
                removed |= set(
                    range(position + 1, position + 1 + _sentences_covering(sentences, position + 1, target))
                )
            kept = [sentence for i, sentence in enumerate(sentences) if i not in removed]
            if not kept:
                result.dropped["nothing left of the passage"] += 1
                continue
            rest = " ".join(kept)
            derived_id = f"{passage.doc_id}{DERIVED_SEPARATOR}ict{made}"
            result.derived[derived_id] = Document(derived_id, passage.title, rest)
            result.source_of[derived_id] = passage.doc_id
            result.examples.append(
                TrainingExample(query=query, target=target, gold_id=derived_id, query_id=f"ict-{derived_id}")
            )
            made += 1
    return result


def _add_title_example(
    passage: Document, settings: CorpusExampleSettings, seen: set[str], result: CorpusExamples
) -> bool:
    """A short passage's title as its query; the passage without its title is the pseudo-gold."""
    title_words, text_words = _words(passage.title), passage.text.split()
    key = " ".join(title_words)
    if len(title_words) < settings.min_title_words or len(text_words) < 3 or key in seen:
        return False
    seen.add(key)
    derived_id = f"{passage.doc_id}{DERIVED_SEPARATOR}title"
    result.derived[derived_id] = Document(derived_id, "", passage.text)
    result.source_of[derived_id] = passage.doc_id
    target = _first_words(passage.text, settings.target_words)
    result.examples.append(
        TrainingExample(
            query=passage.title, target=target, gold_id=derived_id, query_id=f"title-{derived_id}"
        )
    )
    return True


def _sentences_covering(sentences: Sequence[str], start: int, target: str) -> int:
    """How many sentences from ``start`` on the target's words run into."""
    words, count = len(target.split()), 0
    while words > 0 and start + count < len(sentences):
        words -= len(sentences[start + count].split())
        count += 1
    return count


def copied_verbatim(query: str, passage: Document, min_words: int = 6) -> bool:
    """True when the query is the passage's title or a run of ``min_words`` or more of its words."""
    query_words = _words(query)
    if not query_words:
        return False
    if query_words == _words(passage.title):
        return True
    text = " " + " ".join(_words(passage.full_text)) + " "
    return len(query_words) >= min_words and f" {' '.join(query_words)} " in text


def build_generated_examples(
    corpus: Mapping[str, Document],
    settings: CorpusExampleSettings,
    generate: Callable[[Sequence[Document]], list[str]],
) -> CorpusExamples:
    """``generate`` writes one query per passage (called once per ``examples_per_passage`` round)."""
    result = CorpusExamples(examples=[])
    seen: set[str] = set()
    passages = sample_passages(corpus, settings.max_passages, settings.seed)
    result.passages_sampled = len(passages)
    to_generate = []
    for passage in passages:
        short = len(split_sentences(passage.text)) < 3
        if not (
            short and settings.short_passage_titles and _add_title_example(passage, settings, seen, result)
        ):
            to_generate.append(passage)
    for round_number in range(settings.examples_per_passage):
        queries = generate(to_generate) if to_generate else []
        if len(queries) != len(to_generate):
            raise ValueError(f"the generator returned {len(queries)} queries for {len(to_generate)} passages")
        for passage, query in zip(to_generate, queries, strict=True):
            query = " ".join(query.split())
            if copied_verbatim(query, passage):
                result.dropped["query copied from the passage"] += 1
                continue
            if not _query_ok(query, settings, seen, result.dropped):
                continue
            target = _first_words(passage.text or passage.title, settings.target_words)
            if not target:
                result.dropped["empty passage"] += 1
                continue
            result.source_of[passage.doc_id] = passage.doc_id
            result.examples.append(
                TrainingExample(
                    query=query,
                    target=target,
                    gold_id=passage.doc_id,
                    query_id=f"genq-{passage.doc_id}-{round_number}",
                )
            )
    return result


def read_query_examples(path: str | Path) -> tuple[tuple[str, str], ...]:
    """Worked examples for the query generator: JSONL lines ``{"passage": ..., "query": ...}``."""
    examples = []
    for line, record in iter_jsonl_records(path):
        unknown = sorted(set(record) - {"passage", "query"})
        if unknown:
            raise DataFormatError(path, line, unknown[0], "unknown field (allowed: passage, query)")
        passage = require_string(record, "passage", path, line, allow_empty=False)
        examples.append((passage, require_string(record, "query", path, line, allow_empty=False)))
    if not examples:
        raise EmptyFileError(path, "no worked examples (one JSON object per line: passage, query)")
    return tuple(examples)


def with_pseudo_gold(
    examples: Sequence[TrainingExample],
    ranked_ids: Sequence[Sequence[str]],
    source_of: Mapping[str, str],
    k: int,
    force: bool,
    seed: int,
) -> list[TrainingExample]:
    """Candidate lists of ``k`` from each example's ranking of the corpus.

    A hit on the example's source passage becomes its pseudo-gold (the derived passage for ict). With
    ``force`` the pseudo-gold is put in at a seeded random place when the ranking missed it; the
    example's other hits fill the rest in rank order.
    """
    rng = random.Random(seed)
    result = []
    for example, ranked in zip(examples, ranked_ids, strict=True):
        gold = example.gold_id
        source = source_of.get(gold, gold) if gold else None
        ids = [gold if doc_id == source else doc_id for doc_id in ranked]
        ids = list(dict.fromkeys(ids))[:k]
        if force and gold is not None and gold not in ids:
            ids = ids[: k - 1]
            ids.insert(rng.randrange(len(ids) + 1), gold)
        result.append(TrainingExample(example.query, example.target, ids, example.gold_id, example.query_id))
    return result
