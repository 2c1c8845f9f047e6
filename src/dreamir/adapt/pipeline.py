"""`dreamir adapt`: make a retriever better on a corpus that has no queries and no labels.

Stages, each written atomically under ``OUT/work`` and skipped when its output exists (an interrupted run
picks up where it stopped; training resumes from its last checkpoint):

1. examples: (query, target, pseudo-gold passage) triples from the corpus alone (``dreamir.data.
   corpus_examples``), some held out for validation; BM25 candidates with the pseudo-gold put in;
2. heads: the LLM's query-focused heads scored on the training examples, each example's pseudo-gold
   standing in for a gold label (no label is used);
3. training with a label-free validation signal (how often the held-out examples' pseudo-gold ranks in
   the retriever's top 10 over the corpus), keeping the best checkpoint by it, and optionally refreshing
   the candidates with the current retriever's own top-K (mined hard negatives);
4. ``OUT/model``: the best checkpoint as a sentence-transformers directory; ``OUT/report.json``,
   ``OUT/report.md`` and ``OUT/curves.png``.

Only ``CORPUS_DIR/corpus.jsonl`` is read: never queries or qrels.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from dreamir import precision as compute
from dreamir.arguments import LLMArguments, ModelArguments, ObjectiveArguments, SamplingArguments
from dreamir.artefacts import write_adapt_manifest
from dreamir.candidates import BM25Index
from dreamir.data.beir import Document, read_corpus
from dreamir.data.corpus_examples import (
    RECIPES,
    CorpusExamples,
    CorpusExampleSettings,
    build_generated_examples,
    build_ict_examples,
    read_query_examples,
    with_pseudo_gold,
)
from dreamir.data.training import TrainingExample, read_training_file, write_training_file
from dreamir.evaluation import exact_search, pseudo_gold_success
from dreamir.io import atomic_path, read_log_rows, write_json_atomic, write_jsonl_atomic, write_text_atomic
from dreamir.llm.frozen import FrozenLLM
from dreamir.llm.heads import CalibrationExample, HeadSet, rank_heads, score_heads
from dreamir.llm.prompt import PromptSettings
from dreamir.models import MINILM, SMOLLM2
from dreamir.objectives import OBJECTIVES, DreamOptions, objective_class
from dreamir.options import at_least, positive
from dreamir.plots import plot_training_curves
from dreamir.precision import PRECISION_HELP, Precision, describe_compute, machine_record
from dreamir.retriever import CONFIG_FILE, Retriever
from dreamir.stages import Stages
from dreamir.trainer import Trainer, TrainerCallback, TrainingArguments
from dreamir.workflow import build_objective, load_retriever, set_threads

logger = logging.getLogger(__name__)
VALIDATION_METRIC = "val_success@10"
# With a hundred or so held-out examples success@10 moves in steps of 1%: MRR@10 breaks its ties.
TIE_BREAKER = "val_mrr@10"


def _rank_key(result: Mapping[str, float]) -> tuple[float, float]:
    return (result[VALIDATION_METRIC], result[TIE_BREAKER])


@dataclass
class AdaptArguments:
    corpus: str = field(
        metadata={
            "help": "your corpus: a BEIR-layout directory (only its corpus.jsonl is read) or a corpus.jsonl; "
            "may be given as the first word: dreamir adapt DIR"
        }
    )
    out: str = field(
        metadata={
            "help": "output directory: model/ (the adapted retriever, sentence-transformers), report.md, "
            "report.json, curves.png, and work/ (the stages, reused when the command is run again)"
        }
    )
    retriever: str = field(default=MINILM, metadata={"help": "packaged retriever name or local directory"})
    retriever_layers: int | None = field(default=None, metadata={"help": "cut the retriever to N layers"})
    lora: bool = field(
        default=False, metadata={"help": "train LoRA adapters (rank 16) instead of all weights"}
    )
    llm: str = field(default=SMOLLM2, metadata={"help": "the frozen LLM (judge, and generator for genq)"})
    objective: str = field(
        default="dream",
        metadata={
            "help": "dream; infonce (pseudo-gold as positive), replug and autoregembed-ic (label-free, needs a "
            "retriever of the LLM's width, e.g. smollm2-135m-instruct) are baselines",
            "choices": list(OBJECTIVES),
        },
    )
    # genq: above ict on both corpora measured (docs/experiments.md, "Generated queries against inverse cloze").
    recipe: Literal["ict", "genq"] = field(
        default="genq",
        metadata={
            "help": "genq: the LLM writes the query (short titled passages: their title); ict: a sentence of "
            "a passage is the query"
        },
    )
    max_passages: int | None = field(
        default=None,
        metadata={
            "help": "passages sampled to make examples from (default: ict 1000; genq as many as the training "
            "budget and the validation read, a fifth more for dropped queries)"
        },
    )
    examples_per_passage: int = field(default=1, metadata={"help": "examples made from each passage"})
    target_words: int = field(default=32, metadata={"help": "words of text the LLM must predict"})
    ict_target: Literal["kept", "removed"] = field(
        default="kept",
        metadata={"help": "ict: the target's sentences kept in the pseudo-gold passage or removed from it"},
    )
    short_passage_titles: bool = field(
        default=True,
        metadata={
            "help": "genq: a passage under 3 sentences with a title gives its title as the query, as in ict, "
            "instead of a generated one (--no-short-passage-titles generates for every passage)"
        },
    )
    query_instruction: str | None = field(
        default=None, metadata={"help": "genq: the instruction asking for a query (default: a search query)"}
    )
    query_examples: str | None = field(
        default=None,
        metadata={
            "help": 'genq: JSONL of worked examples shown to the generator, one {"passage", "query"} '
            "per line: a few queries of the kind your corpus is searched with (default: three from "
            "unrelated fields)"
        },
    )
    validation_examples: int = field(default=200, metadata={"help": "examples held out for validation"})
    validation_docs: int = field(
        default=3000, metadata={"help": "corpus passages the validation searches (all when fewer)"}
    )
    validate_every: int | None = field(
        default=None, metadata={"help": "steps between validations; default: max_steps / 5"}
    )
    num_candidates: int = field(default=8, metadata={"help": "candidates per training example (BM25 top-K)"})
    force_pseudo_gold: bool = field(
        default=True,
        metadata={"help": "put the pseudo-gold passage among the candidates when BM25 misses it"},
    )
    refresh_every: int = field(
        default=0, metadata={"help": "re-mine candidates with the current retriever every N steps (0: never)"}
    )
    refresh_after: int = field(default=0, metadata={"help": "first step at which candidates are re-mined"})
    heads: str | None = field(
        default=None, metadata={"help": "head file; default: scored on the generated examples"}
    )
    num_heads: int = field(default=16, metadata={"help": "query-focused heads DREAM injects into"})
    head_examples: int = field(default=32, metadata={"help": "training examples the heads are scored on"})
    max_steps: int = field(default=80, metadata={"help": "optimiser steps"})
    batch_size: int = field(default=4, metadata={"help": "examples per optimiser step"})
    learning_rate: float = field(default=2e-5, metadata={"help": "AdamW peak learning rate"})
    temperature: float = field(
        default=0.05, metadata={"help": "softmax temperature tau over candidate scores"}
    )
    max_target_tokens: int = field(default=32, metadata={"help": "target tokens the LLM must predict"})
    train_max_length: int | None = field(
        default=128,
        metadata={"help": "retriever tokens per text while training (all-MiniLM-L6-v2 was trained at 128)"},
    )
    precision: Precision = field(
        default="auto",
        metadata={
            "help": "compute dtype of every stage (generation, the frozen LLM, the retriever's training, "
            "validation and mining encodes; float32 weights and optimiser). " + PRECISION_HELP
        },
    )
    # Parallel: a cheaper step (median 1.3x on SciFact, 1.8x on the Factbook corpus: each passage is read
    # about once, so the saving is attention over one passage instead of all K); on those two corpora its
    # adapted models were level with the sequential layout's on average (docs/experiments.md).
    document_layout: Literal["sequential", "parallel"] = field(
        default="parallel", metadata={"help": "how the frozen LLM reads the candidates (see docs/method.md)"}
    )
    seed: int = field(default=0, metadata={"help": "seeds sampling, splits, training and validation"})
    threads: int | None = field(default=2, metadata={"help": "CPU threads torch may use"})
    show_progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def __post_init__(self) -> None:
        at_least(self, 1, "max_passages", "examples_per_passage", "target_words", "validation_examples")
        at_least(self, 1, "validation_docs", "validate_every", "num_candidates", "num_heads", "head_examples")
        at_least(self, 1, "max_steps", "batch_size", "max_target_tokens", "train_max_length", "threads")
        at_least(self, 1, "retriever_layers")
        at_least(self, 0, "refresh_every", "refresh_after")
        positive(self, "learning_rate", "temperature")

    def passages_to_sample(self) -> int:
        if self.max_passages is not None:
            return self.max_passages
        if self.recipe == "ict":
            return 1000  # examples cost nothing to make; more than the budget reads
        # Generation costs about a second per passage on a CPU: write only what training and validation read.
        needed = self.max_steps * self.batch_size + self.validation_examples
        return math.ceil(1.2 * needed / self.examples_per_passage)

    def example_settings(self) -> CorpusExampleSettings:
        return CorpusExampleSettings(
            recipe=self.recipe,
            max_passages=self.passages_to_sample(),
            examples_per_passage=self.examples_per_passage,
            target_words=self.target_words,
            ict_target=self.ict_target,
            short_passage_titles=self.short_passage_titles,
            seed=self.seed,
        )


def _run_settings(args: AdaptArguments) -> dict:
    """What a resumed training run must share with the checkpoint it resumes from."""
    ignored = {"out", "corpus", "threads", "show_progress", "validate_every", "validation_docs"}
    settings = {k: v for k, v in dataclasses.asdict(args).items() if k not in ignored}
    # The dtype it resolves to here, not "auto": a run resumed on a processor of another kind is refused
    # instead of silently continuing in another dtype.
    settings["precision"] = compute.resolve(args.precision)
    return settings


def _say(message: str) -> None:
    print(f"[dreamir adapt] {message}", flush=True)


# ---- 1. examples ------------------------------------------------------------------------------------------
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
    generator = QueryGenerator(args.llm, generation, show_progress=args.show_progress)
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


# ---- 2. heads ---------------------------------------------------------------------------------------------
def select_heads_label_free(
    args: AdaptArguments, train: Sequence[TrainingExample], corpus: Mapping[str, Document], out: Path
) -> HeadSet:
    """QRHead scoring with each example's pseudo-gold as its gold: no label involved."""
    calibration = []
    for example in train[: args.head_examples]:
        ids = list(example.candidate_ids or [])
        if example.gold_id not in ids:
            continue
        documents = [(corpus[i].title, corpus[i].text) for i in ids]
        calibration.append(CalibrationExample(example.query, documents, ids.index(example.gold_id)))
    llm = FrozenLLM.from_pretrained(
        args.llm, prompt=PromptSettings(document_layout=args.document_layout), precision=args.precision
    )
    scores = score_heads(llm, calibration, batch_size=4, show_progress=args.show_progress)
    heads = rank_heads(
        scores,
        args.llm,
        {
            "method": "qrhead-pseudo-gold",
            "examples": len(calibration),
            "recipe": args.recipe,
            "top_k": args.num_heads,
            "document_layout": args.document_layout,
            "precision": llm.precision,
        },
    )
    heads.save(out)
    return heads


# ---- 3. training callbacks ----------------------------------------------------------------------------------
def _encode(
    retriever: Retriever, texts: Sequence[str], is_query: bool, max_length: int | None, precision: str
) -> np.ndarray:
    # The run's compute dtype and the training length for the validation and mining passes: a relative
    # signal, several times cheaper than a full-length encoding.
    with compute.autocast(precision, retriever.device):
        return retriever.encode(
            list(texts), is_query=is_query, batch_size=64, show_progress=False, max_length=max_length
        )


class PseudoGoldValidator:
    """Every ``every`` steps (and before the first), the held-out examples' success@10 over the corpus;
    the best retriever so far is saved to ``best_dir``.

    Where the held-out examples' passages have titles, each title also searches for its passage's text (a
    second kind of query, unlike the training queries): a signal drawn only from the training task can
    rise while real retrieval falls (the retriever learns the pseudo-task), and the titles guard that.
    """

    def __init__(
        self,
        retriever: Retriever,
        validation: Sequence[TrainingExample],
        corpus: Mapping[str, Document],
        derived: Mapping[str, Document],
        source_of: Mapping[str, str],
        max_docs: int,
        every: int,
        best_dir: Path,
        seed: int = 0,
        max_length: int | None = None,
        precision: str = "float32",
    ) -> None:
        self.retriever = retriever
        self.max_length = max_length
        self.precision = precision
        self.validation = list(validation)
        self.every = every
        self.best_dir = best_dir
        sources = [source_passage(e, source_of) for e in self.validation]
        unique_sources = list(dict.fromkeys(sources))
        taken = set(unique_sources)
        others = [i for i in sorted(corpus) if i not in taken]
        random.Random(seed).shuffle(others)
        self.doc_ids = unique_sources + others[: max(max_docs - len(unique_sources), 0)]
        row = {doc_id: i for i, doc_id in enumerate(self.doc_ids)}
        self.doc_texts = [corpus[i].full_text for i in self.doc_ids]
        self.gold_rows = [row[s] for s in sources]
        self.queries = [e.query for e in self.validation]
        self.gold_texts = [(derived.get(e.gold_id) or corpus[e.gold_id]).full_text for e in self.validation]
        titled = [s for s in dict.fromkeys(sources) if len(corpus[s].title.split()) >= 3 and corpus[s].text]
        self.queries += [corpus[s].title for s in titled]
        self.gold_rows += [row[s] for s in titled]
        self.gold_texts += [corpus[s].text for s in titled]
        self.num_titles = len(titled)
        # A pseudo-gold is most often a searched passage itself (genq): each distinct text is encoded once
        # and the searched passages and the golds are read from those rows.
        self.distinct_texts = list(dict.fromkeys(self.doc_texts + self.gold_texts))
        row_of = {text: row for row, text in enumerate(self.distinct_texts)}
        self.doc_text_rows = [row_of[t] for t in self.doc_texts]
        self.gold_text_rows = [row_of[t] for t in self.gold_texts]
        self.best = (float("-inf"), float("-inf"))

    def measure(self) -> dict[str, float]:
        queries = _encode(self.retriever, self.queries, True, self.max_length, self.precision)
        encoded = _encode(self.retriever, self.distinct_texts, False, self.max_length, self.precision)
        docs, golds = encoded[self.doc_text_rows], encoded[self.gold_text_rows]
        result = {f"val_{k}": v for k, v in pseudo_gold_success(queries, docs, self.gold_rows, golds).items()}
        if self.num_titles:
            titles = slice(len(self.queries) - self.num_titles, None)
            by_title = pseudo_gold_success(queries[titles], docs, self.gold_rows[titles], golds[titles])
            result.update({f"val_title_{k}": v for k, v in by_title.items()})
        return result

    def on_train_begin(self, trainer: Trainer) -> None:
        log = trainer.output_dir / "log.jsonl"
        rows = read_log_rows(log) if log.exists() else []
        scores = [_rank_key(r) for r in rows if VALIDATION_METRIC in r and r["step"] <= trainer.step]
        baseline = trainer.output_dir / "validation_step0.json"
        if not baseline.exists():
            write_json_atomic(baseline, self.measure())
        scores.append(_rank_key(json.loads(baseline.read_text())))
        self.best = max(scores)
        if trainer.step == 0 and not self.best_dir.exists():
            self.retriever.save(self.best_dir)  # the starting retriever until something beats it

    def on_step_end(self, trainer: Trainer) -> dict[str, float]:
        if trainer.step % self.every and trainer.step != trainer.args.max_steps:
            return {}
        result = self.measure()
        # Exact ties go to the later checkpoint: it has seen more of the corpus.
        if _rank_key(result) >= self.best:
            self.best = _rank_key(result)
            self.retriever.save(self.best_dir)
            write_json_atomic(self.best_dir.parent / "best.json", {"step": trainer.step, **result})
        return result


class DenseCandidateRefresher:
    """From ``after`` on, every ``every`` steps: each training example's candidates become the current
    retriever's top-K over the corpus (pseudo-gold forced in as with BM25). Each refresh is saved, so a
    resumed run reads the one its checkpoint saw."""

    def __init__(
        self,
        retriever: Retriever,
        corpus: Mapping[str, Document],
        source_of: Mapping[str, str],
        k: int,
        force: bool,
        every: int,
        after: int,
        directory: Path,
        seed: int = 0,
        max_length: int | None = None,
        precision: str = "float32",
    ) -> None:
        self.retriever = retriever
        self.max_length = max_length
        self.precision = precision
        self.doc_ids = list(corpus)
        self.doc_texts = [corpus[i].full_text for i in self.doc_ids]
        self.source_of = source_of
        self.k, self.force, self.every, self.after = k, force, every, after
        self.directory = directory
        self.seed = seed

    def _due(self, step: int) -> bool:
        return step >= self.after and (step - self.after) % self.every == 0

    def _file(self, step: int) -> Path:
        return self.directory / f"candidates-step-{step:06d}.jsonl"

    def on_train_begin(self, trainer: Trainer) -> None:
        saved = sorted(
            p
            for p in self.directory.glob("candidates-step-*.jsonl")
            if int(p.stem.split("-")[-1]) <= trainer.step
        )
        if saved:
            trainer.examples = read_training_file(saved[-1])
        elif self._due(0):
            self._refresh(trainer)

    def on_step_end(self, trainer: Trainer) -> dict[str, float]:
        if not self._due(trainer.step) or trainer.step == trainer.args.max_steps:
            return {}
        return self._refresh(trainer)

    def _refresh(self, trainer: Trainer) -> dict[str, float]:
        queries = _encode(
            self.retriever, [e.query for e in trainer.examples], True, self.max_length, self.precision
        )
        docs = _encode(self.retriever, self.doc_texts, False, self.max_length, self.precision)
        run = exact_search(queries, docs, [str(i) for i in range(len(queries))], self.doc_ids, k=self.k + 1)
        ranked = [list(run[str(i)]) for i in range(len(queries))]
        examples = with_pseudo_gold(
            trainer.examples, ranked, self.source_of, self.k, self.force, self.seed + trainer.step
        )
        found = sum(
            e.gold_id in r or self.source_of.get(e.gold_id) in r
            for e, r in zip(examples, ranked, strict=True)
        )
        write_training_file(self._file(trainer.step), examples)
        trainer.examples = examples
        return {"refresh_pseudo_gold_found": found / len(examples)}


def build_trainer(
    args: AdaptArguments,
    work: Path,
    heads_file: Path,
    train: Sequence[TrainingExample],
    validation: Sequence[TrainingExample],
    corpus: Mapping[str, Document],
    derived: Mapping[str, Document],
    source_of: Mapping[str, str],
    extra_callbacks: Sequence[TrainerCallback] = (),
) -> Trainer:
    """The retriever, the objective and its frozen LLM, the validation (and refresh) callbacks, the trainer."""
    train_dir = work / "train"
    full_corpus = {**corpus, **derived}
    # An objective that trains one pooling (autoregembed-ic: compress tokens) gets it.
    model = ModelArguments(
        retriever=args.retriever,
        retriever_layers=args.retriever_layers,
        lora=args.lora,
        pooling=objective_class(args.objective).required_pooling,
    )
    retriever = load_retriever(model)
    objective = build_objective(
        retriever,
        ObjectiveArguments(
            objective=args.objective,
            temperature=args.temperature,
            train_max_length=args.train_max_length,
            retriever_precision=args.precision,
        ),
        LLMArguments(
            llm=args.llm,
            max_target_tokens=args.max_target_tokens,
            precision=args.precision,
            # Parallel layout: an adapt run reads most passages about once (80 steps x 4 x 8 candidates
            # from thousands of passages), so their keys and values (megabytes each) are kept in memory for
            # the step that reads them, not written to disk, and not built ahead for unread examples.
            document_layout=args.document_layout,
        ),
        [DreamOptions(heads=str(heads_file), num_heads=args.num_heads)],
    )
    training = TrainingArguments(
        output_dir=str(train_dir),
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        save_steps=max(args.max_steps // 5, 1),
        show_progress=args.show_progress,
    )
    every = args.validate_every or max(args.max_steps // 5, 1)
    callbacks: list[TrainerCallback] = [
        PseudoGoldValidator(
            retriever,
            validation,
            corpus,
            derived,
            source_of,
            args.validation_docs,
            every,
            train_dir / "best",
            args.seed,
            args.train_max_length,
            args.precision,
        )
    ]
    if args.refresh_every:
        callbacks.append(
            DenseCandidateRefresher(
                retriever,
                corpus,
                source_of,
                args.num_candidates,
                args.force_pseudo_gold,
                args.refresh_every,
                args.refresh_after,
                train_dir / "candidates",
                args.seed,
                args.train_max_length,
                args.precision,
            )
        )
    callbacks += extra_callbacks
    return Trainer(
        objective,
        train,
        full_corpus,
        training,
        sampling=SamplingArguments(num_candidates=args.num_candidates),
        run_settings=_run_settings(args),
        run_setting_defaults=_run_settings(type(args)(corpus=args.corpus, out=args.out)),
        callbacks=callbacks,
    )


# ---- the command ----------------------------------------------------------------------------------------
def adapt(args: AdaptArguments, extra_callbacks: Sequence[TrainerCallback] = ()) -> dict:
    """Run (or resume) every stage; ``extra_callbacks`` join the trainer's (benchmarks use it to measure
    a labelled metric beside the label-free one)."""
    set_threads(args.threads)
    out = Path(args.out)
    work = out / "work"
    corpus_dir = Path(args.corpus)
    corpus_file = corpus_dir / "corpus.jsonl" if corpus_dir.is_dir() else corpus_dir
    if not corpus_file.exists():
        raise FileNotFoundError(f"{corpus_file}: no corpus.jsonl (adapt reads a BEIR-layout directory)")
    if args.query_examples:
        read_query_examples(args.query_examples)  # a bad file fails now, naming its line, not hours later
    stages = Stages(say=_say, seconds_file=work / "stages.json")
    corpus = read_corpus(corpus_file)
    if not corpus:
        raise ValueError(f"{corpus_file}: the corpus is empty")
    _say(f"{len(corpus)} passages in {corpus_file}")
    machine = machine_record(all_stages=args.precision)
    _say(f"compute: {describe_compute(machine)}")
    meta_file = stages.run(
        "examples",
        work / "examples.json",
        lambda: prepare_examples(args, corpus, work),
        f"making training examples ({args.recipe}) from up to {args.passages_to_sample()} passages",
    )
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    _say(f"{meta['train']} training and {meta['validation']} validation examples; dropped {meta['dropped']}")

    derived, source_of = read_derived(work / "derived.jsonl")
    train = read_training_file(work / "train.jsonl")
    validation = read_training_file(work / "validation.jsonl")
    full_corpus = {**corpus, **derived}

    heads_file = Path(args.heads) if args.heads else work / "heads.json"

    def score_heads() -> None:
        heads = select_heads_label_free(args, train, full_corpus, heads_file)
        _say(f"top heads (layer, head): {heads.top(args.num_heads)}")

    if args.objective == "dream":
        stages.run(
            "heads",
            heads_file,
            score_heads,
            f"scoring the heads of {args.llm} on {args.head_examples} examples (pseudo-gold, no labels)",
        )

    train_dir = work / "train"
    trainer = build_trainer(
        args, work, heads_file, train, validation, corpus, derived, source_of, extra_callbacks
    )
    result = stages.timed(
        "training",
        trainer.train,
        f"training {args.retriever} with {args.objective} for {args.max_steps} steps of {args.batch_size}",
    )

    best = json.loads((train_dir / "best.json").read_text()) if (train_dir / "best.json").exists() else {}
    # Replaces only a model an earlier run wrote there.
    with atomic_path(out / "model", replace_directory=(out / "model" / CONFIG_FILE).exists()) as tmp:
        shutil.copytree(train_dir / "best", tmp)
    rows = read_log_rows(result.log_file)
    curve = plot_training_curves(
        {args.objective: result.log_file}, out / "curves.png", metrics=("loss", "p_gold", VALIDATION_METRIC)
    )
    head_picture = None
    llm = getattr(trainer.objective, "llm", None)
    if isinstance(llm, FrozenLLM) and llm.heads:
        head_picture = stages.run(
            "head attention",
            train_dir / "head_attention.png",
            lambda: _plot_head_attention(args, llm, train, full_corpus, out / "model", train_dir),
            "measuring the injected heads' share of the source passage before and after training",
        )
    baseline = json.loads((train_dir / "validation_step0.json").read_text())
    report = {
        "corpus": str(corpus_file),
        "passages": len(corpus),
        "settings": dataclasses.asdict(args),
        "examples": meta,
        "validation": {
            "metric": VALIDATION_METRIC,
            "start": baseline[VALIDATION_METRIC],
            "best": best.get(VALIDATION_METRIC, baseline[VALIDATION_METRIC]),
            "best_step": best.get("step", 0),
            "by_step": {int(r["step"]): r[VALIDATION_METRIC] for r in rows if VALIDATION_METRIC in r},
        },
        "steps": result.steps,
        "stage_seconds": stages.seconds,
        # The processor and the dtype every stage computed in (generation, LLM, retriever, validation).
        "machine": machine,
        "model": str(out / "model"),
        "curves": str(curve),
        "head_attention": str(head_picture) if head_picture else None,
    }
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", render_report(report))
    write_adapt_manifest(out, args, corpus)
    _say(
        f"validation success@10: {report['validation']['start']:.3f} at the start, "
        f"{report['validation']['best']:.3f} at step {report['validation']['best_step']} (kept) -> {out / 'model'}"
    )
    return report


def _plot_head_attention(
    args: AdaptArguments,
    llm: FrozenLLM,
    train: Sequence[TrainingExample],
    corpus: Mapping[str, Document],
    model_dir: Path,
    train_dir: Path,
) -> Path:
    """The injected heads' share of the source passage with the starting and the kept retriever, next to
    the checkpoints (train_dir/head_attention.png)."""
    from dreamir.head_attention import measure_head_attention, plot_head_attention

    examples = [e for e in train if e.gold_id in (e.candidate_ids or [])[: args.num_candidates]][:16]
    before = load_retriever(ModelArguments(retriever=args.retriever)).eval()
    kept = Retriever.from_pretrained(model_dir).eval()
    measured = measure_head_attention(
        llm,
        llm.heads,
        examples,
        corpus,
        {"before": before, "after": kept},
        args.temperature,
        args.num_candidates,
    )
    return plot_head_attention(measured, train_dir / "head_attention.png")


def render_report(report: dict) -> str:
    v, e = report["validation"], report["examples"]
    lines = [
        "# dreamir adapt report",
        "",
        f"- corpus: `{report['corpus']}` ({report['passages']} passages)",
        f"- recipe: {e['recipe']}; {e['examples']} examples from {e['passages_sampled']} passages "
        f"({e['train']} training, {e['validation']} held out); dropped: {e['dropped']}",
        f"- objective: {report['settings']['objective']}, {report['steps']} steps of "
        f"{report['settings']['batch_size']}, lr {report['settings']['learning_rate']}",
        f"- validation ({v['metric']}: held-out examples whose own passage ranks in the top 10 of "
        f"the corpus): {v['start']:.3f} before training, best {v['best']:.3f} at step {v['best_step']} (kept)",
        "- by step: " + ", ".join(f"{s}: {x:.3f}" for s, x in sorted(v["by_step"].items())),
        "- stage seconds: " + ", ".join(f"{k} {s:.0f}" for k, s in report["stage_seconds"].items()),
        f"- compute: {describe_compute(report['machine'])}",
        f"- model: `{report['model']}`; curves: `{report['curves']}`",
        "",
    ]
    return "\n".join(lines)
