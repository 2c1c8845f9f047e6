"""The steps the CLI and the quickstart chain together: each takes plain paths and settings, so every step
can be run alone from the command line and its output reused."""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig

from dreamir import precision as compute
from dreamir.arguments import (
    COMPRESS_DOCUMENT_TEMPLATE,
    COMPRESS_QUERY_TEMPLATE,
    DataArguments,
    HeadSelectionArguments,
    LLMArguments,
    ModelArguments,
    ObjectiveArguments,
    RuntimeArguments,
    SamplingArguments,
    TrainingArguments,
    field_defaults,
)
from dreamir.candidates import BM25Index, mine_candidates
from dreamir.data.beir import BeirDataset, Document, read_corpus
from dreamir.data.training import TrainingExample, read_training_file, validate_against_corpus
from dreamir.evaluation import Run, compute_metrics, encoder_run
from dreamir.guards import check_finite_embeddings
from dreamir.io import check_output_file
from dreamir.llm.frozen import FrozenLLM
from dreamir.llm.heads import CalibrationExample, HeadSet, random_heads, rank_heads, score_heads
from dreamir.llm.prompt import PromptSettings
from dreamir.models import resolve_model
from dreamir.objectives import Objective, objective_class, options_classes
from dreamir.options import gigabytes, split_template
from dreamir.retriever import LoraSettings, Retriever, RetrieverConfig
from dreamir.search import bm25_run
from dreamir.trainer import Trainer, TrainerCallback, TrainingResult

logger = logging.getLogger(__name__)


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def load_corpus(path: str | Path) -> dict[str, Document]:
    """A BEIR directory or a corpus.jsonl file."""
    path = Path(path)
    return read_corpus(path / "corpus.jsonl" if path.is_dir() else path)


# ---- head selection --------------------------------------------------------------------------------------
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
    config = dataclasses.replace(Retriever.read_config(path), **overrides)
    if args.compress_tokens is not None:
        config = dataclasses.replace(config, compress_tokens=args.compress_tokens)
    return Retriever.from_pretrained(path, dataclasses.replace(config, **_templates(args, config)))


def _templates(args: ModelArguments, config: RetrieverConfig) -> dict[str, str]:
    """Prefixes and suffixes from --query-template / --document-template; a model that becomes a
    compress-pooling one with neither template nor prefix nor suffix of its own gets AutoRegEmbed's."""
    settings: dict[str, str] = {}
    defaults = {"query": COMPRESS_QUERY_TEMPLATE, "document": COMPRESS_DOCUMENT_TEMPLATE}
    for kind, default in defaults.items():
        template = getattr(args, f"{kind}_template")
        own = getattr(config, f"{kind}_prefix") or getattr(config, f"{kind}_suffix")
        if not template and config.pooling == "compress" and not own:
            template = default
        if template:
            prefix, suffix = split_template(template, f"--{kind}-template")
            settings.update({f"{kind}_prefix": prefix, f"{kind}_suffix": suffix})
    return settings


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


def build_objective(
    retriever: Retriever,
    objective: ObjectiveArguments,
    llm: LLMArguments | None = None,
    options: Sequence[Any] = (),
) -> Objective:
    """The registered objective ``objective.objective``, built from its own options (the instance of its
    options class among ``options``, else that class's defaults); the frozen LLM is loaded only for the
    objectives that read it."""
    cls = objective_class(objective.objective)
    own = None
    if cls.options_class is not None:
        own = next((o for o in options if isinstance(o, cls.options_class)), None) or cls.options_class()
    built = cls.from_options(
        retriever,
        own,
        _llm_loader(llm or LLMArguments()),
        temperature=objective.temperature,
        learn_temperature=objective.learn_temperature,
        retriever_precision=objective.retriever_precision,
    )
    built.train_max_length = objective.train_max_length
    return built


def _llm_loader(args: LLMArguments):
    def load(heads_file: str | None, num_heads: int | None, mode: str) -> FrozenLLM:
        prompt = PromptSettings(
            max_document_tokens=args.max_document_tokens,
            max_target_tokens=args.max_target_tokens,
            inject_query_rows=args.inject_query_rows,
            document_layout=args.document_layout,
            show_query=args.show_query,
            **({"instruction": args.prompt_instruction} if args.prompt_instruction else {}),
        )
        options = {
            "prompt": prompt,
            "precision": args.precision,
            "document_cache_dir": args.document_cache,
            "document_cache_bytes": gigabytes(args.document_cache_gb),
        }
        if heads_file is None:
            return FrozenLLM.from_pretrained(args.llm, **options)
        head_set = HeadSet.load(heads_file)
        head_set.check_fits(args.llm, heads_file)  # before the LLM is loaded
        count = num_heads or int(head_set.settings.get("top_k", 16))
        return FrozenLLM.from_pretrained(args.llm, heads=head_set.top(count), mode=mode, **options)

    return load


def objective_settings(
    data: DataArguments,
    objective: ObjectiveArguments,
    llm: LLMArguments,
    options: Sequence[Any],
    runtime: RuntimeArguments,
) -> dict[str, Any]:
    """Everything that defines the objective's side of a run, as one flat record (checkpoints compare it
    on resume): every objective's options, with the defaults where ``options`` has none."""
    given = {type(o): o for o in (data, objective, llm, *options, runtime)}
    record: dict[str, Any] = {}
    for part in objective_record_classes():
        record.update(dataclasses.asdict(given.get(part) or part()))
    # The dtypes "auto" resolves to here: a run resumed on a processor of another kind is refused instead
    # of silently continuing in another dtype.
    for name in ("precision", "retriever_precision"):
        record[name] = compute.resolve(record[name])
    return record


def objective_record_classes() -> tuple[type, ...]:
    """The argument classes whose fields make up a run's objective record, in the record's order."""
    return (DataArguments, ObjectiveArguments, LLMArguments, *options_classes(), RuntimeArguments)


def train_retriever(
    model: ModelArguments,
    data: DataArguments,
    objective: ObjectiveArguments,
    training: TrainingArguments,
    *,
    sampling: SamplingArguments | None = None,
    llm: LLMArguments | None = None,
    options: Sequence[Any] = (),
    runtime: RuntimeArguments | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> TrainingResult:
    """Train the retriever with any registered objective; ``options``: objectives' own option instances;
    ``callbacks``: hooks after every step (e.g. trainer.RetrieverSnapshots)."""
    sampling = sampling or SamplingArguments()
    llm = llm or LLMArguments()
    runtime = runtime or RuntimeArguments()
    set_threads(runtime.threads)
    corpus = load_corpus(data.corpus)
    examples = prepare_training_examples(data.train, corpus, sampling.num_candidates, data.max_examples)
    if llm.document_layout == "parallel" and llm.document_cache is None:
        # Candidates' keys and values rarely fit in memory (~1.5-3 MB each for SmolLM2): keep them on disk.
        llm = dataclasses.replace(llm, document_cache=str(Path(training.output_dir) / "document_cache"))
    built = build_objective(load_retriever(model), objective, llm, options)
    frozen = getattr(built, "llm", None)
    if isinstance(frozen, FrozenLLM) and llm.document_layout == "parallel":
        cache_candidates(frozen, examples, corpus, sampling.num_candidates, training.show_progress)
    run_settings = {
        "model": dataclasses.asdict(model),
        "objective": objective_settings(data, objective, llm, options, runtime),
    }
    # A checkpoint written before an option existed is resumed as if that option had its default.
    defaults = {
        "model": field_defaults(ModelArguments),
        "objective": field_defaults(*objective_record_classes()),
    }
    trainer = Trainer(
        built,
        examples,
        corpus,
        training,
        sampling=sampling,
        run_settings=run_settings,
        run_setting_defaults=defaults,
        callbacks=callbacks,
    )
    return trainer.train()


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
def evaluate_model(
    model: str, dataset: BeirDataset, batch_size: int = 64, show_progress: bool = True
) -> dict:
    """``model``'s (or BM25's) nDCG@10, Recall@100 and MRR@10 on ``dataset``."""
    return compute_metrics(dataset.qrels, retrieval_run(model, dataset, batch_size, show_progress))


def retrieval_run(
    model: str, dataset: BeirDataset, batch_size: int = 64, show_progress: bool = True, k: int = 100
) -> Run:
    """``model``'s (or BM25's, for "bm25") top ``k`` for every query of ``dataset``."""
    if model == "bm25":
        return bm25_run(dataset, k=k)
    retriever = Retriever.from_pretrained(resolve_model(model)).eval()
    return encoder_run(
        dataset,
        lambda texts: check_finite_embeddings(
            retriever.encode_queries(texts, batch_size=batch_size, show_progress=show_progress),
            f"{model}: query embeddings",
        ),
        lambda texts: check_finite_embeddings(
            retriever.encode_documents(texts, batch_size=batch_size, show_progress=show_progress),
            f"{model}: document embeddings",
        ),
        k=k,
        similarity=retriever.config.similarity,
    )


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))
