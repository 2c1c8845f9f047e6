"""The quickstart: `dreamir adapt` on SciFact's corpus (no SciFact query or label used in training), then
SciFact's test queries score BM25, the starting retriever and the adapted one.

Every stage writes its output atomically and is skipped when that output already exists, so an
interrupted quickstart picks up where it stopped (training resumes from its last checkpoint)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from dreamir.adapt import AdaptArguments, adapt
from dreamir.data.beir import load_beir
from dreamir.evaluation import format_results_table
from dreamir.io import write_json_atomic
from dreamir.models import MINILM, SMOLLM2
from dreamir.options import at_least
from dreamir.workflow import evaluate_model, read_json, set_threads

DEFAULT_SCIFACT = Path("../shared/data/beir/scifact")


@dataclass
class QuickstartArguments:
    out: str = field(
        default="runs/quickstart",
        metadata={"help": "working directory; finished stages are reused (delete it to start over)"},
    )
    beir: str = field(
        default=str(DEFAULT_SCIFACT),
        metadata={"help": "BEIR directory: adapt to its corpus, evaluate on its test queries"},
    )
    retriever: str = field(
        default=MINILM, metadata={"help": "the retriever to adapt (packaged name or directory)"}
    )
    llm: str = field(default=SMOLLM2, metadata={"help": "the frozen LLM that teaches it"})
    seed: int = field(default=0, metadata={"help": "seed of example sampling and training"})
    threads: int = field(default=2, metadata={"help": "CPU threads"})
    show_progress: bool = field(default=True, metadata={"help": "progress bars (plain lines in a log)"})

    def __post_init__(self) -> None:
        at_least(self, 1, "threads")


def _say(message: str) -> None:
    print(f"[dreamir] {message}", flush=True)


def run_quickstart(args: QuickstartArguments) -> dict[str, dict[str, dict[str, float]]]:
    set_threads(args.threads)
    out = Path(args.out)
    beir = Path(args.beir)
    if not (beir / "corpus.jsonl").exists():
        raise FileNotFoundError(f"--beir {beir}: no corpus.jsonl there")
    name = beir.name
    timings: dict[str, float] = {}

    started = time.perf_counter()
    _say(f"adapting {args.retriever} to the corpus of {name} (its queries and labels are not read)")
    # Everything else is adapt's own default, so the quickstart shows what a user gets.
    shared = {f.name for f in fields(AdaptArguments)} & {f.name for f in fields(QuickstartArguments)}
    adapt_args = AdaptArguments(
        corpus=str(beir), out=str(out / "adapt"), **{k: getattr(args, k) for k in shared if k != "out"}
    )
    report = adapt(adapt_args)
    timings["adapt"] = time.perf_counter() - started
    _say(f"stage adapt: {timings['adapt']:.0f} s")

    dataset = load_beir(beir)
    systems = {"bm25": "bm25", "base": args.retriever, "adapted": report["model"]}
    results: dict[str, dict[str, dict[str, float]]] = {name: {}}
    for system, model in systems.items():
        cached = out / "eval" / f"{name}-{system}.json"
        if not cached.exists():
            started = time.perf_counter()
            _say(
                f"evaluating {system} on {name} ({len(dataset.queries)} test queries, {len(dataset.corpus)} docs)"
            )
            write_json_atomic(cached, evaluate_model(model, dataset, show_progress=args.show_progress))
            timings[f"eval {system}"] = time.perf_counter() - started
            _say(f"stage eval {system}: {timings[f'eval {system}']:.0f} s")
        results[name][system] = read_json(cached)
    write_json_atomic(out / "results.json", results)
    print(format_results_table(results), flush=True)
    _say("stage times this run: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    _say(f"results: {out / 'results.json'}; adaptation report: {out / 'adapt' / 'report.md'}")
    return results
