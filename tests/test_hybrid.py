"""Hybrid retrieval: the fusion rules on hand-worked cases, the hybrid index (save, load, verify, search) and
the --hybrid / --fusion options of `dreamir index`, `search` and `eval`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dreamir.artefacts import ArtefactError
from dreamir.cli import main
from dreamir.data.beir import load_beir
from dreamir.evaluation import compute_metrics
from dreamir.retriever import Retriever
from dreamir.search import BM25Index, ExactIndex, HybridIndex, bm25_run, fuse, fuse_runs, load_index
from dreamir.search.fusion import interpolate, reciprocal_rank_fusion
from dreamir.search.runs import read_trec_run
from tests.tiny_beir import make_tiny_beir


@pytest.fixture(scope="module")
def beir_dir(tmp_path_factory):
    return make_tiny_beir(tmp_path_factory.mktemp("beir") / "tinyfact")


def test_reciprocal_rank_fusion_by_hand():
    lexical = [("a", 9.0), ("b", 5.0), ("c", 1.0)]
    dense = [("c", 0.9), ("a", 0.8), ("d", 0.1)]
    fused = reciprocal_rank_fusion([lexical, dense], k=4, rrf_k=60)
    expected = {"a": 1 / 61 + 1 / 62, "c": 1 / 63 + 1 / 61, "b": 1 / 62, "d": 1 / 63}
    assert [doc for doc, _ in fused] == ["a", "c", "b", "d"]
    assert dict(fused) == pytest.approx(expected, rel=1e-12)
    # Scores play no part: only ranks do.
    rescaled = [(doc, score * 1000 - 7) for doc, score in dense]
    assert reciprocal_rank_fusion([lexical, rescaled], k=4) == fused
    assert len(reciprocal_rank_fusion([lexical, dense], k=2)) == 2
    # Weighted: the dense ranking counted three times as much as the lexical one.
    weighted = dict(reciprocal_rank_fusion([lexical, dense], k=4, weights=[0.5, 1.5]))
    assert weighted == pytest.approx(
        {"a": 0.5 / 61 + 1.5 / 62, "c": 0.5 / 63 + 1.5 / 61, "b": 0.5 / 62, "d": 1.5 / 63}, rel=1e-12
    )
    assert fuse([lexical], [dense], 4, "rrf", weight=0.75) == [list(weighted.items())]
    assert fuse([lexical], [dense], 4, "rrf", weight=0.5) == [fused]


def test_ties_are_broken_by_document_id():
    fused = reciprocal_rank_fusion([[("b", 1.0)], [("a", 1.0)]], k=2)
    assert [doc for doc, _ in fused] == ["a", "b"]


def test_interpolation_by_hand_and_at_its_ends():
    lexical = [("a", 10.0), ("b", 6.0), ("c", 2.0)]  # normalised: a 1, b 0.5, c 0
    dense = [("c", 0.9), ("d", 0.5), ("a", 0.1)]  # normalised: c 1, d 0.5, a 0
    fused = dict(interpolate(lexical, dense, k=4, weight=0.25))
    assert fused == pytest.approx({"a": 0.75, "b": 0.375, "c": 0.25, "d": 0.125}, rel=1e-12)
    assert [doc for doc, _ in interpolate(lexical, dense, 3, weight=1.0)] == ["c", "d", "a"]
    assert [doc for doc, _ in interpolate(lexical, dense, 3, weight=0.0)] == ["a", "b", "c"]
    # One hit (or all tied) normalises to 1, an empty list to nothing.
    assert interpolate([("x", 3.0)], [], k=5, weight=0.5) == [("x", 0.5)]


def test_fuse_checks_its_arguments():
    with pytest.raises(ValueError, match="fusion must be one of"):
        fuse([[]], [[]], 3, method="borda")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="between 0 and 1"):
        fuse([[]], [[]], 3, method="interpolation", weight=1.5)
    with pytest.raises(ValueError, match="1 lexical but 2 dense"):
        fuse([[]], [[], []], 3)


def test_fused_runs_match_fused_hits_and_keep_a_query_one_run_lacks():
    lexical = {"q1": {"a": 3.0, "b": 2.0}, "q2": {"c": 1.0}}
    dense = {"q1": {"b": 0.9, "d": 0.2}}
    run = fuse_runs(lexical, dense, k=10)
    assert set(run) == {"q1", "q2"} and list(run["q2"]) == ["c"]
    assert list(run["q1"]) == [
        doc for doc, _ in fuse([[("a", 3.0), ("b", 2.0)]], [[("b", 0.9), ("d", 0.2)]], 10)[0]
    ]


def _hybrid(beir_dir, tiny_bert_dir, **fusion) -> tuple[HybridIndex, BM25Index, ExactIndex]:
    corpus = load_beir(beir_dir).corpus
    retriever = Retriever.from_pretrained(tiny_bert_dir).eval()
    encode = lambda texts: retriever.encode_queries(texts, show_progress=False)  # noqa: E731
    vectors = retriever.encode_documents([d.full_text for d in corpus.values()], show_progress=False)
    dense = ExactIndex(list(corpus), np.asarray(vectors), encode)
    lexical = BM25Index.from_corpus(corpus)
    return HybridIndex(lexical, dense, **fusion), lexical, dense


def test_hybrid_index_searches_both_parts_and_fuses_them(tmp_path, beir_dir, tiny_bert_dir):
    corpus = load_beir(beir_dir).corpus
    queries = [corpus["d3"].text, "capital city", "zzzz unknown words"]
    for fusion in ({}, {"method": "interpolation", "weight": 0.3}):
        hybrid, lexical, dense = _hybrid(beir_dir, tiny_bert_dir, **fusion)
        expected = fuse(lexical.search(queries, 100), dense.search(queries, 100), 5, **fusion)
        assert hybrid.search(queries, 5) == expected
        # A query with no word in the corpus is ranked by the dense part alone.
        assert [d for d, _ in hybrid.search(queries, 5)[2]] == [d for d, _ in dense.search(queries, 5)[2]]
        hybrid.save(tmp_path / f"h{len(fusion)}")
        loaded = load_index(tmp_path / f"h{len(fusion)}", dense.encode_queries)
        assert isinstance(loaded, HybridIndex) and loaded.search(queries, 5) == expected
        # Another method at query time takes its own default weight unless given one.
        assert loaded.with_fusion("rrf").search(queries, 5) == fuse(
            lexical.search(queries, 100), dense.search(queries, 100), 5, "rrf", 0.5
        )
        assert loaded.with_fusion(weight=0.9).weight == 0.9 and loaded.with_fusion().weight == loaded.weight
    with pytest.raises(ValueError, match="empty"):
        hybrid.search(["  "], 3)


def test_hybrid_parts_must_hold_one_corpus_and_damage_is_named(tmp_path, beir_dir, tiny_bert_dir):
    hybrid, lexical, dense = _hybrid(beir_dir, tiny_bert_dir)
    fewer = ExactIndex(dense.doc_ids[:-1], dense.vectors[:-1], dense.encode_queries)
    with pytest.raises(ValueError, match="different documents"):
        HybridIndex(lexical, fewer)
    hybrid.save(tmp_path / "h")
    vectors = tmp_path / "h" / "dense" / "embeddings.npy"
    assert vectors.is_file()
    vectors.write_bytes(vectors.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ArtefactError, match=r"embeddings\.npy"):
        load_index(tmp_path / "h")


def test_index_search_and_eval_with_hybrid_options(tmp_path, beir_dir, tiny_bert_dir, capsys):
    dataset = load_beir(beir_dir)
    out = tmp_path / "idx"
    assert (
        main(["index", tiny_bert_dir, str(beir_dir), "--out", str(out), "--hybrid", "--no-show-progress"])
        == 0
    )
    info = json.loads((out / "index.json").read_text())
    assert info["kind"] == "hybrid" and info["documents"] == len(dataset.corpus)
    assert info["fusion"] == "interpolation" and info["fusion_weight"] == 0.7
    capsys.readouterr()
    query = dataset.corpus["d3"].text
    assert main(["search", str(out), query, "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == 3 and hits[0]["title"] in {d.title for d in dataset.corpus.values()}
    assert (
        main(["search", str(out), query, "--fusion", "interpolation", "--fusion-weight", "1", "--json"]) == 0
    )
    dense_only = [h["id"] for h in json.loads(capsys.readouterr().out)["hits"]]

    # eval --hybrid: BM25's run and the dense model's run, fused, then scored.
    assert (
        main(["eval", "--model", tiny_bert_dir, "--beir", str(beir_dir), "--out-dir", str(tmp_path / "d")])
        == 0
    )
    dense_run = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert (
        main(
            [
                "eval",
                "--model",
                tiny_bert_dir,
                "--beir",
                str(beir_dir),
                "--hybrid",
                "--out-dir",
                str(tmp_path / "e"),
            ]
        )
        == 0
    )
    assert "fused with bm25 (interpolation, dense weight 0.7)" in capsys.readouterr().out
    summary = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert summary["fusion"] == {"method": "interpolation", "weight": 0.7, "rrf_k": 60, "depth": 100}
    fused = fuse_runs(bm25_run(dataset), read_trec_run(tmp_path / "d" / "run.trec"))
    assert summary["metrics"] == pytest.approx(compute_metrics(dataset.qrels, fused), rel=1e-9)
    assert summary["metrics"] != dense_run["metrics"]
    # The hybrid index evaluates the same; with interpolation at weight 1 it is the dense ranking.
    assert main(["eval", "--index", str(out), "--beir", str(beir_dir), "--out-dir", str(tmp_path / "f")]) == 0
    assert json.loads((tmp_path / "f" / "metrics.json").read_text())["metrics"] == pytest.approx(
        summary["metrics"], rel=1e-6
    )
    main(["index", tiny_bert_dir, str(beir_dir), "--out", str(tmp_path / "plain"), "--no-show-progress"])
    capsys.readouterr()
    assert main(["search", str(tmp_path / "plain"), query, "--json"]) == 0
    assert dense_only == [h["id"] for h in json.loads(capsys.readouterr().out)["hits"]]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["index", "bm25", "{beir}", "--out", "{tmp}/x", "--hybrid"], "fuses BM25 with a dense model"),
        (["eval", "--model", "bm25", "--beir", "{beir}", "--hybrid"], "fuses BM25 with a dense model"),
        (["eval", "--model", "{bert}", "--beir", "{beir}", "--fusion", "interpolation"], "add --hybrid"),
        (["eval", "--model", "{bert}", "--beir", "{beir}", "--hybrid", "--engine", "mteb"], "not with bm25"),
        (
            ["index", "{bert}", "{beir}", "--out", "{tmp}/x", "--hybrid", "--fusion-weight", "2"],
            "between 0 and 1",
        ),
    ],
)
def test_fusion_options_that_cannot_apply_are_refused(
    tmp_path, beir_dir, tiny_bert_dir, capsys, argv, message
):
    values = {"beir": str(beir_dir), "tmp": str(tmp_path), "bert": tiny_bert_dir}
    assert main([a.format(**values) for a in argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_fusion_options_on_a_plain_index_are_refused(tmp_path, beir_dir, capsys):
    assert main(["index", "bm25", str(beir_dir), "--out", str(tmp_path / "bm25")]) == 0
    assert main(["search", str(tmp_path / "bm25"), "capital", "--fusion", "rrf"]) == 2
    assert "apply to hybrid indexes" in capsys.readouterr().err
