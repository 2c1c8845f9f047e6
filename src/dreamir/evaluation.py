"""Retrieval evaluation: BEIR-style metrics of a run and a results table (search lives in dreamir.search).

Knows nothing of models: encoders come in as callables from texts to numpy arrays, and the similarity
to rank with as its name (the retriever's ``config.similarity``; see dreamir.similarity).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pytrec_eval

from dreamir.data.beir import BeirDataset
from dreamir.search.base import Run
from dreamir.search.bm25 import bm25_run
from dreamir.search.dense import exact_search
from dreamir.similarity import Similarity, prepare

METRICS = ("ndcg@10", "recall@100", "mrr@10")
# pytrec_eval measure names for the metrics it computes (MRR@10 is computed here: its recip_rank has
# no cutoff).
_PYTREC_MEASURES = {"ndcg@10": "ndcg_cut_10", "recall@100": "recall_100"}

Qrels = Mapping[str, Mapping[str, int]]
# exact_search and Run moved to dreamir.search; importing them from here keeps working.
__all__ = [
    "METRICS",
    "Run",
    "compute_metrics",
    "encoder_run",
    "evaluate_bm25",
    "evaluate_encoder",
    "exact_search",
    "paired_bootstrap_gain",
    "per_query_metrics",
]


def _trec_ranking(scored: Mapping[str, float]) -> list[str]:
    # trec_eval's order: score descending, ties broken by document id descending.
    return [doc_id for doc_id, _ in sorted(scored.items(), key=lambda item: (item[1], item[0]), reverse=True)]


def _reciprocal_rank_at(ranking: list[str], relevant: set[str], cutoff: int) -> float:
    for rank, doc_id in enumerate(ranking[:cutoff], start=1):
        if doc_id in relevant:
            return 1.0 / rank
    return 0.0


def per_query_metrics(qrels: Qrels, run: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """nDCG@10, Recall@100 and MRR@10 of every query in ``qrels``: ``{query_id: {metric: value}}``.

    A query missing from ``run`` (or with no hits) scores 0 on every metric; pytrec_eval alone would
    silently drop it. Queries of ``run`` that ``qrels`` does not judge are ignored. Only qrels scores > 0
    count as relevant (as in BEIR). Rankings follow trec_eval: score descending, ties by document id
    descending. compute_metrics is the mean of these values.
    """
    if not qrels:
        raise ValueError("qrels are empty: nothing to evaluate")
    clean_qrels = {
        str(query_id): {str(doc_id): int(score) for doc_id, score in judged.items()}
        for query_id, judged in qrels.items()
    }
    clean_run = {
        str(query_id): {str(doc_id): float(score) for doc_id, score in scored.items()}
        for query_id, scored in run.items()
        if query_id in clean_qrels and scored
    }
    evaluator = pytrec_eval.RelevanceEvaluator(clean_qrels, set(_PYTREC_MEASURES.values()))
    evaluated = evaluator.evaluate(clean_run)
    result = {}
    for query_id, judged in clean_qrels.items():
        measures = evaluated.get(query_id)
        if measures is None:
            result[query_id] = dict.fromkeys(METRICS, 0.0)  # absent from the run
            continue
        scores = {metric: float(measures[measure]) for metric, measure in _PYTREC_MEASURES.items()}
        relevant = {doc_id for doc_id, score in judged.items() if score > 0}
        scores["mrr@10"] = _reciprocal_rank_at(_trec_ranking(clean_run[query_id]), relevant, 10)
        result[query_id] = {metric: scores[metric] for metric in METRICS}
    return result


def mean_metrics(per_query: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The average over the queries of ``per_query`` (per_query_metrics' shape) of each metric."""
    if not per_query:
        raise ValueError("no queries to average")
    metrics = list(next(iter(per_query.values())))
    return {
        metric: sum(scores[metric] for scores in per_query.values()) / len(per_query) for metric in metrics
    }


def compute_metrics(qrels: Qrels, run: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """nDCG@10, Recall@100 and MRR@10, averaged over every query in ``qrels`` (the conventions of
    per_query_metrics: a query missing from ``run`` scores 0)."""
    return mean_metrics(per_query_metrics(qrels, run))


def evaluate_encoder(
    dataset: BeirDataset,
    encode_queries: Callable[[list[str]], np.ndarray],
    encode_documents: Callable[[list[str]], np.ndarray],
    k: int = 100,
    similarity: Similarity = "cosine",
) -> dict[str, float]:
    """Encode ``dataset`` with the two callables, search exactly by ``similarity`` and score with
    compute_metrics."""
    return compute_metrics(
        dataset.qrels, encoder_run(dataset, encode_queries, encode_documents, k, similarity)
    )


def encoder_run(
    dataset: BeirDataset,
    encode_queries: Callable[[list[str]], np.ndarray],
    encode_documents: Callable[[list[str]], np.ndarray],
    k: int = 100,
    similarity: Similarity = "cosine",
) -> Run:
    """The run evaluate_encoder scores: every query's exact top ``k`` by ``similarity``, ``{query_id:
    {doc_id: score}}``; documents are encoded as ``Document.full_text`` (title + " " + text), the BEIR
    convention."""
    query_ids = list(dataset.queries)
    doc_ids = list(dataset.corpus)
    query_embeddings = np.asarray(encode_queries([dataset.queries[query_id] for query_id in query_ids]))
    doc_embeddings = np.asarray(encode_documents([dataset.corpus[doc_id].full_text for doc_id in doc_ids]))
    return exact_search(query_embeddings, doc_embeddings, query_ids, doc_ids, k=k, similarity=similarity)


def evaluate_bm25(dataset: BeirDataset, k: int = 100) -> dict[str, float]:
    """BM25 (bm25s, see dreamir.search.bm25) scored like the dense systems."""
    return compute_metrics(dataset.qrels, bm25_run(dataset, k=k))


def paired_bootstrap_gain(
    base: Mapping[str, float],
    systems: Sequence[Mapping[str, float]],
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of the mean gain of ``systems`` over ``base`` on the same queries.

    ``base`` and each system map every query id to its score (one metric, e.g. per_query_metrics'
    nDCG@10); the systems are runs of one method (seeds, say). Each query's gain is the systems' average
    score minus the base's; the queries are resampled with replacement ``resamples`` times (seeded: the
    same inputs give the same interval), and the interval holds the central ``confidence`` of the
    resampled mean gains. Pairing by query removes the spread between queries, which a comparison of two
    means would count as noise. Raises ValueError when a system's queries are not the base's.
    """
    if not base:
        raise ValueError("no queries: the base has no scores")
    if not systems:
        raise ValueError("no systems to compare with the base")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    query_ids = sorted(base)
    for i, system in enumerate(systems):
        if set(system) != set(base):
            missing, extra = sorted(set(base) - set(system)), sorted(set(system) - set(base))
            raise ValueError(
                f"system {i} is scored on other queries than the base: {len(missing)} missing "
                f"{missing[:3]}, {len(extra)} not in the base {extra[:3]}"
            )
    scores = np.array([[system[q] for q in query_ids] for system in systems], dtype=np.float64)
    gains = scores.mean(0) - np.array([base[q] for q in query_ids], dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    block = max(1, 2_000_000 // len(gains))  # resamples drawn at once: bounded memory on large query sets
    for start in range(0, resamples, block):
        stop = min(start + block, resamples)
        means[start:stop] = gains[rng.integers(0, len(gains), size=(stop - start, len(gains)))].mean(1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def format_results_table(results: Mapping[str, Mapping[str, Mapping[str, float]]], digits: int = 4) -> str:
    """Render ``{dataset: {system: {metric: value}}}`` as an aligned plain-text table.

    One row per (dataset, system); the standard metrics come first, any others follow sorted;
    a metric a system lacks shows as "-".
    """
    extra = sorted(
        {metric for systems in results.values() for m in systems.values() for metric in m} - set(METRICS)
    )
    present = {metric for systems in results.values() for m in systems.values() for metric in m}
    columns = [metric for metric in METRICS if metric in present] + extra
    header = ["dataset", "system", *columns]
    rows = [
        [
            dataset,
            system,
            *(f"{metrics[c]:.{digits}f}" if c in metrics else "-" for c in columns),
        ]
        for dataset, systems in results.items()
        for system, metrics in systems.items()
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def render(cells: list[str]) -> str:
        # Names left-aligned, numbers right-aligned so decimals line up.
        text = [cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(cells)]
        return "  ".join(text).rstrip()

    separator = "  ".join("-" * width for width in widths)
    return "\n".join([render(header), separator, *(render(row) for row in rows)])


def pseudo_gold_success(
    query_embeddings: np.ndarray,
    doc_embeddings: np.ndarray,
    gold_rows: Sequence[int],
    gold_embeddings: np.ndarray | None = None,
    k: int = 10,
    similarity: Similarity = "cosine",
) -> dict[str, float]:
    """Label-free validation: how often each query's pseudo-gold passage ranks in the top ``k``.

    Query i's pseudo-gold is corpus row ``gold_rows[i]``; ``gold_embeddings[i]`` (when given) stands in
    for that row for query i alone, which is how a derived passage (the source with the query sentence
    removed) is searched among the corpus without adding it for every other query. Ties count against
    the gold. Returns ``success@k`` and ``mrr@k``.
    """
    queries = prepare(query_embeddings, similarity)
    docs = prepare(doc_embeddings, similarity)
    rows = np.asarray(gold_rows, dtype=np.int64)
    if len(rows) != queries.shape[0]:
        raise ValueError(f"{queries.shape[0]} queries but {len(rows)} gold rows")
    if len(rows) == 0:
        raise ValueError("no validation queries")
    golds = docs[rows] if gold_embeddings is None else prepare(gold_embeddings, similarity)
    gold_scores = (queries * golds).sum(1)
    ranks = np.empty(len(rows), dtype=np.int64)
    for start in range(0, len(rows), 256):
        scores = queries[start : start + 256] @ docs.T
        block = np.arange(start, min(start + 256, len(rows)))
        scores[block - start, rows[block]] = -np.inf  # the gold is compared through gold_scores
        ranks[block] = (scores >= gold_scores[block, None]).sum(1)
    hit = ranks < k
    return {f"success@{k}": float(hit.mean()), f"mrr@{k}": float((hit / (ranks + 1)).mean())}
