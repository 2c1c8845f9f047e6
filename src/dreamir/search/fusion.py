"""Fusing the rankings of several searches of one corpus (hybrid retrieval: BM25 with a dense model).

Two methods, per query, over each system's top ``depth`` hits:
  interpolation  (the default) weight * dense + (1 - weight) * lexical, each system's scores min-max
                 normalised over its own hits for that query (a document a system did not return counts as
                 that system's lowest, 0 after normalisation); dense weight 0.7 by default.
  rrf            reciprocal rank fusion (Cormack et al., 2009): score(d) = sum over systems of
                 w_s / (rrf_k + rank_s(d)), ranks from 1, a document a system did not return adding
                 nothing; w = 2 * weight for the dense system and 2 * (1 - weight) for the lexical one, so
                 weight 0.5 (its default) is plain RRF.
Why interpolation at 0.7 (results/hybrid.json): it was above both of its parts on SciFact, where BM25 leads
the dense model (0.686 against 0.645 nDCG@10), and on the Factbook questions, where the dense model leads
by far (0.925 against 0.551); plain RRF gives the two systems an equal vote, so the weak one pulled the fused
ranking below the strong one on Factbook (0.792), and no RRF weight tried (0.3 to 0.9) was above both parts
on both. (A plausible reason a weight above 0.5 suits interpolation, not measured: min-max normalisation
maps BM25's long-tailed scores mostly near 0, while the dense scores spread over the range.)
Ties are broken by document id so that a fused ranking is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from dreamir.search.base import Hits, Run

FusionMethod = Literal["rrf", "interpolation"]
FUSION_METHODS: tuple[str, ...] = ("interpolation", "rrf")
DEFAULT_FUSION: FusionMethod = "interpolation"
# The constant of Cormack et al. (2009), used unchanged by most hybrid search engines.
RRF_K = 60
# The dense system's weight (the lexical one gets 1 - weight) when none is given, per method.
DEFAULT_WEIGHTS: dict[str, float] = {"interpolation": 0.7, "rrf": 0.5}
# Hits taken from each system before fusing: a document ranked lower by both is not a fused top-k hit
# for any usual k.
FUSION_DEPTH = 100

Ranked = list[tuple[str, float]]


def default_weight(method: str, weight: float | None = None) -> float:
    """``weight``, or the method's default dense weight when None."""
    return DEFAULT_WEIGHTS.get(method, 0.5) if weight is None else weight


def check_fusion(method: str, weight: float, rrf_k: float) -> None:
    if method not in FUSION_METHODS:
        raise ValueError(f"fusion must be one of {FUSION_METHODS}, got {method!r}")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the fusion weight must be between 0 and 1, got {weight}")
    if rrf_k < 0:
        raise ValueError(f"rrf_k must be at least 0, got {rrf_k}")


def _best_first(scores: dict[str, float], k: int) -> Ranked:
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:k]


def reciprocal_rank_fusion(
    rankings: Sequence[Ranked], k: int, rrf_k: float = RRF_K, weights: Sequence[float] | None = None
) -> Ranked:
    """One query's fused top ``k`` from its rankings (each best first), each counted ``weights[i]`` times
    (once each by default)."""
    weights = [1.0] * len(rankings) if weights is None else weights
    if len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    fused: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, (doc_id, _) in enumerate(ranking, start=1):
            fused[doc_id] = fused.get(doc_id, 0.0) + weight / (rrf_k + rank)
    return _best_first(fused, k)


def _min_max(ranking: Ranked) -> dict[str, float]:
    if not ranking:
        return {}
    scores = [score for _, score in ranking]
    low, high = min(scores), max(scores)
    if high == low:  # one hit, or all tied: all equally good
        return {doc_id: 1.0 for doc_id, _ in ranking}
    return {doc_id: (score - low) / (high - low) for doc_id, score in ranking}


def interpolate(
    lexical: Ranked, dense: Ranked, k: int, weight: float = DEFAULT_WEIGHTS["interpolation"]
) -> Ranked:
    """One query's fused top ``k``: ``weight`` * normalised dense + (1 - ``weight``) * normalised lexical."""
    lexical_scores, dense_scores = _min_max(lexical), _min_max(dense)
    fused = {
        doc_id: weight * dense_scores.get(doc_id, 0.0) + (1.0 - weight) * lexical_scores.get(doc_id, 0.0)
        for doc_id in {**lexical_scores, **dense_scores}
    }
    return _best_first(fused, k)


def fuse(
    lexical: Hits,
    dense: Hits,
    k: int,
    method: FusionMethod = DEFAULT_FUSION,
    weight: float | None = None,
    rrf_k: float = RRF_K,
) -> Hits:
    """Each query's fused top ``k`` from the two systems' hits (one list per query, best first); ``weight``
    None: the method's default."""
    weight = default_weight(method, weight)
    check_fusion(method, weight, rrf_k)
    if len(lexical) != len(dense):
        raise ValueError(f"{len(lexical)} lexical but {len(dense)} dense result lists")
    if method == "rrf":
        weights = [2.0 * (1.0 - weight), 2.0 * weight]  # lexical, dense: (1, 1) at weight 0.5
        return [
            reciprocal_rank_fusion([a, b], k, rrf_k, weights) for a, b in zip(lexical, dense, strict=True)
        ]
    return [interpolate(a, b, k, weight) for a, b in zip(lexical, dense, strict=True)]


def _as_ranked(scored: dict[str, float]) -> Ranked:
    # trec_eval's order (score descending, ties by document id descending): the ranks the run's metrics saw.
    return sorted(scored.items(), key=lambda item: (item[1], item[0]), reverse=True)


def fuse_runs(
    lexical: Run,
    dense: Run,
    k: int = FUSION_DEPTH,
    method: FusionMethod = DEFAULT_FUSION,
    weight: float | None = None,
    rrf_k: float = RRF_K,
) -> Run:
    """Two runs (``{query_id: {doc_id: score}}``) fused query by query; a query either run lacks is fused
    from the other alone."""
    query_ids = list(dict.fromkeys([*lexical, *dense]))
    fused = fuse(
        [_as_ranked(lexical.get(q, {})) for q in query_ids],
        [_as_ranked(dense.get(q, {})) for q in query_ids],
        k,
        method,
        weight,
        rrf_k,
    )
    return {query_id: dict(ranked) for query_id, ranked in zip(query_ids, fused, strict=True)}
