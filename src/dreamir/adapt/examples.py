"""Stage 1, examples: (query, target, pseudo-gold passage) triples from the corpus alone, some held out for
validation; BM25 candidates with the pseudo-gold put in."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from dreamir.adapt.arguments import AdaptArguments
from dreamir.candidates import BM25Index
from dreamir.data.beir import Document
from dreamir.data.corpus_examples import (
    RECIPES,
    CorpusExamples,
    build_generated_examples,
    build_ict_examples,
    read_query_examples,
    with_pseudo_gold,
)
from dreamir.data.training import TrainingExample, write_training_file
from dreamir.io import write_json_atomic, write_jsonl_atomic


def build_examples(args: AdaptArguments, corpus: Mapping[str, Document]) -> CorpusExamples:
    settings = args.example_settings()
    if args.recipe == "ict":
        return build_ict_examples(corpus, settings)
    from dreamir.llm.generate import GenerationSettings, QueryGenerator

    generation = GenerationSettings(seed=args.seed, precision=args.precision)
    if args.examples_per_passage > 1:
        generation.temperature = 0.7  # greedy would write the same query in every round
    if args.query_instruction:
        generation.instruction = args.query_instruction
    if args.query_examples:
        generation.examples = read_query_examples(args.query_examples)
    generator = QueryGenerator(args.generator or args.llm, generation, show_progress=args.show_progress)
    return build_generated_examples(corpus, settings, generator)


def source_passage(example: TrainingExample, source_of: Mapping[str, str]) -> str | None:
    """The corpus passage an example was made from (its pseudo-gold may be a derived copy of it)."""
    return source_of.get(example.gold_id, example.gold_id)


def split_by_source(
    examples: Sequence[TrainingExample], source_of: Mapping[str, str], validation_examples: int
) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """The first ``validation_examples`` are held out, and no training example comes from the passage of a
    held-out one (with several examples per passage, a shared passage would let validation reward
    memorising it)."""
    validation = list(examples[:validation_examples])
    held_out = {source_passage(e, source_of) for e in validation}
    train = [e for e in examples[validation_examples:] if source_passage(e, source_of) not in held_out]
    return validation, train


def prepare_examples(args: AdaptArguments, corpus: Mapping[str, Document], work: Path) -> dict:
    """Write train.jsonl, validation.jsonl, derived.jsonl (derived passages) and examples.json (counts,
    written last: its presence marks the stage done)."""
    meta_file = work / "examples.json"
    if args.recipe not in RECIPES:
        raise ValueError(f"--recipe must be one of {RECIPES}")
    started = time.perf_counter()
    built = build_examples(args, corpus)
    if len(built.examples) <= args.validation_examples:
        raise ValueError(
            f"{args.corpus}: only {len(built.examples)} usable examples from {built.passages_sampled} passages "
            f"(dropped: {dict(built.dropped)}); need more than --validation-examples {args.validation_examples}"
        )
    examples = list(built.examples)
    random.Random(args.seed).shuffle(examples)
    validation, train = split_by_source(examples, built.source_of, args.validation_examples)
    index = BM25Index.from_corpus(corpus)
    hits = index.search([e.query for e in train], k=args.num_candidates + 1, pad_to_k=True)
    train = with_pseudo_gold(
        train,
        [[d for d, _ in h] for h in hits],
        built.source_of,
        args.num_candidates,
        args.force_pseudo_gold,
        args.seed,
    )
    write_training_file(work / "train.jsonl", train)
    write_training_file(work / "validation.jsonl", validation)
    write_jsonl_atomic(
        work / "derived.jsonl",
        (
            {"_id": d.doc_id, "title": d.title, "text": d.text, "source": built.source_of[d.doc_id]}
            for d in built.derived.values()
        ),
    )
    meta = {
        "recipe": args.recipe,
        "passages_sampled": built.passages_sampled,
        "examples": len(built.examples),
        "train": len(train),
        "validation": len(validation),
        "train_left_out_sharing_a_held_out_passage": len(examples) - len(validation) - len(train),
        "dropped": dict(built.dropped),
        # Short passages (under 3 sentences) whose title became the query.
        "title_queries": sum(e.query_id.startswith("title-") for e in built.examples),
        # How often BM25 alone finds the passage an example was made from (before it is forced in).
        "pseudo_gold_in_bm25_top_k": sum(
            source_passage(e, built.source_of) in [d for d, _ in h][: args.num_candidates]
            for e, h in zip(train, hits, strict=True)
        )
        / len(train),
        "seconds": time.perf_counter() - started,
    }
    write_json_atomic(meta_file, meta)
    return meta


def read_derived(path: Path) -> tuple[dict[str, Document], dict[str, str]]:
    documents, source_of = {}, {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            documents[record["_id"]] = Document(record["_id"], record["title"], record["text"])
            source_of[record["_id"]] = record["source"]
    return documents, source_of
