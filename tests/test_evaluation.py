from __future__ import annotations

import math

import numpy as np
import pytest

from dreamir.data.beir import BeirDataset, Document
from dreamir.evaluation import (
    compute_metrics,
    encoder_run,
    evaluate_encoder,
    exact_search,
    format_results_table,
    mean_metrics,
    paired_bootstrap_gain,
    per_query_metrics,
)


def test_metrics_match_hand_computation() -> None:
    qrels = {
        "q1": {"d1": 1, "d3": 1},
        "q2": {"d5": 2, "d6": 1, "d7": 0},  # d7 judged, but not relevant
        "q3": {"d9": 1},  # missing from the run: counts as 0
    }
    run = {
        "q1": {"d2": 0.9, "d1": 0.8, "d4": 0.7, "d3": 0.6},
        "q2": {"d7": 0.9, "d6": 0.8, "d5": 0.7},
        "q_unjudged": {"d1": 1.0},  # not in qrels: ignored
    }
    # q1 ranking d2, d1, d4, d3 (relevant at ranks 2 and 4, gains 1):
    #   DCG  = 1/log2(3) + 1/log2(5) = 0.630930 + 0.430677 = 1.061606
    #   IDCG = 1/log2(2) + 1/log2(3) = 1 + 0.630930          = 1.630930
    #   nDCG@10 = 0.650921; recall@100 = 2/2 = 1; MRR@10 = 1/2 (first relevant at rank 2)
    # q2 ranking d7, d6, d5 (gains 0, 1, 2):
    #   DCG  = 0/log2(2) + 1/log2(3) + 2/log2(4) = 0.630930 + 1 = 1.630930
    #   IDCG = 2/log2(2) + 1/log2(3)             = 2 + 0.630930 = 2.630930
    #   nDCG@10 = 0.619907; recall@100 = 2/2 = 1 (d7 is not relevant); MRR@10 = 1/2
    # q3: absent, so 0 on every metric. Means over the 3 judged queries:
    q1_ndcg = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    q2_ndcg = (1 / math.log2(3) + 2 / math.log2(4)) / (2 + 1 / math.log2(3))
    assert q1_ndcg == pytest.approx(0.650921, abs=1e-6)
    assert q2_ndcg == pytest.approx(0.619907, abs=1e-6)
    metrics = compute_metrics(qrels, run)
    assert set(metrics) == {"ndcg@10", "recall@100", "mrr@10"}
    assert metrics["ndcg@10"] == pytest.approx((q1_ndcg + q2_ndcg + 0) / 3, abs=1e-9)
    assert metrics["ndcg@10"] == pytest.approx(0.423609, abs=1e-6)
    assert metrics["recall@100"] == pytest.approx((1 + 1 + 0) / 3)
    assert metrics["mrr@10"] == pytest.approx((0.5 + 0.5 + 0) / 3)


def test_mrr_and_ndcg_stop_at_rank_10_and_recall_at_100() -> None:
    qrels = {"q": {"hit": 1, "deep": 1}}
    # "hit" sits at rank 11, "deep" at rank 101.
    scores = {f"n{i:03d}": 1.0 - i / 1000 for i in range(10)}
    scores["hit"] = 0.5
    scores |= {f"m{i:03d}": 0.4 - i / 10000 for i in range(89)}
    scores["deep"] = 0.0
    metrics = compute_metrics(qrels, {"q": scores})
    assert metrics["mrr@10"] == 0.0  # pytrec_eval's uncut recip_rank would say 1/11
    assert metrics["ndcg@10"] == 0.0
    assert metrics["recall@100"] == pytest.approx(0.5)


def test_ties_are_broken_like_trec_eval() -> None:
    # trec_eval sorts equal scores by document id descending: "b" is ranked before "a".
    metrics = compute_metrics({"q": {"a": 1}}, {"q": {"a": 1.0, "b": 1.0}})
    assert metrics["mrr@10"] == pytest.approx(0.5)
    assert metrics["ndcg@10"] == pytest.approx(1 / math.log2(3))


def test_empty_run_scores_zero_and_empty_qrels_are_refused() -> None:
    assert compute_metrics({"q": {"d": 1}}, {}) == {"ndcg@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0}
    assert compute_metrics({"q": {"d": 1}}, {"q": {}})["ndcg@10"] == 0.0
    with pytest.raises(ValueError, match="empty"):
        compute_metrics({}, {"q": {"d": 1.0}})


def test_per_query_metrics_score_every_judged_query_and_average_to_compute_metrics() -> None:
    qrels = {"q1": {"d1": 1, "d3": 1}, "q2": {"d5": 2, "d6": 1, "d7": 0}, "q3": {"d9": 1}}
    run = {
        "q1": {"d2": 0.9, "d1": 0.8, "d4": 0.7, "d3": 0.6},
        "q2": {"d7": 0.9, "d6": 0.8, "d5": 0.7},
        "q_unjudged": {"d1": 1.0},
    }
    scores = per_query_metrics(qrels, run)
    assert list(scores) == ["q1", "q2", "q3"]  # the qrels' queries, none of the run's others
    assert scores["q1"] == pytest.approx(
        {
            "ndcg@10": (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3)),
            "recall@100": 1,
            "mrr@10": 0.5,
        }
    )
    assert scores["q3"] == {"ndcg@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0}  # missing from the run
    assert mean_metrics(scores) == compute_metrics(qrels, run)
    # The same on a larger random run with ties, graded relevance and queries without hits.
    rng = np.random.default_rng(0)
    docs = [f"d{i}" for i in range(40)]
    qrels = {
        f"q{i}": {d: int(rng.integers(0, 3)) for d in rng.choice(docs, 5, replace=False)} for i in range(30)
    }
    run = {f"q{i}": {d: float(rng.integers(0, 6)) for d in rng.choice(docs, 25)} for i in range(25)}
    scores = per_query_metrics(qrels, run)
    assert set(scores) == set(qrels)
    expected = compute_metrics(qrels, run)
    for metric, value in expected.items():
        assert np.mean([s[metric] for s in scores.values()]) == pytest.approx(value, abs=1e-12)
    with pytest.raises(ValueError, match="empty"):
        per_query_metrics({}, run)


def test_encoder_run_is_the_run_evaluate_encoder_scores() -> None:
    dataset = BeirDataset(
        name="tiny",
        corpus={f"d{i}": Document(f"d{i}", "", f"text {i}") for i in range(6)},
        queries={"a": "x", "b": "y"},
        qrels={"a": {"d1": 1}, "b": {"d4": 1}},
    )
    rng = np.random.default_rng(1)
    vectors = {text: rng.normal(size=4) for text in ["x", "y", *(f"text {i}" for i in range(6))]}

    def encode(texts: list[str]) -> np.ndarray:
        return np.array([vectors[t] for t in texts])

    run = encoder_run(dataset, encode, encode, k=3)
    assert set(run) == {"a", "b"} and all(len(hits) == 3 for hits in run.values())
    assert compute_metrics(dataset.qrels, run) == evaluate_encoder(dataset, encode, encode, k=3)


def test_bootstrap_of_a_constant_gain_is_that_gain() -> None:
    base = {f"q{i}": 0.1 * (i % 7) for i in range(50)}
    adapted = {q: v + 0.05 for q, v in base.items()}
    low, high = paired_bootstrap_gain(base, [adapted, adapted], resamples=500)
    assert low == pytest.approx(0.05) and high == pytest.approx(0.05)
    # Seeds are averaged per query before resampling: +0.1 and -0.1 everywhere cancel exactly.
    up, down = {q: v + 0.1 for q, v in base.items()}, {q: v - 0.1 for q, v in base.items()}
    assert paired_bootstrap_gain(base, [up, down], resamples=500) == pytest.approx((0.0, 0.0), abs=1e-12)


def test_bootstrap_interval_of_a_symmetric_gain_holds_its_mean_and_is_seeded() -> None:
    base = {f"q{i}": 0.5 for i in range(200)}
    adapted = {q: 0.5 + (0.2 if i % 2 else -0.2) for i, q in enumerate(base)}  # mean gain 0
    low, high = paired_bootstrap_gain(base, [adapted], resamples=2000, seed=3)
    assert low < 0 < high
    # The normal approximation: sd 0.2 / sqrt(200) = 0.0141, so about +-0.028 at 95%.
    assert low == pytest.approx(-0.028, abs=0.006) and high == pytest.approx(0.028, abs=0.006)
    assert paired_bootstrap_gain(base, [adapted], resamples=2000, seed=3) == (low, high)
    assert paired_bootstrap_gain(base, [adapted], resamples=2000, seed=4) != (low, high)
    # The query order does not matter, only the ids.
    shuffled = dict(reversed(list(adapted.items())))
    assert paired_bootstrap_gain(base, [shuffled], resamples=2000, seed=3) == (low, high)
    wider = paired_bootstrap_gain(base, [adapted], resamples=2000, seed=3, confidence=0.99)
    assert wider[0] < low and wider[1] > high


def test_bootstrap_refuses_mismatched_queries_and_bad_settings() -> None:
    base = {"q1": 0.5, "q2": 0.6}
    with pytest.raises(ValueError, match=r"system 1 .* 1 missing \['q2'\], 1 not in the base \['q3'\]"):
        paired_bootstrap_gain(base, [base, {"q1": 0.5, "q3": 0.1}])
    with pytest.raises(ValueError, match="no systems"):
        paired_bootstrap_gain(base, [])
    with pytest.raises(ValueError, match="no queries"):
        paired_bootstrap_gain({}, [{}])
    with pytest.raises(ValueError, match="resamples"):
        paired_bootstrap_gain(base, [base], resamples=0)
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap_gain(base, [base], confidence=95)


def test_exact_search_agrees_with_brute_force_argsort() -> None:
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(7, 16))
    docs = rng.normal(size=(50, 16)) * rng.uniform(0.5, 3.0, size=(50, 1))  # norms must not matter
    query_ids = [f"q{i}" for i in range(7)]
    doc_ids = [f"d{i}" for i in range(50)]
    run = exact_search(queries, docs, query_ids, doc_ids, k=5, batch_size=3)  # 3 batches

    cosine = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (
        docs / np.linalg.norm(docs, axis=1, keepdims=True)
    ).T
    for row, query_id in enumerate(query_ids):
        expected = np.argsort(-cosine[row])[:5]
        assert list(run[query_id]) == [doc_ids[i] for i in expected]
        np.testing.assert_allclose(list(run[query_id].values()), cosine[row, expected], rtol=1e-5)

    # k beyond the corpus returns every document, still in order; batching does not change results.
    everything = exact_search(queries, docs, query_ids, doc_ids, k=500)
    assert all(len(scored) == 50 for scored in everything.values())
    assert list(everything["q3"]) == [doc_ids[i] for i in np.argsort(-cosine[3])]
    one_batch = exact_search(queries, docs, query_ids, doc_ids, k=5)
    for query_id in query_ids:
        assert list(one_batch[query_id]) == list(run[query_id])
        assert list(one_batch[query_id].values()) == pytest.approx(list(run[query_id].values()), rel=1e-5)


def test_exact_search_checks_shapes() -> None:
    with pytest.raises(ValueError, match="2 query embeddings but 1 query ids"):
        exact_search(np.ones((2, 3)), np.ones((4, 3)), ["q"], ["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="dimension"):
        exact_search(np.ones((1, 3)), np.ones((1, 4)), ["q"], ["a"])


def test_evaluate_encoder_uses_only_the_callables() -> None:
    dataset = BeirDataset(
        name="words",
        corpus={
            "d_red": Document("d_red", "Red", "apple cherry"),
            "d_blue": Document("d_blue", "Blue", "sky ocean"),
            "d_green": Document("d_green", "Green", "grass leaf"),
        },
        queries={"q1": "ocean", "q2": "cherry", "q3": "grass"},
        qrels={"q1": {"d_blue": 1}, "q2": {"d_red": 1}, "q3": {"d_green": 1}},
    )
    vocabulary = ["red", "apple", "cherry", "blue", "sky", "ocean", "green", "grass", "leaf"]
    seen_documents: list[str] = []

    def bag_of_words(texts: list[str]) -> np.ndarray:
        return np.array([[text.lower().split().count(word) for word in vocabulary] for text in texts], float)

    def encode_documents(texts: list[str]) -> np.ndarray:
        seen_documents.extend(texts)
        return bag_of_words(texts)

    metrics = evaluate_encoder(dataset, bag_of_words, encode_documents, k=3)
    assert metrics == {"ndcg@10": 1.0, "recall@100": 1.0, "mrr@10": 1.0}
    assert seen_documents == ["Red apple cherry", "Blue sky ocean", "Green grass leaf"]  # title + text

    def reversed_queries(texts: list[str]) -> np.ndarray:
        return -bag_of_words(texts)  # ranks the right document last of three

    worst = evaluate_encoder(dataset, reversed_queries, bag_of_words, k=3)
    assert worst["mrr@10"] == pytest.approx(1 / 3)
    assert worst["recall@100"] == 1.0


def test_results_table_lines_up_and_marks_missing_metrics() -> None:
    table = format_results_table(
        {
            "scifact": {"bm25": {"ndcg@10": 0.66169, "recall@100": 0.8759, "mrr@10": 0.6312}},
            "factbook": {"dream": {"ndcg@10": 0.5, "extra": 2.0}},
        }
    )
    lines = table.splitlines()
    assert lines[0].split() == ["dataset", "system", "ndcg@10", "recall@100", "mrr@10", "extra"]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split() == ["scifact", "bm25", "0.6617", "0.8759", "0.6312", "-"]
    assert lines[3].split() == ["factbook", "dream", "0.5000", "-", "-", "2.0000"]
    # Right-aligned numbers: every row's ndcg column ends at the same position.
    ends = {
        line.index(value) + len(value) for line, value in zip(lines[2:], ["0.6617", "0.5000"], strict=True)
    }
    assert len(ends) == 1
