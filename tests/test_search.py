"""One search interface, three implementations: equal rankings where they must be, save/load, run files."""

from __future__ import annotations

import numpy as np
import pytest

from dreamir.candidates import BM25Index as ReExportedBM25
from dreamir.data.beir import Document
from dreamir.data.errors import DataFormatError
from dreamir.data.training import TrainingExample
from dreamir.evaluation import exact_search
from dreamir.search import (
    BM25Index,
    ExactIndex,
    FaissIndex,
    IndexFormatError,
    SearchIndex,
    load_index,
    mine_candidates,
)
from dreamir.search.runs import read_trec_run, write_trec_run
from dreamir.similarity import similarity_matrix as scores

CORPUS = {
    "paris": Document("paris", "Paris", "Paris is the capital and largest city of France."),
    "berlin": Document("berlin", "Berlin", "Berlin is the capital of Germany, on the Spree river."),
    "rome": Document("rome", "Rome", "Rome is the capital of Italy and was the centre of an empire."),
    "nile": Document("nile", "Nile", "The Nile is a major river flowing north through Egypt."),
}


@pytest.fixture(scope="module")
def vectors() -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    docs = rng.normal(size=(500, 16)).astype(np.float32)
    queries = rng.normal(size=(40, 16)).astype(np.float32)
    return [f"d{i}" for i in range(500)], docs, queries


def _ids(hits) -> list[list[str]]:
    return [[doc_id for doc_id, _ in ranked] for ranked in hits]


def test_flat_faiss_ranks_exactly_as_exact_search_and_hnsw_nearly(vectors):
    doc_ids, docs, queries = vectors
    exact = ExactIndex(doc_ids, docs).search_vectors(queries, 10)
    flat = FaissIndex(doc_ids, docs, faiss_kind="flat").search_vectors(queries, 10)
    assert _ids(flat) == _ids(exact)
    assert np.allclose([s for r in flat for _, s in r], [s for r in exact for _, s in r], atol=1e-5)
    # Cosine: the scores are those of normalised vectors, best first.
    best = scores(queries[:1], docs, "cosine")[0].max()
    assert exact[0][0][1] == pytest.approx(float(best), abs=1e-6)
    hnsw = FaissIndex(doc_ids, docs, faiss_kind="hnsw", hnsw_m=16, ef_search=64).search_vectors(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(_ids(hnsw), _ids(exact), strict=True)])
    assert recall >= 0.95
    # The evaluation's exact search is the same search.
    run = exact_search(queries, docs, [f"q{i}" for i in range(40)], doc_ids, k=10)
    assert [list(run[f"q{i}"]) for i in range(40)] == _ids(exact)


def test_dot_similarity_keeps_the_vectors_length(vectors):
    doc_ids, docs, queries = vectors
    scaled = docs.copy()
    scaled[7] *= 100  # a long vector wins every dot product it is positive in, not cosine
    dot = ExactIndex(doc_ids, scaled, similarity="dot").search_vectors(queries, 1)
    cosine = ExactIndex(doc_ids, scaled).search_vectors(queries, 1)
    assert sum(r[0][0] == "d7" for r in dot) > sum(r[0][0] == "d7" for r in cosine)
    with pytest.raises(ValueError, match="similarity must be one of"):
        ExactIndex(doc_ids, docs, similarity="euclid")


@pytest.mark.parametrize("kind", ["exact", "flat", "hnsw"])
def test_dense_indexes_save_load_and_search_texts(tmp_path, vectors, kind):
    doc_ids, docs, queries = vectors
    table = {f"text {i}": queries[i] for i in range(len(queries))}

    def encode(texts: list[str]) -> np.ndarray:
        return np.stack([table[t] for t in texts])

    index = (
        ExactIndex(doc_ids, docs, encode)
        if kind == "exact"
        else FaissIndex(doc_ids, docs, encode, faiss_kind=kind)
    )
    index.save(tmp_path / "index", {"model": "test"})
    loaded = load_index(tmp_path / "index", encode)
    assert isinstance(loaded, SearchIndex) and loaded.kind == index.kind and len(loaded) == 500
    texts = list(table)[:5]
    assert _ids(loaded.search(texts, 5)) == _ids(index.search(texts, 5))
    run = loaded.run({"a": texts[0], "b": texts[1]}, k=3)
    assert list(run) == ["a", "b"] and all(len(hits) == 3 for hits in run.values())
    # A second save replaces the earlier index.
    index.save(tmp_path / "index")
    assert len(load_index(tmp_path / "index", encode)) == 500
    with pytest.raises(ValueError, match="no query encoder"):
        load_index(tmp_path / "index").search(["text 0"], 3)


def test_bm25_index_saves_loads_and_is_still_importable_from_candidates(tmp_path):
    assert ReExportedBM25 is BM25Index
    index = BM25Index.from_corpus(CORPUS)
    index.save(tmp_path / "bm25")
    loaded = load_index(tmp_path / "bm25")
    queries = ["capital of Germany", "river in Egypt"]
    assert loaded.search(queries, 2) == index.search(queries, 2)
    assert loaded.search(queries, 1)[0][0][0] == "berlin"


def test_bad_index_directories_are_named(tmp_path):
    with pytest.raises(IndexFormatError, match=r"no index\.json"):
        load_index(tmp_path)
    (tmp_path / "index.json").write_text('{"kind": "annoy"}')
    with pytest.raises(IndexFormatError, match="unknown index kind 'annoy'"):
        load_index(tmp_path)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(DataFormatError, match=r"index\.json:1: malformed JSON"):
        load_index(tmp_path)


def test_mining_takes_any_index(vectors):
    doc_ids, docs, queries = vectors
    table = {"q0": queries[0], "q1": queries[1]}
    index = ExactIndex(doc_ids, docs, lambda texts: np.stack([table[t] for t in texts]))
    examples = [TrainingExample("q0", "t", gold_id="d1"), TrainingExample("q1", "t")]
    mined = mine_candidates(examples, index, k=4)
    assert [e.candidate_ids for e in mined] == _ids(index.search_vectors(queries[:2], 4))


def test_trec_run_files_round_trip_in_trec_order(tmp_path):
    run = {"q1": {"a": 0.5, "b": 0.9, "c": 0.5}, "q2": {"x": 1.0}}
    path = write_trec_run(run, tmp_path / "run.trec", tag="test")
    lines = path.read_text().splitlines()
    assert lines[0] == "q1 Q0 b 1 0.9 test"
    assert [line.split()[2] for line in lines[:3]] == ["b", "c", "a"]  # ties: doc id descending
    assert read_trec_run(path) == run
    (tmp_path / "bad.trec").write_text("q1 Q0 a 1 0.5 t\nq1 Q0 b 2 high t\n")
    with pytest.raises(DataFormatError, match=r"bad\.trec:2: field 'score'"):
        read_trec_run(tmp_path / "bad.trec")
