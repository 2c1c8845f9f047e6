"""Search quality and speed on SciFact with the base all-MiniLM-L6-v2: exact (numpy) vs FAISS flat vs FAISS
HNSW, in one process.

Checks what the search commands promise: a flat FAISS index, saved and loaded as ``dreamir search`` does
(queries encoded by the model named in the index), returns the same top-10 ids as exact search for every
test query; HNSW's recall@10 against exact search (goal >= 0.99) and its query speedup. Prints the figures
and ratios, writes results/search_speed.json. One thread (torch and FAISS/BLAS), as measured in docs/experiments.md.

    python benchmarks/search_speed.py            # SciFact, 5,183 documents, 300 test queries
    python benchmarks/search_speed.py --quick    # 600 documents, 50 queries (a smoke run)
"""

from __future__ import annotations

import os

# Before numpy/FAISS load their thread pools.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import datetime as dt
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scifact_embeddings import ROOT, SCIFACT, corpus_embeddings, subset

from dreamir.data.beir import load_beir
from dreamir.evaluation import compute_metrics
from dreamir.indexing import open_index
from dreamir.io import write_json_atomic
from dreamir.models import MINILM, resolve_model
from dreamir.progress import configure_progress
from dreamir.retriever import Retriever
from dreamir.search import ExactIndex, FaissIndex


def timed(function, repeats: int) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls (the least disturbed on a shared machine) and the last result."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return min(times), result


def per_query_latency(index, queries: np.ndarray, k: int, repeats: int) -> float:
    """Median seconds of one single-query search (what an interactive `dreamir search` pays)."""
    samples = []
    for _ in range(repeats):
        for row in queries:
            started = time.perf_counter()
            index.search_vectors(row[None], k)
            samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--beir", default=str(SCIFACT))
    parser.add_argument("--model", default=MINILM)
    parser.add_argument("--quick", action="store_true", help="600 documents, 50 queries")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="default: results/search_speed.json (--quick: _quick)")
    args = parser.parse_args()
    configure_progress(True)  # a bar on a terminal, periodic lines in a log
    torch.set_num_threads(1)
    import faiss

    faiss.omp_set_num_threads(1)
    dataset = load_beir(args.beir, "test")
    if args.quick:
        dataset = subset(dataset, 600, 50)
    name = dataset.name
    retriever = Retriever.from_pretrained(resolve_model(args.model)).eval()
    doc_ids = list(dataset.corpus)
    doc_embeddings, encode_seconds = corpus_embeddings(retriever, args.model, dataset, name)
    query_ids = list(dataset.queries)
    query_texts = [dataset.queries[q] for q in query_ids]
    query_embeddings = retriever.encode_queries(query_texts, show_progress=False)
    print(f"{name}: {len(doc_ids)} documents, {len(query_ids)} queries, k={args.k}, 1 thread", flush=True)

    exact = ExactIndex(doc_ids, doc_embeddings)
    exact_batch, exact_hits = timed(lambda: exact.search_vectors(query_embeddings, args.k), args.repeats)
    exact_top = [[d for d, _ in ranked] for ranked in exact_hits]

    flat_build, flat = timed(lambda: FaissIndex(doc_ids, doc_embeddings, faiss_kind="flat"), 1)
    work = ROOT / "runs" / "search_speed"
    titles = [doc.title for doc in dataset.corpus.values()]
    flat.save(  # the benchmark's own scratch directory: also over one from before manifests
        work / f"{name}-flat",
        {"model": args.model, "model_path": str(resolve_model(args.model))},
        titles,
        overwrite=True,
    )
    # What `dreamir search` does: load the index and encode the query texts with the model it names.
    loaded = open_index(work / f"{name}-flat")
    flat_batch, _ = timed(lambda: flat.search_vectors(query_embeddings, args.k), args.repeats)
    flat_top = [[d for d, _ in ranked] for ranked in loaded.search(query_texts, args.k)]
    flat_equal = sum(a == b for a, b in zip(flat_top, exact_top, strict=True))

    hnsw_build, hnsw = timed(lambda: FaissIndex(doc_ids, doc_embeddings, faiss_kind="hnsw"), 1)
    hnsw_batch, hnsw_hits = timed(lambda: hnsw.search_vectors(query_embeddings, args.k), args.repeats)
    hnsw_recall = float(
        np.mean([len({d for d, _ in h} & set(e)) / len(e) for h, e in zip(hnsw_hits, exact_top, strict=True)])
    )
    exact_latency = per_query_latency(exact, query_embeddings, args.k, args.repeats)
    flat_latency = per_query_latency(flat, query_embeddings, args.k, args.repeats)
    hnsw_latency = per_query_latency(hnsw, query_embeddings, args.k, args.repeats)

    def ndcg(index) -> float:
        hits = index.search_vectors(query_embeddings, 100)
        return compute_metrics(dataset.qrels, {q: dict(h) for q, h in zip(query_ids, hits, strict=True)})[
            "ndcg@10"
        ]

    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, 1 thread used",
        "faiss": faiss.__version__,
        "dataset": name,
        "model": args.model,
        "documents": len(doc_ids),
        "queries": len(query_ids),
        "k": args.k,
        "corpus_encode_seconds": encode_seconds,
        "flat_top10_equal_to_exact": flat_equal,
        "flat_top10_equal_all": flat_equal == len(query_ids),
        "hnsw_recall@10_vs_exact": hnsw_recall,
        "hnsw_settings": hnsw.hnsw,
        "build_seconds": {"flat": flat_build, "hnsw": hnsw_build},
        "batch_search_seconds": {"exact": exact_batch, "flat": flat_batch, "hnsw": hnsw_batch},
        "per_query_ms": {
            "exact": exact_latency * 1e3,
            "flat": flat_latency * 1e3,
            "hnsw": hnsw_latency * 1e3,
        },
        "speedup_vs_exact": {
            "flat_batch": exact_batch / flat_batch,
            "hnsw_batch": exact_batch / hnsw_batch,
            "flat_per_query": exact_latency / flat_latency,
            "hnsw_per_query": exact_latency / hnsw_latency,
        },
        "ndcg@10": {"exact": ndcg(exact), "flat": ndcg(flat), "hnsw": ndcg(hnsw)},
    }
    out = Path(
        args.out or ROOT / "results" / ("search_speed_quick.json" if args.quick else "search_speed.json")
    )
    write_json_atomic(out, result)
    print(
        f"flat FAISS (saved, loaded, queries encoded by the index's model): top-{args.k} ids equal to exact "
        f"search for {flat_equal}/{len(query_ids)} queries"
    )
    print(f"HNSW recall@{args.k} against exact search: {hnsw_recall:.4f} (goal >= 0.99)")
    print(f"build: flat {flat_build * 1e3:.1f} ms, hnsw {hnsw_build * 1e3:.1f} ms")
    print(
        f"all {len(query_ids)} queries at once: exact {exact_batch * 1e3:.2f} ms, flat {flat_batch * 1e3:.2f} ms, "
        f"hnsw {hnsw_batch * 1e3:.2f} ms (hnsw {exact_batch / hnsw_batch:.1f}x exact)"
    )
    print(
        f"one query: exact {exact_latency * 1e3:.3f} ms, flat {flat_latency * 1e3:.3f} ms, hnsw "
        f"{hnsw_latency * 1e3:.3f} ms (hnsw {exact_latency / hnsw_latency:.1f}x exact)"
    )
    print("nDCG@10: " + ", ".join(f"{k} {v:.4f}" for k, v in result["ndcg@10"].items()))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
