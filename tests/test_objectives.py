"""Every objective on tiny models: finite loss, gradients only in the retriever, and a loss that must go
down on a fixed toy batch does go down."""

import pytest
import torch

from dreamir.data.beir import Document
from dreamir.llm.frozen import FrozenLLM
from dreamir.objectives import DreamLoss, InfoNCELoss, ReplugLoss, TrainingInstance
from dreamir.retriever import Retriever, RetrieverConfig

DOCS = [
    Document("d0", "france", "paris is the capital of france"),
    Document("d1", "germany", "berlin is the capital of germany"),
    Document("d2", "italy", "rome is the capital of italy"),
    Document("d3", "moon", "the moon and the sun"),
]
INSTANCES = [
    TrainingInstance("capital of france?", "paris", [DOCS[0], DOCS[1], DOCS[3]], 0, DOCS[0]),
    TrainingInstance("capital of italy?", "rome", [DOCS[3], DOCS[2], DOCS[1]], 1, DOCS[2]),
]


def _make(kind, bert_dir, llama_dir):
    torch.manual_seed(0)
    retriever = Retriever.from_pretrained(bert_dir, RetrieverConfig(pooling="mean", max_length=32))
    llm = FrozenLLM.from_pretrained(llama_dir, heads=[(0, 1), (1, 2)])
    if kind == "dream":
        return DreamLoss(retriever, llm, temperature=0.1)
    if kind == "replug":
        return ReplugLoss(retriever, llm, temperature=0.1, beta=0.5)
    return InfoNCELoss(retriever, temperature=0.1)


@pytest.mark.parametrize("kind", ["dream", "infonce", "replug"])
def test_objective_trains_only_the_retriever_and_lowers_its_loss(kind, tiny_bert_dir, tiny_llama_dir):
    objective = _make(kind, tiny_bert_dir, tiny_llama_dir)
    objective.retriever.eval()  # no dropout: the loss on a fixed batch must fall monotonically enough
    trainable = [p for p in objective.parameters() if p.requires_grad]
    retriever_params = {id(p) for p in objective.retriever.parameters()}
    assert trainable and all(id(p) in retriever_params for p in trainable)
    optimizer = torch.optim.Adam(trainable, lr=3e-3)
    losses = []
    for _ in range(12):
        optimizer.zero_grad()
        output = objective(INSTANCES)
        assert torch.isfinite(output.loss)
        output.loss.backward()
        losses.append(float(output.loss.detach()))
        optimizer.step()
    if hasattr(objective, "llm"):
        assert all(p.grad is None for p in objective.llm.parameters())
    assert losses[-1] < losses[0] - 1e-4, losses


def test_replug_target_distribution_is_computed_once(tiny_bert_dir, tiny_llama_dir):
    objective = _make("replug", tiny_bert_dir, tiny_llama_dir)
    scored = []  # (query, document, target) rows the LLM reads, call by call
    target_loss = objective.llm.target_loss

    def counting(batch, *args, **kwargs):
        scored.append(len(batch.labels))
        return target_loss(batch, *args, **kwargs)

    objective.llm.target_loss = counting
    first = objective.target_log_likelihood(INSTANCES)
    assert torch.isfinite(first).all() and sum(scored) == sum(len(i.documents) for i in INSTANCES)
    scored.clear()
    torch.testing.assert_close(objective.target_log_likelihood(INSTANCES), first)
    assert scored == []  # the LLM's judgement is reused, not recomputed


def test_infonce_needs_labels(tiny_bert_dir, tiny_llama_dir):
    objective = _make("infonce", tiny_bert_dir, tiny_llama_dir)
    with pytest.raises(ValueError, match="gold"):
        objective([TrainingInstance("q", "a", DOCS[:2])])


def test_infonce_logs_p_gold_over_each_querys_own_candidates(tiny_bert_dir, tiny_llama_dir):
    objective = _make("infonce", tiny_bert_dir, tiny_llama_dir)
    objective.retriever.eval()
    with torch.no_grad():
        logs = objective(INSTANCES).logs
        probs = objective.candidate_distribution(*objective.candidate_scores(INSTANCES))
    expected = objective.gold_logs(probs, INSTANCES)
    assert logs["p_gold"] == pytest.approx(expected["p_gold"], abs=1e-6)
    assert logs["gold_top1"] == expected["gold_top1"]


def test_replug_logs_how_sharp_its_target_is(tiny_bert_dir, tiny_llama_dir):
    objective = _make("replug", tiny_bert_dir, tiny_llama_dir)
    with torch.no_grad():
        logs = objective(INSTANCES).logs
        q = torch.softmax(objective.target_log_likelihood(INSTANCES) / objective.beta, -1)
    rows = [(b, i.gold_index) for b, i in enumerate(INSTANCES)]
    assert logs["target_p_gold"] == pytest.approx(float(torch.stack([q[b, g] for b, g in rows]).mean()))
    assert 0.0 <= logs["target_entropy"] <= torch.log(torch.tensor(3.0)).item() + 1e-6
    assert 0.0 <= logs["entropy"] <= torch.log(torch.tensor(3.0)).item() + 1e-6
