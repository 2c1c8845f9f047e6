"""One similarity: a retriever's ``config.similarity`` is what its objectives train on and what evaluation
and search rank by, also for a retriever without L2 normalisation."""

import json

import numpy as np
import pytest
import torch

from dreamir.cli import main
from dreamir.data.beir import Document
from dreamir.evaluation import exact_search
from dreamir.llm.frozen import FrozenLLM
from dreamir.objectives import DreamLoss, InfoNCELoss
from dreamir.retriever import Retriever, RetrieverConfig
from dreamir.similarity import similarity_matrix
from tests.test_objectives import DOCS, INSTANCES


def test_similarity_matrix_by_name():
    q, d = np.array([[3.0, 4.0]]), np.array([[1.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(similarity_matrix(q, d, "dot"), [[3.0, 8.0]])
    np.testing.assert_allclose(similarity_matrix(q, d, "cosine"), [[0.6, 0.8]], rtol=1e-6)
    with pytest.raises(ValueError, match="similarity must be one of"):
        similarity_matrix(q, d, "euclidean")


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("kind", ["dream", "infonce"])
def test_unnormalised_retriever_trains_and_evaluates_on_its_own_similarity(
    tiny_bert_dir, tiny_llama_dir, similarity, kind
):
    retriever = Retriever.from_pretrained(
        tiny_bert_dir, RetrieverConfig(pooling="cls", normalize=False, similarity=similarity, max_length=32)
    ).eval()
    if kind == "dream":
        objective = DreamLoss(
            retriever, FrozenLLM.from_pretrained(tiny_llama_dir, heads=[(0, 1)]), temperature=0.1
        )
    else:
        objective = InfoNCELoss(retriever, temperature=0.1)

    # The scores the objective trains on are the ones evaluation computes from the encoded texts.
    with torch.no_grad():
        scores, mask = objective.candidate_scores(INSTANCES)
    queries = retriever.encode_queries([i.query for i in INSTANCES])
    documents = retriever.encode_documents([d.full_text for d in DOCS])
    expected = similarity_matrix(queries, documents, similarity)
    for b, instance in enumerate(INSTANCES):
        columns = [int(d.doc_id[1:]) for d in instance.documents]
        np.testing.assert_allclose(scores[b, mask[b]].numpy(), expected[b, columns], rtol=1e-5, atol=1e-5)
    run = exact_search(queries, documents, ["q0", "q1"], [d.doc_id for d in DOCS], k=4, similarity=similarity)
    for b, query_id in enumerate(["q0", "q1"]):
        np.testing.assert_allclose([run[query_id][d.doc_id] for d in DOCS], expected[b], rtol=1e-5, atol=1e-5)
    if similarity == "dot":  # unnormalised dot products are not cosines: the choice is visible
        assert not np.allclose(expected, similarity_matrix(queries, documents, "cosine"), atol=1e-3)

    # A training step through that similarity reaches the retriever.
    before = [p.detach().clone() for p in retriever.trainable_parameters()]
    optimizer = torch.optim.SGD(retriever.trainable_parameters(), lr=1e-2)
    output = objective(INSTANCES)
    assert torch.isfinite(output.loss)
    output.loss.backward()
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, retriever.trainable_parameters(), strict=True))


def test_evaluating_a_saved_model_ranks_by_its_saved_similarity(tiny_bert_dir, tmp_path):
    from dreamir.data.beir import BeirDataset
    from dreamir.evaluation import evaluate_encoder
    from dreamir.workflow import evaluate_model

    config = RetrieverConfig(pooling="mean", normalize=False, similarity="dot", max_length=32)
    retriever = Retriever.from_pretrained(tiny_bert_dir, config)
    retriever.save(tmp_path / "dot")
    texts = [d.full_text for d in DOCS] + ["paris", "the sun", "water and fire", "a large old city"]
    corpus = {f"d{i}": Document(f"d{i}", "", text) for i, text in enumerate(texts)}
    queries = {f"q{i}": text for i, text in enumerate(["capital?", "moon", "river", "who", "red dog"])}
    # Each query's gold: its best document by dot product, which cosine ranks lower for some queries.
    scores = similarity_matrix(
        retriever.encode_queries(list(queries.values())),
        retriever.encode_documents([d.full_text for d in corpus.values()]),
        "dot",
    )
    qrels = {q: {f"d{int(scores[i].argmax())}": 1} for i, q in enumerate(queries)}
    dataset = BeirDataset("toy", corpus, queries, qrels)
    by_name = {
        name: evaluate_encoder(dataset, retriever.encode_queries, retriever.encode_documents, similarity=name)
        for name in ("dot", "cosine")
    }
    assert by_name["dot"]["mrr@10"] == 1.0 > by_name["cosine"]["mrr@10"]
    assert evaluate_model(str(tmp_path / "dot"), dataset, show_progress=False) == pytest.approx(
        by_name["dot"]
    )
    # `dreamir eval` (and the index it searches) rank by the saved similarity too.
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": d.doc_id, "title": "", "text": d.text}) + "\n" for d in corpus.values())
    )
    (beir / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": text}) + "\n" for q, text in queries.items())
    )
    (beir / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, r in qrels.items() for d in r)
    )
    args = ["--model", str(tmp_path / "dot"), "--beir", str(beir), "--no-show-progress"]
    assert main(["eval", *args, "--out-dir", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    assert metrics == pytest.approx(by_name["dot"])
    assert main(["index", str(tmp_path / "dot"), str(beir), "--out", str(tmp_path / "index")]) == 0
    assert json.loads((tmp_path / "index" / "index.json").read_text())["similarity"] == "dot"
