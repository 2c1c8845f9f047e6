"""Stage 4's report: report.md from report.json's record, the injected heads' attention before and after
training, and how BM25, the base, the adapted model and hybrid search find the held-out examples' passages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from dreamir.adapt.arguments import AdaptArguments
from dreamir.adapt.validation import BEST_ENCODINGS, LAST_ENCODINGS, START_ENCODINGS, PseudoGoldValidator
from dreamir.arguments import ModelArguments
from dreamir.data.beir import Document
from dreamir.data.training import TrainingExample
from dreamir.llm.frozen import FrozenLLM
from dreamir.precision import describe_compute
from dreamir.retriever import Retriever
from dreamir.search import BM25Index, ExactIndex, Hits, fuse
from dreamir.search.fusion import DEFAULT_FUSION, default_weight
from dreamir.workflow import load_retriever

# Hits per query each system returns before fusing (as `dreamir eval --hybrid`); success is read at 10.
SEARCH_DEPTH = 100
SEARCH_CUTOFF = 10


def plot_head_attention_before_after(
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


def search_comparison(
    validator: PseudoGoldValidator,
    corpus: Mapping[str, Document],
    train_dir: Path,
    keep: Literal["last", "best"],
) -> dict | None:
    """success@10 and MRR@10 of the held-out generated queries for their own passage among the validation's
    searched passages, for BM25, the starting retriever, the kept one (``keep``) and BM25 fused with each
    (hybrid search's default fusion): label-free, and from the encodings the validation already made. Only
    the examples whose pseudo-gold is the corpus passage itself count (not ict's, nor a title query's untitled
    passage, which stand in for their source for that query alone); None when there are none or the
    encodings are absent (a run from before they were kept)."""
    rows = [
        i
        for i in range(len(validator.queries))[validator.generated]
        if validator.gold_texts[i] == validator.doc_texts[validator.gold_rows[i]]
    ]
    start = train_dir / START_ENCODINGS
    # No best encodings: nothing beat the start, so the starting retriever is the best checkpoint.
    adapted = train_dir / LAST_ENCODINGS if keep == "last" else train_dir / BEST_ENCODINGS
    if keep == "best" and not adapted.is_file():
        adapted = start
    if not rows or not start.is_file() or not adapted.is_file():
        return None
    encodings = {"base": np.load(start), "adapted": np.load(adapted)}
    queries = [validator.queries[i] for i in rows]
    gold = [validator.doc_ids[validator.gold_rows[i]] for i in rows]
    hits: dict[str, Hits] = {
        "bm25": BM25Index.from_corpus({d: corpus[d] for d in validator.doc_ids}).search(queries, SEARCH_DEPTH)
    }
    for name, arrays in encodings.items():
        index = ExactIndex(validator.doc_ids, arrays["docs"])
        hits[name] = index.search_vectors(arrays["queries"][rows], SEARCH_DEPTH)
    for name in encodings:
        hits[f"bm25+{name}"] = fuse(hits["bm25"], hits[name], SEARCH_DEPTH)
    return {
        "queries": len(queries),
        "passages": len(validator.doc_ids),
        "fusion": f"{DEFAULT_FUSION}, dense weight {default_weight(DEFAULT_FUSION)}",
        "systems": {name: _success(found, gold) for name, found in hits.items()},
    }


def _success(hits: Hits, gold: Sequence[str]) -> dict[str, float]:
    ranks = [
        next((r for r, (doc_id, _) in enumerate(ranked[:SEARCH_CUTOFF], 1) if doc_id == g), None)
        for ranked, g in zip(hits, gold, strict=True)
    ]
    return {
        f"success@{SEARCH_CUTOFF}": sum(r is not None for r in ranks) / len(ranks),
        f"mrr@{SEARCH_CUTOFF}": sum(1 / r for r in ranks if r) / len(ranks),
    }


def _throughput_line(rates: dict[str, float]) -> str:
    parts = []
    if "passages_per_s_examples" in rates:
        parts.append(f"examples {rates['passages_per_s_examples']:.2f} passages/s")
    if "steps_per_s" in rates:
        parts.append(
            f"training {rates['steps_per_s']:.3f} steps/s, {rates['candidates_per_s']:.1f} candidates read/s "
            "(validation included)"
        )
    return ", ".join(parts) or "nothing run this time (every stage reused)"


def _averaging(settings: dict) -> str:
    weight = settings.get("base_weight") or 0.0
    if not weight:
        return ""
    return f" (the kept checkpoint's weights averaged with {settings['retriever']}'s, base weight {weight:g})"


def _document_cache_line(cache: dict | None) -> list[str]:
    if not cache:
        return []
    read = f"{cache['built']} candidates read by the LLM, {cache['found']} found already read"
    if cache["bound_gb"] is None:
        return [
            f"- document cache (training): {read}; kept in memory only (--document-cache-gb keeps them on disk)"
        ]
    return [
        f"- document cache (training): {read}; {cache['disk_gb']:.2f} GB on disk (bound {cache['bound_gb']:g} GB, "
        f"{cache['evicted_shards']} shards dropped under it)"
    ]


def validation_line(validation: dict) -> str:
    """The label-free validation's start and best, which checkpoint was kept and why (a report from before
    --keep existed kept the best)."""
    line = (
        f"validation success@10: {validation['start']:.3f} at the start, best {validation['best']:.3f} at step "
        f"{validation['best_step']}"
    )
    by_step = {int(step): value for step, value in validation["by_step"].items()}  # JSON keys are text
    rule, kept = validation.get("keep", "best"), validation.get("kept", "best")
    if rule == "best":
        return line + " (kept)"
    last = by_step.get(max(by_step, default=0), validation["start"])
    if kept == "best":  # auto, after a fall
        return line + (
            f"; it ended below its start ({last:.3f}), so its best is kept rather than the last checkpoint "
            "(--keep last writes the last)"
        )
    line += f" (advice only); kept: the last checkpoint, step {validation['kept_step']}"
    if last < validation["start"]:
        line += (
            f". Warning: the validation ended below its start ({last:.3f}): measure the model on a few labelled "
            "queries, or keep the validation's best (--keep best)"
        )
    return line


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
        f"- {validation_line(v)} ({v['metric']}: held-out examples whose own passage ranks in the top 10 of "
        "the corpus)",
        "- by step: " + ", ".join(f"{s}: {x:.3f}" for s, x in sorted(v["by_step"].items())),
        "- stage seconds: " + ", ".join(f"{k} {s:.0f}" for k, s in report["stage_seconds"].items()),
        "- throughput: " + _throughput_line(report.get("throughput") or {}),
        *_document_cache_line(report.get("document_cache")),
        f"- compute: {describe_compute(report['machine'])}",
        f"- model: `{report['model']}`{_averaging(report['settings'])}; curves: `{report['curves']}`",
    ]
    search = report.get("search")
    if search:
        lines += [
            "",
            f"## Search: {search['queries']} held-out generated queries, each looking for its own passage among "
            f"{search['passages']}",
            "",
            "| system | success@10 | MRR@10 |",
            "|---|---|---|",
            *(
                f"| {name} | {m['success@10']:.3f} | {m['mrr@10']:.3f} |"
                for name, m in search["systems"].items()
            ),
            "",
            f"bm25+X: BM25 fused with X ({search['fusion']}: `dreamir index --hybrid`). Label-free, and "
            "on the task adapt trains on: a guide to which search to deploy, not a labelled evaluation."
            + (
                " adapted: the kept checkpoint before averaging."
                if report["settings"].get("base_weight")
                else ""
            ),
        ]
    return "\n".join([*lines, ""])
