"""Stage 3, training: the retriever, the objective and its frozen LLM, and the trainer with the validation
(and refresh) callbacks."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

from dreamir.adapt.arguments import AdaptArguments, run_setting_defaults, run_settings
from dreamir.adapt.candidates import DenseCandidateRefresher
from dreamir.adapt.validation import PseudoGoldValidator
from dreamir.arguments import LLMArguments, ModelArguments, ObjectiveArguments, SamplingArguments
from dreamir.data.beir import Document
from dreamir.data.training import TrainingExample
from dreamir.llm.prompt import QUERY_TARGET_INSTRUCTION
from dreamir.objectives import DreamOptions, objective_class
from dreamir.trainer import Trainer, TrainerCallback, TrainingArguments
from dreamir.workflow import build_objective, load_retriever


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
    if args.target_text == "query":
        train = [dataclasses.replace(example, target=example.query) for example in train]
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
            # Parallel layout: keys and values are built for the step that reads them (not ahead for unread
            # examples), in memory, and on disk within --document-cache-gb.
            document_layout=args.document_layout,
            show_query=args.target_text != "query",
            prompt_instruction=QUERY_TARGET_INSTRUCTION if args.target_text == "query" else None,
            document_cache=str(work / "document_cache") if args.document_cache_gb else None,
            document_cache_gb=args.document_cache_gb or None,
        ),
        [
            DreamOptions(
                heads=str(heads_file),
                num_heads=args.num_heads,
                dream_candidates=args.dream_candidates,
                anchor_weight=args.anchor_weight,
                dream_target=args.dream_target,
                proximal_step=args.proximal_step,
            )
        ],
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
        run_settings=run_settings(args),
        run_setting_defaults=run_setting_defaults(args),
        callbacks=callbacks,
    )
