"""The LLM second stage (dreamir.reranking) and `dreamir search/eval --rerank-llm`, on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamir.artefacts import directory_sha256
from dreamir.cli import main
from dreamir.data.beir import load_beir
from dreamir.reranking import QueryLikelihoodReranker, reordered, standardised
from dreamir.search.runs import read_trec_run
from tests.tiny_beir import make_tiny_beir


@pytest.fixture(scope="module")
def beir_dir(tmp_path_factory):
    return make_tiny_beir(tmp_path_factory.mktemp("beir") / "tinyfact")


@pytest.fixture(scope="module")
def reranker(tiny_llama_dir):
    return QueryLikelihoodReranker.from_pretrained(tiny_llama_dir, precision="float32", depth=4, batch_size=3)


def test_reordered_sorts_the_rescored_top_and_keeps_the_rest_after_it_in_order():
    hits = [("a", 0.9), ("b", 0.8), ("c", 0.7), ("d", 0.6), ("e", 0.5)]
    ranked = reordered(hits, np.array([-3.0, -1.0, -2.0]))
    assert [doc_id for doc_id, _ in ranked] == ["b", "c", "a", "d", "e"]
    scores = [score for _, score in ranked]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == len(scores)
    assert scores[:3] == [-1.0, -2.0, -3.0]
    z = standardised(np.array([1.0, 2.0, 3.0]))
    assert z.mean() == pytest.approx(0.0, abs=1e-12) and z.std() == pytest.approx(1.0, rel=1e-6)
    assert np.array_equal(standardised(np.array([2.0, 2.0])), np.zeros(2))


def test_query_likelihood_is_the_mean_log_probability_of_the_query_after_the_passage_alone(reranker):
    llm = reranker.llm
    passages = [
        ("france", "paris is the capital city of france"),
        ("spain", "madrid is a city in spain"),
        ("italy", "rome is the capital of italy"),
        ("germany", "berlin is a city"),
    ]
    query = "capital of france"
    scores = reranker.query_log_likelihood(query, passages)  # batches of 3 and 1: padding must not count
    assert scores.shape == (4,)
    for passage, score in zip(passages, scores, strict=True):
        encoded = llm.encode("", [passage], query)
        prompt = llm.tokenizer.decode(encoded.input_ids[: encoded.target_start])
        assert query not in prompt and query in llm.tokenizer.decode(
            encoded.input_ids[encoded.target_start :]
        )
        ids = torch.tensor([encoded.input_ids])
        with torch.no_grad():  # the stock model, no dreamir machinery
            logits = llm.model(input_ids=ids).logits[0].float()
        log_probs = torch.log_softmax(logits[:-1], -1)
        targets = ids[0, 1:]
        rows = torch.arange(encoded.target_start - 1, len(encoded.input_ids) - 1)
        expected = log_probs[rows, targets[rows]].mean().item()
        assert score == pytest.approx(expected, rel=1e-4)
    assert len(set(scores.tolist())) == 4


def test_rerank_orders_the_top_depth_by_the_sum_of_the_two_standardised_scores(reranker):
    passage_of = {f"d{i}": (f"title {i}", text) for i, text in enumerate(["paris france", "rome city",
                  "madrid spain", "berlin river", "north moon", "red fire"])}  # fmt: skip
    hits = [(f"d{i}", 10.0 - i * i * 0.5) for i in range(6)]  # uneven gaps: not a rank transform
    query = "capital city of france"
    ranked = reranker.rerank(query, hits, passage_of)
    likelihood = reranker.query_log_likelihood(query, [passage_of[f"d{i}"] for i in range(4)])
    fused = standardised(likelihood) + standardised(np.array([score for _, score in hits[:4]]))
    expected = [f"d{i}" for i in np.argsort(-fused, kind="stable")] + ["d4", "d5"]
    assert [doc_id for doc_id, _ in ranked] == expected
    assert [score for _, score in ranked[:4]] == pytest.approx(sorted(fused, reverse=True), rel=1e-9)
    assert reranker.rerank(query, hits[:1], passage_of) == hits[:1]
    with pytest.raises(ValueError, match="2 queries but 1 hit lists"):
        reranker.rerank_all([query, query], [hits], passage_of)


def test_search_reranks_the_index_hits_with_the_llm_and_refuses_a_missing_or_other_corpus(
    tmp_path, beir_dir, tiny_llama_dir, capsys
):
    assert main(["index", "bm25", str(beir_dir), "--out", str(tmp_path / "bm25")]) == 0
    corpus = load_beir(beir_dir).corpus
    query = corpus["d3"].text
    capsys.readouterr()
    assert main(["search", str(tmp_path / "bm25"), query, "-k", "5", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)["hits"]
    rerank = ["--rerank-llm", tiny_llama_dir, "--rerank-depth", "5", "--corpus", str(beir_dir)]
    assert main(["search", str(tmp_path / "bm25"), query, "-k", "3", "--json", *rerank]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    reranker = QueryLikelihoodReranker.from_pretrained(tiny_llama_dir, precision="auto", depth=5)
    passages = {doc_id: (doc.title, doc.text) for doc_id, doc in corpus.items()}
    expected = reranker.rerank(query, [(h["id"], h["score"]) for h in plain], passages)[:3]
    assert [h["id"] for h in hits] == [doc_id for doc_id, _ in expected]
    assert [h["title"] for h in hits] == [corpus[doc_id].title for doc_id, _ in expected]

    assert main(["search", str(tmp_path / "bm25"), query, "--rerank-llm", tiny_llama_dir]) == 2
    assert "give --corpus" in capsys.readouterr().err
    assert main(["search", str(tmp_path / "bm25"), query, "--corpus", str(beir_dir)]) == 2
    assert "add --rerank-llm" in capsys.readouterr().err
    other = make_tiny_beir(tmp_path / "other", documents=12)
    assert main(["search", str(tmp_path / "bm25"), query, *rerank[:4], "--corpus", str(other)]) == 2
    error = capsys.readouterr().err
    assert str(tmp_path / "bm25") in error and "another corpus" in error


def test_eval_with_the_llm_reranker_scores_the_reranked_run_and_depth_one_changes_nothing(
    tmp_path, beir_dir, tiny_llama_dir, tiny_bert_dir, capsys
):
    # a dense model: BM25's tied scores would leave the order among equals to chance
    common = ["eval", "--beir", str(beir_dir), "--model", tiny_bert_dir, "--no-show-progress"]
    assert main([*common, "--out-dir", str(tmp_path / "plain")]) == 0
    rerank = ["--rerank-llm", tiny_llama_dir]
    assert main([*common, *rerank, "--rerank-depth", "1", "--out-dir", str(tmp_path / "one")]) == 0
    assert main([*common, *rerank, "--rerank-depth", "4", "--out-dir", str(tmp_path / "four")]) == 0
    printed = capsys.readouterr().out
    assert "top 4 reranked by" in printed
    summary = {
        name: json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("plain", "one", "four")
    }
    assert summary["one"]["metrics"] == summary["plain"]["metrics"]
    assert summary["four"]["rerank"]["depth"] == 4 and summary["four"]["rerank"]["llm"] == tiny_llama_dir
    assert summary["four"]["rerank"]["llm_sha256"] == directory_sha256(Path(tiny_llama_dir))
    plain = read_trec_run(tmp_path / "plain" / "run.trec")
    four = read_trec_run(tmp_path / "four" / "run.trec")
    dataset = load_beir(beir_dir)
    reranker = QueryLikelihoodReranker.from_pretrained(tiny_llama_dir, precision="auto", depth=4)
    passages = {doc_id: (doc.title, doc.text) for doc_id, doc in dataset.corpus.items()}
    moved = 0
    for query_id, scores in plain.items():
        hits = sorted(scores.items(), key=lambda hit: -hit[1])
        expected = [d for d, _ in reranker.rerank(dataset.queries[query_id], hits, passages)]
        got = sorted(four[query_id], key=four[query_id].get, reverse=True)
        assert got == expected
        assert set(got[:4]) == {d for d, _ in hits[:4]} and got[4:] == [d for d, _ in hits[4:]]
        moved += got[:4] != [d for d, _ in hits[:4]]
    assert moved > 0, "the reranker reordered no query's top 4"
    assert main([*common, *rerank, "--engine", "mteb"]) == 2
