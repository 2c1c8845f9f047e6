"""The steps the CLI and the quickstart chain together: each takes plain paths and settings, so every step
can be run alone from the command line and its output reused."""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoConfig

from dreamir.candidates import BM25Index, mine_candidates
from dreamir.data.beir import BeirDataset, Document, load_beir, read_corpus
from dreamir.data.training import TrainingExample, read_training_file, validate_against_corpus
from dreamir.evaluation import evaluate_bm25, evaluate_encoder
from dreamir.guards import check_finite_embeddings
from dreamir.io import check_output_file, write_json_atomic
from dreamir.llm.frozen import FrozenLLM, Precision
from dreamir.llm.heads import CalibrationExample, HeadSet, random_heads, rank_heads, score_heads
from dreamir.llm.prompt import DocumentLayout, PromptSettings
from dreamir.models import MINILM, SMOLLM2, resolve_model
from dreamir.objectives import DreamLoss, InfoNCELoss, Objective, ReplugLoss
from dreamir.options import at_least, positive
from dreamir.retriever import LoraSettings, Retriever
from dreamir.trainer import Trainer, TrainingArguments, TrainingResult

logger = logging.getLogger(__name__)
LAYOUT_HELP = (
    "sequential: candidates one after another; parallel: each candidate read after the instruction alone, "
    "all at the same positions, so their keys and values are computed once per corpus"
)


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def load_corpus(path: str | Path) -> dict[str, Document]:
    """A BEIR directory or a corpus.jsonl file."""
    path = Path(path)
    return read_corpus(path / "corpus.jsonl" if path.is_dir() else path)


# ---- head selection --------------------------------------------------------------------------------------
@dataclass
class HeadSelectionArguments:
    calibration: str = field(metadata={"help": "training-format JSONL whose examples carry gold_id"})
    corpus: str = field(metadata={"help": "BEIR directory or corpus.jsonl holding the passages"})
    out: str = field(metadata={"help": "head file to write (JSON)"})
    llm: str = field(default=SMOLLM2, metadata={"help": "packaged LLM name or local HF directory"})
    top_k: int = field(default=16, metadata={"help": "heads DREAM will use by default"})
    random: bool = field(default=False, metadata={"help": "draw top_k random heads instead (ablation)"})
    num_candidates: int = field(default=8, metadata={"help": "documents per calibration prompt"})
    max_examples: int = field(default=64, metadata={"help": "calibration examples to score with"})
    no_calibration: bool = field(default=False, metadata={"help": "skip the 'N/A' query correction"})
    max_document_tokens: int = 128
    document_layout: DocumentLayout = field(default="sequential", metadata={"help": LAYOUT_HELP})
    batch_size: int = 4
    seed: int = 0
    show_progress: bool = True

    def __post_init__(self) -> None:
        at_least(self, 1, "top_k", "num_candidates", "max_examples", "max_document_tokens", "batch_size")


def calibration_examples(
    examples: Sequence[TrainingExample], corpus: dict[str, Document], num_candidates: int, seed: int
) -> list[CalibrationExample]:
    """BM25 candidates with the gold passage put in (calibration is labelled), in a shuffled order."""
    labelled = [e for e in examples if e.gold_id]
    if not labelled:
        raise ValueError("head selection needs calibration examples with a gold_id")
    index = BM25Index.from_corpus(corpus)
    rng = random.Random(seed)
    mined = mine_candidates(labelled, index, num_candidates)
    result = []
    for example in mined:
        ids = [i for i in (example.candidate_ids or []) if i != example.gold_id][: num_candidates - 1]
        ids.insert(rng.randrange(len(ids) + 1), example.gold_id)
        documents = [(corpus[i].title, corpus[i].text) for i in ids]
        result.append(CalibrationExample(example.query, documents, ids.index(example.gold_id)))
    return result


def select_heads(args: HeadSelectionArguments) -> HeadSet:
    check_output_file(args.out)  # before the slow scoring, not after it
    settings = {k: v for k, v in vars(args).items() if k not in {"out", "show_progress"}}
    if args.random:
        config = AutoConfig.from_pretrained(resolve_model(args.llm))
        heads = random_heads(
            config.num_hidden_layers, config.num_attention_heads, args.top_k, args.seed, args.llm
        )
        heads.settings.update(settings)
    else:
        corpus = load_corpus(args.corpus)
        examples = read_training_file(args.calibration)[: args.max_examples]
        validate_against_corpus(examples, corpus, args.calibration)
        prompt = PromptSettings(
            max_document_tokens=args.max_document_tokens, document_layout=args.document_layout
        )
        llm = FrozenLLM.from_pretrained(args.llm, prompt=prompt)
        calibration = calibration_examples(examples, corpus, args.num_candidates, args.seed)
        scores = score_heads(
            llm, calibration, args.batch_size, not args.no_calibration, show_progress=args.show_progress
        )
        heads = rank_heads(scores, args.llm, {"method": "qrhead", "examples": len(calibration), **settings})
    heads.save(args.out)
    return heads


# ---- training --------------------------------------------------------------------------------------------
@dataclass
class ModelArguments:
    retriever: str = field(default=MINILM, metadata={"help": "packaged retriever name or local directory"})
    pooling: Literal["mean", "cls", "last"] | None = field(
        default=None, metadata={"help": "default: the model's own (mean for all-minilm-l6-v2)"}
    )
    max_length: int | None = field(default=None, metadata={"help": "default: the model's own"})
    retriever_layers: int | None = field(default=None, metadata={"help": "cut the backbone to N layers"})
    append_eos: bool | None = field(
        default=None,
        metadata={"help": "end every text with the end-of-text token; default: for last pooling"},
    )
    lora: bool = field(default=False, metadata={"help": "train LoRA adapters instead of all weights"})
    lora_r: int = 16
    lora_seed: int = field(default=0, metadata={"help": "seed of the LoRA adapters' random initialisation"})
    query_prefix: str = ""
    document_prefix: str = ""

    def __post_init__(self) -> None:
        at_least(self, 1, "max_length", "retriever_layers", "lora_r")


@dataclass
class DreamArguments:
    train: str = field(metadata={"help": "training-format JSONL (candidate_ids mined with BM25 if absent)"})
    corpus: str = field(metadata={"help": "BEIR directory or corpus.jsonl the candidate ids refer to"})
    heads: str | None = field(default=None, metadata={"help": "head file written by `dreamir heads` (dream)"})
    objective: Literal["dream", "infonce", "replug"] = field(
        default="dream", metadata={"help": "dream (label-free), infonce (uses gold_id), replug (label-free)"}
    )
    replug_beta: float = 1.0
    llm: str = SMOLLM2
    num_heads: int | None = field(default=None, metadata={"help": "default: the head file's top_k"})
    injection_mode: Literal["preserve", "replace", "prior"] = "preserve"
    inject_query_rows: bool = False
    temperature: float = 0.05
    learn_temperature: bool = False
    max_document_tokens: int = 128
    max_target_tokens: int = 16
    max_examples: int | None = None
    train_max_length: int | None = field(
        default=None, metadata={"help": "retriever tokens per text while training (default: the model's own)"}
    )
    reference_step: bool = field(
        default=False, metadata={"help": "full-prompt step instead of the cached one"}
    )
    document_layout: DocumentLayout = field(default="sequential", metadata={"help": LAYOUT_HELP})
    precision: Precision = field(
        default="float32",
        metadata={"help": "bfloat16: the frozen LLM under bf16 autocast, injected heads in float32"},
    )
    retriever_precision: Literal["float32", "bfloat16"] = field(
        default="float32",
        metadata={
            "help": "bfloat16: the retriever's forward under bf16 autocast (float32 weights and optimiser)"
        },
    )
    document_cache: str | None = field(
        default=None,
        metadata={
            "help": "directory for the parallel layout's document keys/values (default: <output-dir>/document_cache)"
        },
    )
    threads: int | None = 2

    def __post_init__(self) -> None:
        at_least(self, 1, "num_heads", "max_document_tokens", "max_target_tokens", "max_examples", "threads")
        positive(self, "temperature", "replug_beta")


def load_retriever(args: ModelArguments) -> Retriever:
    """The retriever with the model's own settings, overridden where an argument asks."""
    path = resolve_model(args.retriever)
    overrides = {
        "pooling": args.pooling,
        "max_length": args.max_length,
        "num_layers": args.retriever_layers,
        "append_eos": args.append_eos,
        "lora": LoraSettings(r=args.lora_r, alpha=2 * args.lora_r, init_seed=args.lora_seed)
        if args.lora
        else None,
        "query_prefix": args.query_prefix or None,
        "document_prefix": args.document_prefix or None,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return Retriever.from_pretrained(path, dataclasses.replace(Retriever.read_config(path), **overrides))


def prepare_training_examples(
    path: str | Path, corpus: dict[str, Document], num_candidates: int, max_examples: int | None
) -> list[TrainingExample]:
    examples = read_training_file(path)[:max_examples]
    validate_against_corpus(examples, corpus, path)
    if any(not e.candidate_ids for e in examples):
        index = BM25Index.from_corpus(corpus)
        missing = [e for e in examples if not e.candidate_ids]
        mined = iter(mine_candidates(missing, index, num_candidates))
        examples = [e if e.candidate_ids else next(mined) for e in examples]
    return examples


def build_objective(retriever: Retriever, dream: DreamArguments) -> Objective:
    objective = _objective(retriever, dream)
    objective.train_max_length = dream.train_max_length
    return objective


def _objective(retriever: Retriever, dream: DreamArguments) -> Objective:
    temperature = {
        "temperature": dream.temperature,
        "learn_temperature": dream.learn_temperature,
        "retriever_precision": dream.retriever_precision,
    }
    if dream.objective == "infonce":
        return InfoNCELoss(retriever, **temperature)
    prompt = PromptSettings(
        max_document_tokens=dream.max_document_tokens,
        max_target_tokens=dream.max_target_tokens,
        inject_query_rows=dream.inject_query_rows,
        document_layout=dream.document_layout,
    )
    llm_options = {"prompt": prompt, "precision": dream.precision, "document_cache_dir": dream.document_cache}
    if dream.objective == "replug":
        llm = FrozenLLM.from_pretrained(dream.llm, **llm_options)
        return ReplugLoss(retriever, llm, beta=dream.replug_beta, **temperature)
    if dream.heads is None:
        raise ValueError("DREAM needs --heads (a head file from `dreamir heads`)")
    head_set = HeadSet.load(dream.heads)
    head_set.check_fits(dream.llm, dream.heads)  # before the LLM is loaded
    num_heads = dream.num_heads or int(head_set.settings.get("top_k", 16))
    llm = FrozenLLM.from_pretrained(
        dream.llm, heads=head_set.top(num_heads), mode=dream.injection_mode, **llm_options
    )
    return DreamLoss(retriever, llm, reuse_prefix=not dream.reference_step, **temperature)


def train_dream(model: ModelArguments, dream: DreamArguments, training: TrainingArguments) -> TrainingResult:
    set_threads(dream.threads)
    corpus = load_corpus(dream.corpus)
    examples = prepare_training_examples(dream.train, corpus, training.num_candidates, dream.max_examples)
    if dream.document_layout == "parallel" and dream.document_cache is None:
        # Candidates' keys and values rarely fit in memory (~1.5-3 MB each for SmolLM2): keep them on disk.
        dream = dataclasses.replace(dream, document_cache=str(Path(training.output_dir) / "document_cache"))
    objective = build_objective(load_retriever(model), dream)
    llm = getattr(objective, "llm", None)
    if isinstance(llm, FrozenLLM) and dream.document_layout == "parallel":
        cache_candidates(llm, examples, corpus, training.num_candidates, training.show_progress)
    run_settings = {"model": dataclasses.asdict(model), "objective": dataclasses.asdict(dream)}
    return Trainer(objective, examples, corpus, training, run_settings=run_settings).train()


def cache_candidates(
    llm: FrozenLLM,
    examples: Sequence[TrainingExample],
    corpus: dict[str, Document],
    num_candidates: int,
    show_progress: bool = True,
) -> None:
    """Encode every candidate the training run will read once, before the first step (parallel layout)."""
    ids = dict.fromkeys(i for e in examples for i in (e.candidate_ids or [])[:num_candidates])
    llm.documents.show_progress = show_progress
    stats = llm.cache_documents([(corpus[i].title, corpus[i].text) for i in ids])
    logger.info(
        "document cache: %d of %d candidates built, %.1f documents/s, %.0f bytes/document",
        stats.documents,
        len(ids),
        stats.documents_per_second,
        stats.bytes_per_document,
    )


# ---- evaluation ------------------------------------------------------------------------------------------
@dataclass
class EvaluationArguments:
    beir: str = field(metadata={"help": "BEIR-layout directory (corpus.jsonl, queries.jsonl, qrels/)"})
    model: str = field(default=MINILM, metadata={"help": "'bm25', a packaged name or a saved retriever"})
    split: str = "test"
    batch_size: int = 64
    out: str | None = field(default=None, metadata={"help": "write the metrics here as JSON"})
    threads: int | None = 2
    show_progress: bool = True

    def __post_init__(self) -> None:
        at_least(self, 1, "batch_size", "threads")


def evaluate_model(
    model: str, dataset: BeirDataset, batch_size: int = 64, show_progress: bool = True
) -> dict:
    if model == "bm25":
        return evaluate_bm25(dataset)
    retriever = Retriever.from_pretrained(resolve_model(model)).eval()
    return evaluate_encoder(
        dataset,
        lambda texts: check_finite_embeddings(
            retriever.encode_queries(texts, batch_size=batch_size, show_progress=show_progress),
            f"{model}: query embeddings",
        ),
        lambda texts: check_finite_embeddings(
            retriever.encode_documents(texts, batch_size=batch_size, show_progress=show_progress),
            f"{model}: document embeddings",
        ),
        similarity=retriever.config.similarity,
    )


def evaluate(args: EvaluationArguments) -> dict[str, float]:
    if args.out:
        check_output_file(args.out)  # before the slow evaluation, not after it
    set_threads(args.threads)
    metrics = evaluate_model(
        args.model, load_beir(args.beir, args.split), args.batch_size, args.show_progress
    )
    if args.out:
        write_json_atomic(args.out, metrics)
    return metrics


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))
