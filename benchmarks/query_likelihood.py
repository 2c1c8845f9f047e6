"""Does the frozen LLM know something about relevance that the retriever does not? Its query likelihood as a
reranker of the retriever's own top passages, on real labelled queries (issue 30's teacher question).

For every test query, the base retriever's top --depth passages (with --first-stage hybrid: BM25 and the
retriever fused, `dreamir index --hybrid`'s default) are scored by the frozen LLM's mean log P(query |
passage), read by dreamir.reranking (the prompt `dreamir adapt --target-text query` trains with: instruction
and one passage, no question; the query is the assistant's reply). Three rankings of the same top --depth:
  base          the retriever's own order;
  llm           the query likelihood alone;
  base + llm    the sum of the two scores, each standardised over the query's --depth passages (what
                `dreamir search` and `dreamir eval` do with --rerank-llm).
Passages below --depth keep the base's order after them, so Recall@100 is the base's. Gains are paired over
queries against the base, with a bootstrap 95% interval. Labels are read only to score: nothing is tuned.

    python benchmarks/query_likelihood.py --quick          # a smoke run: 20 SciFact queries
    python benchmarks/query_likelihood.py --out results/query_likelihood.json
    python benchmarks/query_likelihood.py --first-stage hybrid --out results/query_likelihood_hybrid.json
"""

from __future__ import annotations

import argparse
import datetime
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from dreamir import precision as compute
from dreamir.data.beir import BeirDataset, load_beir
from dreamir.datasets.factbook import build_factbook
from dreamir.evaluation import encoder_run, mean_metrics, paired_bootstrap_gain, per_query_metrics
from dreamir.io import write_json_atomic
from dreamir.models import MINILM, SMOLLM2, resolve_model
from dreamir.reranking import QueryLikelihoodReranker, fused, reordered
from dreamir.retriever import Retriever
from dreamir.search import BM25Index, ExactIndex, HybridIndex
from dreamir.stages import Stages

Run = dict[str, dict[str, float]]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", default="scifact,factbook")
    parser.add_argument("--beir", default="../shared/data/beir/scifact")
    parser.add_argument("--retriever", default=MINILM)
    parser.add_argument("--llm", default=SMOLLM2)
    parser.add_argument(
        "--first-stage",
        choices=("dense", "hybrid"),
        default="dense",
        help="the ranking reranked: the retriever's, or BM25 and the retriever fused (`--hybrid`'s default)",
    )
    parser.add_argument("--depth", type=int, default=20, help="the retriever's top passages reranked")
    parser.add_argument("--max-queries", type=int, default=300, help="a seeded sample of each test set")
    parser.add_argument("--batch-size", type=int, default=10, help="passages per LLM forward")
    parser.add_argument(
        "--precision", default="auto", help="the LLM's and the retriever's: auto, float32, bfloat16"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="runs/query-likelihood")
    parser.add_argument("--out", default="results/query_likelihood.json")
    parser.add_argument("--quick", action="store_true", help="20 SciFact queries, depth 5")
    args = parser.parse_args()
    if args.quick:
        args.datasets, args.max_queries, args.depth = "scifact", 20, 5
        args.out = args.out.replace(".json", "_quick.json")
    return args


def load_dataset(name: str, args: argparse.Namespace) -> BeirDataset:
    if name == "scifact":
        return load_beir(args.beir)
    directory = Path(args.work) / "factbook-data"
    Stages().run("factbook", directory / "meta.json", lambda: build_factbook(directory, seed=args.seed))
    return load_beir(directory)


def sampled(dataset: BeirDataset, count: int, seed: int) -> BeirDataset:
    ids = sorted(dataset.queries)
    random.Random(seed).shuffle(ids)
    keep = set(ids[:count])
    queries = {q: t for q, t in dataset.queries.items() if q in keep}
    qrels = {q: r for q, r in dataset.qrels.items() if q in keep}
    return BeirDataset(name=dataset.name, corpus=dataset.corpus, queries=queries, qrels=qrels)


def evaluate(
    name: str, args: argparse.Namespace, retriever: Retriever, reranker: QueryLikelihoodReranker
) -> dict:
    dataset = sampled(load_dataset(name, args), args.max_queries, args.seed)
    started = time.perf_counter()
    with torch.no_grad(), compute.autocast(args.precision, retriever.device):
        if args.first_stage == "dense":
            base_run: Run = encoder_run(dataset, retriever.encode_queries, retriever.encode_documents, k=100)
        else:  # `dreamir index --hybrid`'s default fusion of BM25 and the retriever
            embeddings = retriever.encode_documents([doc.full_text for doc in dataset.corpus.values()])
            dense = ExactIndex(list(dataset.corpus), np.asarray(embeddings), retriever.encode_queries)
            base_run = HybridIndex(BM25Index.from_corpus(dataset.corpus), dense).run(dataset.queries, k=100)
    encode_seconds = time.perf_counter() - started
    runs: dict[str, Run] = {"base": base_run, "llm": {}, "base + llm": {}}
    started = time.perf_counter()
    for query_id, base in tqdm(base_run.items(), desc=f"{name}: query likelihood", mininterval=10):
        hits = sorted(base.items(), key=lambda hit: -hit[1])
        top = hits[: reranker.depth]
        passages = [(dataset.corpus[d].title, dataset.corpus[d].text) for d, _ in top]
        likelihood = reranker.query_log_likelihood(dataset.queries[query_id], passages)
        runs["llm"][query_id] = dict(reordered(hits, likelihood))
        runs["base + llm"][query_id] = dict(fused(hits, likelihood))  # what --rerank-llm computes
    llm_seconds = time.perf_counter() - started
    per_query = {system: per_query_metrics(dataset.qrels, run) for system, run in runs.items()}
    ndcg = {system: {q: m["ndcg@10"] for q, m in scores.items()} for system, scores in per_query.items()}
    result = {"queries": len(dataset.queries), "passages": len(dataset.corpus), "systems": {}}
    for system, scores in per_query.items():
        row = {"metrics": mean_metrics(scores)}
        if system != "base":
            gain = float(np.mean([ndcg[system][q] - ndcg["base"][q] for q in ndcg["base"]]))
            row["ndcg@10_gain"] = gain
            row["ndcg@10_gain_ci95"] = list(
                paired_bootstrap_gain(ndcg["base"], [ndcg[system]], seed=args.seed)
            )
        result["systems"][system] = row
        interval = row.get("ndcg@10_gain_ci95")
        extra = (
            f"  gain {row['ndcg@10_gain']:+.4f} [{interval[0]:+.4f}, {interval[1]:+.4f}]" if interval else ""
        )
        print(f"{name} {system:<11} nDCG@10 {row['metrics']['ndcg@10']:.4f}{extra}", flush=True)
    result["seconds"] = {"encode": encode_seconds, "query_likelihood": llm_seconds}
    return result


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    reranker = QueryLikelihoodReranker.from_pretrained(
        args.llm, precision=args.precision, depth=args.depth, batch_size=args.batch_size
    )
    retriever = Retriever.from_pretrained(resolve_model(args.retriever))
    results = {
        "date": datetime.date.today().isoformat(),
        "machine": compute.machine_record(llm=args.precision, retriever=args.precision),
        "settings": vars(args),
        "datasets": {name: evaluate(name, args, retriever, reranker) for name in args.datasets.split(",")},
    }
    write_json_atomic(args.out, results)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
