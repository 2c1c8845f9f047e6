"""The quickstart: `dreamir adapt` on SciFact's corpus (no SciFact query or label used in training), then
SciFact's test queries score BM25, the starting retriever, the adapted one, and BM25 fused with each of the two
(hybrid search, its default fusion).

Every stage writes its output atomically and is skipped when that output already exists, so an
interrupted quickstart picks up where it stopped (training resumes from its last checkpoint)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dreamir.adapt import AdaptArguments, adapt
from dreamir.artefacts import directory_sha256
from dreamir.data.beir import load_beir
from dreamir.evaluation import compute_metrics, format_results_table
from dreamir.io import write_json_atomic
from dreamir.options import at_least
from dreamir.search import fuse_runs
from dreamir.search.runs import read_trec_run, write_trec_run
from dreamir.stages import Stages
from dreamir.workflow import retrieval_run, set_threads

DEFAULT_SCIFACT = Path("../shared/data/beir/scifact")


def _adapt_option(name: str) -> Any:
    """The quickstart passes this option on to adapt: same default and help, stated once (there)."""
    spec = next(f for f in fields(AdaptArguments) if f.name == name)
    return field(default=spec.default, metadata=dict(spec.metadata))


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
    retriever: str = _adapt_option("retriever")
    llm: str = _adapt_option("llm")
    seed: int = _adapt_option("seed")
    threads: int | None = _adapt_option("threads")
    show_progress: bool = _adapt_option("show_progress")

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
    stages = Stages(say=_say)

    # Everything else is adapt's own default, so the quickstart shows what a user gets.
    shared = {f.name for f in fields(AdaptArguments)} & {f.name for f in fields(QuickstartArguments)}
    passed = {k: getattr(args, k) for k in shared - {"out", "beir"}}
    adapt_args = dataclasses.replace(AdaptArguments(corpus=str(beir), out=str(out / "adapt")), **passed)
    report = stages.timed(
        "adapt",
        lambda: adapt(adapt_args),
        f"adapting {args.retriever} to the corpus of {name} (its queries and labels are not read)",
    )

    dataset = load_beir(beir)
    systems = {"bm25": "bm25", "base": args.retriever, "adapted": report["model"]}
    runs = {}
    for system, model in systems.items():
        # Each system's top 100 per query is kept (a TREC run file), so the fused rows cost no encoding. A
        # model directory's run is named by its files' checksum: a model written anew (another --base-weight,
        # a retrained adapt) is evaluated anew instead of being scored with the old model's run.
        digest = f"-{directory_sha256(Path(model))[:12]}" if Path(model).is_dir() else ""
        path = out / "eval" / f"{name}-{system}{digest}.trec"
        stages.run(
            f"eval {system}",
            path,
            lambda model=model, path=path: write_trec_run(
                retrieval_run(model, dataset, show_progress=args.show_progress), path
            ),
            f"evaluating {system} on {name} ({len(dataset.queries)} test queries, {len(dataset.corpus)} docs)",
        )
        runs[system] = read_trec_run(path)
    # Hybrid rows: BM25 fused with each dense model as `dreamir eval --hybrid` fuses them by default.
    runs["bm25+base"] = fuse_runs(runs["bm25"], runs["base"])
    runs["bm25+adapted"] = fuse_runs(runs["bm25"], runs["adapted"])
    results = {name: {system: compute_metrics(dataset.qrels, run) for system, run in runs.items()}}
    write_json_atomic(out / "results.json", results)
    print(format_results_table(results), flush=True)
    _say("stage times this run: " + ", ".join(f"{k} {v:.0f} s" for k, v in stages.seconds.items()))
    _say(f"results: {out / 'results.json'}; adaptation report: {out / 'adapt' / 'report.md'}")
    return results
