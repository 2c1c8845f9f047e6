from __future__ import annotations

import pytest

from dreamir.candidates import BM25Index, bm25_run, mine_candidates
from dreamir.data.beir import BeirDataset, Document, load_beir
from dreamir.data.training import TrainingExample
from dreamir.evaluation import evaluate_bm25

CORPUS = {
    "paris": Document("paris", "Paris", "Paris is the capital and largest city of France."),
    "berlin": Document("berlin", "Berlin", "Berlin is the capital of Germany, on the Spree river."),
    "rome": Document("rome", "Rome", "Rome is the capital of Italy and was the centre of an empire."),
    "nile": Document("nile", "Nile", "The Nile is a major river flowing north through Egypt."),
    "everest": Document("everest", "Everest", "Mount Everest is the highest mountain above sea level."),
    "coffee": Document("coffee", "Coffee", "Coffee is brewed from roasted coffee beans."),
}


@pytest.fixture(scope="module")
def index() -> BM25Index:
    return BM25Index.from_corpus(CORPUS, stemmer=None)


def test_search_returns_the_matching_documents_ranked_with_exact_match_first(index: BM25Index) -> None:
    hits = index.search(["Mount Everest is the highest mountain above sea level.", "Spree river Berlin"], k=3)
    # Only documents sharing a word with the query: Everest alone, then Berlin and the Nile (river).
    assert [[doc_id for doc_id, _ in ranked] for ranked in hits] == [["everest"], ["berlin", "nile"]]
    for ranked in hits:
        scores = [score for _, score in ranked]
        assert scores == sorted(scores, reverse=True) and min(scores) > 0
    assert hits[1][0][1] > hits[1][1][1]  # a real margin, not a tie


def test_unknown_words_match_nothing_an_empty_query_is_refused_and_mining_pads_to_k(index: BM25Index) -> None:
    assert len(index.search(["capital"], k=100)[0]) == 3  # Paris, Berlin, Rome
    # Only stopwords / unseen words: no match at all, so no hit (not arbitrary zero-score documents).
    assert index.search(["the of zzzqqq"], k=4) == [[]]
    with pytest.raises(ValueError, match="query 2 of 2 is empty"):
        index.search(["capital", "  "], k=3)
    # Candidate mining keeps its k candidates, zero-score ones filling up, as training always had.
    (padded,) = index.search(["the of zzzqqq"], k=4, pad_to_k=True)
    assert len(padded) == 4 and all(score == 0.0 for _, score in padded)
    assert len(index.search(["capital"], k=100, pad_to_k=True)[0]) == len(CORPUS)
    assert index.search([], k=3) == []
    with pytest.raises(ValueError, match="k must be at least 1"):
        index.search(["x"], k=0)


def test_mining_fills_k_candidates_without_forcing_the_gold(index: BM25Index) -> None:
    examples = [
        TrainingExample("What is the capital of France?", "Paris", gold_id="paris", query_id="a"),
        # The gold shares no word with the query: label-free mining must not slip it in.
        TrainingExample("capital of Italy", "espresso", gold_id="coffee", query_id="b"),
    ]
    mined = mine_candidates(examples, index, k=3)
    assert [len(e.candidate_ids or []) for e in mined] == [3, 3]
    assert (mined[0].candidate_ids or [])[0] == "paris"
    assert (mined[1].candidate_ids or [])[0] == "rome"
    assert "coffee" not in (mined[1].candidate_ids or [])
    # Copies: the inputs are untouched and the other fields carried over.
    assert all(e.candidate_ids is None for e in examples)
    assert [(e.query, e.target, e.gold_id, e.query_id) for e in mined] == [
        (e.query, e.target, e.gold_id, e.query_id) for e in examples
    ]


def test_stemmer_is_applied_to_corpus_and_queries() -> None:
    def strip_plural(words: list[str]) -> list[str]:
        return [word[:-1] if word.endswith("s") else word for word in words]

    corpus = {"a": Document("a", "", "one bean"), "b": Document("b", "", "two leaves")}
    plain = BM25Index.from_corpus(corpus, stemmer=None)
    stemmed = BM25Index.from_corpus(corpus, stemmer=strip_plural)
    assert plain.search(["beans"], k=2) == [[]]
    assert stemmed.search(["beans"], k=2)[0][0][0] == "a"
    assert stemmed.search(["beans"], k=2)[0][0][1] > 0.0


def test_bm25_run_covers_every_query_and_scores_a_tiny_dataset() -> None:
    dataset = BeirDataset(
        name="tiny",
        corpus=CORPUS,
        queries={"q1": "largest city of France", "q2": "river in Egypt"},
        qrels={"q1": {"paris": 1}, "q2": {"nile": 1}},
    )
    run = bm25_run(dataset, k=2)
    assert set(run) == {"q1", "q2"}
    assert set(run["q1"]) == {"paris"} and set(run["q2"]) == {"nile", "berlin"}
    assert max(run["q2"], key=run["q2"].__getitem__) == "nile"
    metrics = evaluate_bm25(dataset, k=2)
    assert metrics == {"ndcg@10": 1.0, "recall@100": 1.0, "mrr@10": 1.0}


def test_empty_corpus_is_refused() -> None:
    with pytest.raises(ValueError, match="empty corpus"):
        BM25Index.from_corpus({})


@pytest.mark.integration
def test_bm25_on_scifact_matches_published_range(scifact_dir) -> None:
    metrics = evaluate_bm25(load_beir(scifact_dir))
    # bm25s reports 0.687 with PyStemmer; without a stemmer this gives about 0.662.
    assert 0.64 <= metrics["ndcg@10"] <= 0.71
    assert 0.85 <= metrics["recall@100"] <= 0.95
