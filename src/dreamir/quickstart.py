"""The quickstart: Factbook data -> BM25 candidates -> head selection on SmolLM2 -> DREAM training of
all-MiniLM-L6-v2 -> evaluation of BM25, the starting retriever and the trained one.

Every stage writes its output atomically and is skipped when that output already exists, so an
interrupted quickstart picks up where it stopped (training resumes from its last checkpoint)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from dreamir.data.beir import load_beir
from dreamir.data.factbook import build_factbook
from dreamir.data.training import write_training_file
from dreamir.evaluation import format_results_table
from dreamir.io import write_json_atomic
from dreamir.models import MINILM, SMOLLM2
from dreamir.options import at_least, positive
from dreamir.plots import plot_training_curves
from dreamir.trainer import TrainingArguments
from dreamir.workflow import (
    DreamArguments,
    HeadSelectionArguments,
    ModelArguments,
    evaluate_model,
    load_corpus,
    prepare_training_examples,
    read_json,
    select_heads,
    set_threads,
    train_dream,
)

logger = logging.getLogger(__name__)
DEFAULT_SCIFACT = Path("../shared/data/beir/scifact")


@dataclass
class QuickstartArguments:
    out: str = field(
        default="runs/quickstart",
        metadata={"help": "working directory; finished stages are reused (delete it to start over)"},
    )
    beir: str | None = field(
        default=None,
        metadata={"help": f"extra BEIR dataset to evaluate on (default: {DEFAULT_SCIFACT} if present)"},
    )
    retriever: str = MINILM
    llm: str = SMOLLM2
    num_heads: int = 16
    num_candidates: int = 8
    calibration_examples: int = 32
    max_steps: int = 100
    batch_size: int = 2
    learning_rate: float = 2e-5
    temperature: float = 0.05
    seed: int = 0
    threads: int = 2
    show_progress: bool = True

    def __post_init__(self) -> None:
        at_least(self, 1, "num_heads", "num_candidates", "calibration_examples", "max_steps", "batch_size")
        at_least(self, 1, "threads")
        positive(self, "learning_rate", "temperature")


def _say(message: str) -> None:
    print(f"[dreamir] {message}", flush=True)


def run_quickstart(args: QuickstartArguments) -> dict[str, dict[str, dict[str, float]]]:
    set_threads(args.threads)
    out = Path(args.out)
    data_dir = out / "factbook"
    if not (data_dir / "meta.json").exists():
        _say("building the Factbook retrieval task")
        paths = build_factbook(data_dir, seed=args.seed)
        _say(
            f"{paths.num_passages} passages, {paths.num_train} training and {paths.num_eval} held-out questions"
        )

    corpus = load_corpus(data_dir)
    train_file = out / "train_candidates.jsonl"
    if not train_file.exists():
        _say(f"mining BM25 top-{args.num_candidates} candidates (the gold passage is not forced in)")
        needed = args.max_steps * args.batch_size
        examples = prepare_training_examples(data_dir / "train.jsonl", corpus, args.num_candidates, needed)
        write_training_file(train_file, examples)

    heads_file = out / "heads.json"
    if not heads_file.exists():
        _say(
            f"selecting query-focused heads of {args.llm} on {args.calibration_examples} calibration questions"
        )
        heads = select_heads(
            HeadSelectionArguments(
                calibration=str(data_dir / "calibration.jsonl"),
                corpus=str(data_dir),
                out=str(heads_file),
                llm=args.llm,
                top_k=args.num_heads,
                num_candidates=args.num_candidates,
                max_examples=args.calibration_examples,
                seed=args.seed,
                show_progress=args.show_progress,
            )
        )
        _say(f"top heads (layer, head): {heads.top(args.num_heads)}")

    train_dir = out / "dream"
    if not (train_dir / "final" / "modules.json").exists():
        _say(f"training {args.retriever} with DREAM for {args.max_steps} steps")
        train_dream(
            ModelArguments(retriever=args.retriever),
            DreamArguments(
                train=str(train_file),
                corpus=str(data_dir),
                heads=str(heads_file),
                llm=args.llm,
                num_heads=args.num_heads,
                temperature=args.temperature,
                threads=args.threads,
            ),
            TrainingArguments(
                output_dir=str(train_dir),
                max_steps=args.max_steps,
                batch_size=args.batch_size,
                learning_rate=args.learning_rate,
                num_candidates=args.num_candidates,
                seed=args.seed,
                save_steps=max(args.max_steps // 5, 1),
                show_progress=args.show_progress,
            ),
        )

    curve = plot_training_curves({"dream": train_dir / "log.jsonl"}, out / "training_curves.png")
    _say(f"training curves: {curve}")

    datasets = {"factbook": data_dir}
    beir = Path(args.beir) if args.beir else DEFAULT_SCIFACT
    if beir.exists():
        datasets[beir.name if args.beir else "scifact"] = beir
    elif args.beir:
        raise FileNotFoundError(f"--beir {beir}: no such directory")
    else:
        _say(f"{DEFAULT_SCIFACT} not found: evaluating on Factbook only")
    systems = {"bm25": "bm25", "base": args.retriever, "dream": str(train_dir / "final")}
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, directory in datasets.items():
        dataset = load_beir(directory)
        results[name] = {}
        for system, model in systems.items():
            cached = out / "eval" / f"{name}-{system}.json"
            if not cached.exists():
                _say(
                    f"evaluating {system} on {name} ({len(dataset.queries)} queries, {len(dataset.corpus)} docs)"
                )
                write_json_atomic(cached, evaluate_model(model, dataset, show_progress=args.show_progress))
            results[name][system] = read_json(cached)
    write_json_atomic(out / "results.json", results)
    print(format_results_table(results), flush=True)
    _say(f"results written to {out / 'results.json'}")
    return results
