"""mteb's retrieval evaluator against dreamir's on SciFact with the base all-MiniLM-L6-v2 (goal: every
metric within 1e-4).

mteb runs offline over the local BEIR directory (its SciFact task, data read from the directory), with the
retriever behind mteb's encoder protocol: mteb builds the texts, asks for query and document embeddings,
searches and scores; dreamir searches the same embeddings exactly and scores with pytrec_eval. The corpus
embeddings come from the cache search_speed.py fills (runs/embeddings/), looked up by text; anything not
cached is encoded. One thread. Writes results/mteb_agreement.json.

    python benchmarks/mteb_agreement.py [--quick]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import datetime as dt
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scifact_embeddings import ROOT, SCIFACT, corpus_embeddings, subset

from dreamir.data.beir import load_beir
from dreamir.indexing import evaluate_index
from dreamir.io import write_json_atomic
from dreamir.models import MINILM, resolve_model
from dreamir.mteb_bridge import RetrieverEncoder, evaluate_with_mteb
from dreamir.progress import configure_progress
from dreamir.retriever import Retriever
from dreamir.search import ExactIndex


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--beir", default=str(SCIFACT))
    parser.add_argument("--model", default=MINILM)
    parser.add_argument("--quick", action="store_true", help="600 documents, 50 queries")
    parser.add_argument("--out", default=None, help="default: results/mteb_agreement.json (--quick: _quick)")
    args = parser.parse_args()
    configure_progress(True)
    torch.set_num_threads(1)
    dataset = load_beir(args.beir, "test")
    if args.quick:
        dataset = subset(dataset, 600, 50)
    retriever = Retriever.from_pretrained(resolve_model(args.model)).eval()
    doc_embeddings, _ = corpus_embeddings(retriever, args.model, dataset, dataset.name)
    by_text = {doc.full_text: row for row, doc in enumerate(dataset.corpus.values())}
    misses = []

    def encode_queries(texts: list[str]) -> np.ndarray:
        return retriever.encode_queries(texts, show_progress=False)

    def encode_documents(texts: list[str]) -> np.ndarray:
        rows = [by_text.get(text) for text in texts]
        missing = [text for text, row in zip(texts, rows, strict=True) if row is None]
        misses.extend(missing)
        fresh = iter(retriever.encode_documents(missing, show_progress=False) if missing else [])
        return np.stack([doc_embeddings[row] if row is not None else next(fresh) for row in rows])

    started = time.perf_counter()
    ours, _ = evaluate_index(
        dataset, ExactIndex(list(dataset.corpus), doc_embeddings, encode_queries, retriever.config.similarity)
    )
    ours_seconds = time.perf_counter() - started
    encoder = RetrieverEncoder.for_retriever(args.model, retriever, encode_queries, encode_documents)
    started = time.perf_counter()
    work = ROOT / "runs" / "mteb_agreement" / dataset.name
    evaluation = evaluate_with_mteb(encoder, dataset, dataset.name, work, "test", show_progress=False)
    theirs = evaluation.metrics
    mteb_seconds = time.perf_counter() - started
    differences = {metric: abs(theirs[metric] - ours[metric]) for metric in ours}
    import mteb

    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, 1 thread used",
        "mteb": mteb.__version__,
        "dataset": dataset.name,
        "mteb_task": evaluation.task,
        "mteb_result_file": str(evaluation.result_file.relative_to(ROOT)) if evaluation.result_file else None,
        "model": args.model,
        "queries": len(dataset.queries),
        "documents": len(dataset.corpus),
        "dreamir": ours,
        "mteb_metrics": theirs,
        "abs_difference": differences,
        "within_1e-4": all(d <= 1e-4 for d in differences.values()),
        "documents_not_in_the_cache": len(misses),
        "seconds": {"dreamir": ours_seconds, "mteb": mteb_seconds},
    }
    out = Path(
        args.out or ROOT / "results" / ("mteb_agreement_quick.json" if args.quick else "mteb_agreement.json")
    )
    write_json_atomic(out, result)
    for metric in ours:
        print(
            f"{metric}: dreamir {ours[metric]:.6f}, mteb {theirs[metric]:.6f}, |difference| {differences[metric]:.2e}"
        )
    print(
        f"within 1e-4: {result['within_1e-4']}; mteb {mteb_seconds:.1f} s, dreamir {ours_seconds:.1f} s -> {out}"
    )


if __name__ == "__main__":
    main()
