"""`dreamir adapt`'s options (``AdaptArguments``) and the settings a resumed run must share with its
checkpoint."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

from dreamir import precision as compute
from dreamir.arguments import BEFORE_THE_OPTION_EXISTED
from dreamir.data.corpus_examples import CorpusExampleSettings
from dreamir.models import MINILM, SMOLLM2
from dreamir.objectives import OBJECTIVES
from dreamir.options import at_least, fraction, non_negative, positive
from dreamir.precision import PRECISION_HELP, Precision


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
    # LoRA: over three seeds on both corpora, on the same examples as all weights, at or above them with
    # every seed above the base (docs/experiments.md, "LoRA and a fixed schedule made adapt's default").
    lora: bool = field(
        default=True,
        metadata={
            "help": "train LoRA adapters (rank 16), merged into the model written (--no-lora: all weights)"
        },
    )
    llm: str = field(
        default=SMOLLM2,
        metadata={"help": "the frozen LLM: DREAM's judge, and genq's generator unless --generator"},
    )
    # Apart from the judge: a base model may judge well (its heads and its loss) yet not follow the instruction
    # to write a query, which only an instruction-tuned model does.
    generator: str | None = field(
        default=None, metadata={"help": "genq: the LLM that writes the queries (default: --llm)"}
    )
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
    # passage: the LLM can copy the target from the pseudo-gold passage, so its judgement is close to one-hot
    # on it; query: a query-likelihood judgement, which also credits other passages. On SciFact (one seed)
    # query was level with passage at best (docs/experiments.md, "The query as the LLM's target").
    target_text: Literal["passage", "query"] = field(
        default="passage",
        metadata={
            "help": "what the frozen LLM predicts: passage, the recipe's target, text of the pseudo-gold passage "
            "(genq: its first --target-words words; ict: the words after the query sentence); query, the "
            "query itself from the candidates alone (no question in the LLM's prompt)"
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
    learning_rate: float | None = field(
        default=None,
        metadata={"help": "AdamW peak learning rate (default: 2e-4 with LoRA, 2e-5 for all weights)"},
    )
    temperature: float = field(
        default=0.05, metadata={"help": "softmax temperature tau over candidate scores"}
    )
    max_target_tokens: int = field(default=32, metadata={"help": "target tokens the LLM must predict"})
    # batch: over three seeds on the Factbook corpus it beat own candidates beyond noise, on SciFact it was
    # level (docs/experiments.md, "In-batch candidates made adapt's default").
    dream_candidates: Literal["own", "batch"] = field(
        default="batch",
        metadata={
            "help": "dream: batch, each query's prompt holds every distinct candidate of the batch, p over all "
            "of them; own, only its K candidates (see `dreamir train --help`)"
        },
    )
    anchor_weight: float = field(
        default=0.0,
        metadata={
            "help": "dream: weight of KL(p_start || p), a penalty on p moving away from the starting "
            "retriever's distribution over the candidates (0: none)"
        },
    )
    dream_target: Literal["gradient", "proximal", "uniform"] = field(
        default="gradient",
        metadata={
            "help": "dream: gradient, the LLM's loss trains the retriever through p; proximal, KL towards the "
            "starting retriever's distribution moved one step by the LLM; uniform, KL towards the LLM's "
            "judgement at uniform p (see `dreamir train --help`)"
        },
    )
    proximal_step: float = field(
        default=1.0, metadata={"help": "dream: eta of --dream-target proximal or uniform"}
    )
    # auto: the validation did not pick the better of close checkpoints (SciFact: Pearson -0.10 over 18; at 80
    # steps LoRA's last checkpoints were at or above its validated ones on both corpora), but it fell below its
    # start on the one run that collapsed (a 160-step Factbook seed), where its best was 0.05 above the last
    # (docs/experiments.md, "LoRA and a fixed schedule made adapt's default").
    keep: Literal["auto", "last", "best"] = field(
        default="auto",
        metadata={
            "help": "the checkpoint written to OUT/model: auto, the last one unless the label-free validation "
            "ended below its start, then its best; last, the end of the fixed schedule; best, the one the "
            "validation scores highest (the starting retriever if nothing beat it)"
        },
    )
    # All weights: 0.25 over three seeds on both corpora was at or above the earlier default (0.5) and kept
    # SciFact's weakest seed within 0.001 of the base, where 0 let it end 0.003 below (docs/experiments.md,
    # "In-batch candidates made adapt's default"). LoRA: averaging cost it on both corpora beyond noise, so 0.
    base_weight: float | None = field(
        default=None,
        metadata={
            "help": "weight averaging: the model written is (1 - w) x the kept checkpoint + w x the starting "
            "retriever, weight by weight (0: the kept checkpoint as it is; 1: the starting retriever); "
            "default 0 with LoRA, 0.25 for all weights, 0 for autoregembed-ic (its compression tokens are not "
            "in the base)"
        },
    )
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
    # Off by default: 80 steps of 4 read most candidates once. A budget of a pass or more over thousands of
    # passages reads each about num_candidates times, and their keys and values (about 6 MB a passage for
    # SmolLM2 in float32) outgrow memory: then the disk keeps them, within this bound.
    document_cache_gb: float = field(
        default=0.0,
        metadata={
            "help": "parallel layout: keep the candidates' keys and values on disk under OUT/work/document_cache, "
            "at most this many GB (least recently used dropped beyond it); 0: in memory only"
        },
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
        if self.learning_rate is None:
            # LoRA's few weights take larger steps: 2e-4 measured stable on both corpora (5e-4 collapsed on
            # the Factbook corpus); 2e-5 is the usual rate for fine-tuning a whole sentence encoder.
            self.learning_rate = 2e-4 if self.lora else 2e-5
        positive(self, "learning_rate", "temperature", "proximal_step")
        non_negative(self, "anchor_weight", "document_cache_gb")
        objective = OBJECTIVES.get(self.objective)
        adds_tokens = objective is not None and objective.required_pooling == "compress"
        if self.base_weight is None:
            self.base_weight = 0.0 if adds_tokens or self.lora else 0.25
        fraction(self, "base_weight")
        if adds_tokens and self.base_weight:
            raise ValueError(
                f"--base-weight {self.base_weight:g}: --objective {self.objective} adds compression tokens the "
                "starting retriever does not have, so the two cannot be averaged (use --base-weight 0)"
            )

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


def run_setting_defaults(args: AdaptArguments) -> dict:
    """The settings a checkpoint lacking some of them counts as having (Trainer's run_setting_defaults)."""
    return run_settings(type(args)(corpus=args.corpus, out=args.out)) | BEFORE_THE_OPTION_EXISTED


def run_settings(args: AdaptArguments) -> dict:
    """What a resumed training run must share with the checkpoint it resumes from."""
    # keep and base_weight only change which checkpoint is written out and how, document_cache_gb where keys
    # and values are kept: none changes the training.
    ignored = {
        "out",
        "corpus",
        "threads",
        "show_progress",
        "validate_every",
        "validation_docs",
        "keep",
        "base_weight",
        "document_cache_gb",
    }
    settings = {k: v for k, v in dataclasses.asdict(args).items() if k not in ignored}
    # The dtype it resolves to here, not "auto": a run resumed on a processor of another kind is refused
    # instead of silently continuing in another dtype.
    settings["precision"] = compute.resolve(args.precision)
    return settings
