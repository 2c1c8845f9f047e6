"""The command: every stage in order, each written atomically under ``OUT/work`` and skipped when its output
exists (the stages: the package's docstring, ``dreamir/adapt/__init__.py``)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from dreamir.adapt.arguments import AdaptArguments
from dreamir.adapt.averaging import average_checkpoint
from dreamir.adapt.examples import prepare_examples, read_derived
from dreamir.adapt.heads import select_heads_label_free
from dreamir.adapt.report import (
    plot_head_attention_before_after,
    render_report,
    search_comparison,
    validation_line,
)
from dreamir.adapt.training import build_trainer
from dreamir.adapt.validation import VALIDATION_METRIC, PseudoGoldValidator
from dreamir.artefacts import write_adapt_manifest
from dreamir.data.beir import read_corpus
from dreamir.data.corpus_examples import read_query_examples
from dreamir.data.training import read_training_file
from dreamir.io import atomic_path, read_log_rows, write_json_atomic, write_text_atomic
from dreamir.llm.frozen import FrozenLLM
from dreamir.plots import plot_training_curves
from dreamir.precision import describe_compute, machine_record
from dreamir.retriever import CONFIG_FILE
from dreamir.stages import Stages
from dreamir.trainer import TrainerCallback
from dreamir.workflow import set_threads


def _say(message: str) -> None:
    print(f"[dreamir adapt] {message}", flush=True)


def throughput(
    args: AdaptArguments, meta: dict, seconds: dict[str, float], rows: list[dict], steps_run: int
) -> dict[str, float]:
    """Passages the examples stage read per second (generation, for genq), and training's steps and
    candidates read by the LLM per second (validation included) over the steps this invocation ran."""
    rates = {}
    if seconds.get("examples"):
        rates["passages_per_s_examples"] = meta["passages_sampled"] / seconds["examples"]
    if seconds.get("training") and steps_run:
        per_query = [r["pool_size"] for r in rows[-steps_run:] if "pool_size" in r]
        candidates = sum(per_query) / len(per_query) if per_query else args.num_candidates
        rates["steps_per_s"] = steps_run / seconds["training"]
        rates["candidates_per_s"] = steps_run * args.batch_size * candidates / seconds["training"]
    return rates


def document_cache_record(args: AdaptArguments, llm: FrozenLLM) -> dict | None:
    """How the parallel layout's keys and values were kept while this invocation trained."""
    if args.document_layout != "parallel":
        return None
    stats = llm.documents.stats
    return {
        "built": stats.documents,
        "found": stats.found,
        "disk_gb": llm.documents.disk_bytes() / 1e9,
        "bound_gb": args.document_cache_gb or None,
        "evicted_shards": stats.evicted_shards,
    }


def kept_checkpoint(keep: str, start: float, last: float | None) -> Literal["last", "best"]:
    """Which checkpoint --keep writes: auto keeps the last one unless the validation ended below its start
    (``last`` is None when the last step logged no validation: a run from before the last step validated)."""
    if keep != "auto":
        return "last" if keep == "last" else "best"
    return "best" if last is not None and last < start else "last"


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
    if meta["train"] < meta["validation"]:
        _say(
            f"warning: fewer training examples ({meta['train']}) than held-out ones ({meta['validation']}): "
            "on a small corpus lower --validation-examples (e.g. to a fifth of the passages)"
        )

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

    llm = getattr(trainer.objective, "llm", None)
    # Before the head-attention picture reads candidates too: what training read.
    document_cache = document_cache_record(args, llm) if isinstance(llm, FrozenLLM) else None
    best = json.loads((train_dir / "best.json").read_text()) if (train_dir / "best.json").exists() else {}
    baseline = json.loads((train_dir / "validation_step0.json").read_text())
    rows = read_log_rows(result.log_file)
    by_step = {int(r["step"]): r[VALIDATION_METRIC] for r in rows if VALIDATION_METRIC in r}
    choice = kept_checkpoint(args.keep, baseline[VALIDATION_METRIC], by_step.get(result.steps))
    kept = result.final_dir if choice == "last" else train_dir / "best"
    # Replaces only a model an earlier run wrote there.
    with atomic_path(out / "model", replace_directory=(out / "model" / CONFIG_FILE).exists()) as tmp:
        if args.base_weight:
            _say(
                f"averaging the kept checkpoint's weights with {args.retriever}'s (base weight {args.base_weight})"
            )
            average_checkpoint(args, kept, tmp)
        else:
            shutil.copytree(kept, tmp)
    curve = plot_training_curves(
        {args.objective: result.log_file}, out / "curves.png", metrics=("loss", "p_gold", VALIDATION_METRIC)
    )
    head_picture = None
    if isinstance(llm, FrozenLLM) and llm.heads:
        head_picture = stages.run(
            "head attention",
            train_dir / "head_attention.png",
            lambda: plot_head_attention_before_after(args, llm, train, full_corpus, out / "model", train_dir),
            "measuring the injected heads' share of the source passage before and after training",
        )
    validator = next(c for c in trainer.callbacks if isinstance(c, PseudoGoldValidator))
    search = search_comparison(validator, corpus, train_dir, choice)
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
            "keep": args.keep,
            "kept": choice,
            "kept_step": result.steps if choice == "last" else best.get("step", 0),
            "by_step": by_step,
        },
        "steps": result.steps,
        "stage_seconds": stages.seconds,
        "throughput": throughput(args, meta, stages.seconds, rows, result.steps - result.resumed_from),
        "document_cache": document_cache,
        # The processor and the dtype every stage computed in (generation, LLM, retriever, validation).
        "machine": machine,
        "model": str(out / "model"),
        "curves": str(curve),
        "head_attention": str(head_picture) if head_picture else None,
        "search": search,
    }
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", render_report(report))
    write_adapt_manifest(out, args, corpus)
    _say(f"{validation_line(report['validation'])} -> {out / 'model'}")
    if search:
        found = ", ".join(f"{name} {m['success@10']:.3f}" for name, m in search["systems"].items())
        _say(f"held-out queries finding their passage in the top 10: {found}")
    return report
