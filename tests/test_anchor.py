"""The anchor against drift (``--anchor-weight``): KL(p_start || p) over the candidates DREAM's p covers, from a
frozen copy of the starting retriever, on a tiny BERT retriever and a tiny Llama."""

from __future__ import annotations

import pytest
import torch

from dreamir.objectives import DreamOptions
from tests.test_in_batch_candidates import _dream, _instances, _retriever_gradients


def _perturb(retriever, scale: float = 0.05) -> None:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in retriever.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)


def _logits_by_hand(objective, instance, retriever) -> torch.Tensor:
    """s / tau (tau 0.5) of one instance's own candidates by ``retriever``, from plain encodings."""
    texts = [d.full_text for d in instance.documents]
    with torch.no_grad():
        query = retriever([instance.query], is_query=True, max_length=objective.train_max_length)
        docs = retriever(texts, is_query=False, max_length=objective.train_max_length)
    return retriever.similarity(query, docs)[0] / 0.5


def _kl_by_hand(objective, instances, start_retriever) -> float:
    """KL(softmax(s_start / tau) || softmax(s / tau)) over each query's own candidates, from plain encodings."""
    total = 0.0
    for instance in instances:
        start, now = (
            torch.log_softmax(_logits_by_hand(objective, instance, r), dim=-1).double()
            for r in (start_retriever, objective.retriever)
        )
        total += float((start.exp() * (start - now)).sum())
    return total / len(instances)


@pytest.mark.parametrize("candidates", ["own", "batch"])
def test_the_anchor_is_zero_at_the_start_and_changes_nothing_there(tiny_bert_dir, tiny_llama_dir, candidates):
    plain = _dream(tiny_bert_dir, tiny_llama_dir, candidates=candidates)
    anchored = _dream(tiny_bert_dir, tiny_llama_dir, candidates=candidates, anchor_weight=2.0)
    instances = _instances()
    output, gradients = _retriever_gradients(anchored, instances)
    expected, expected_gradients = _retriever_gradients(plain, instances)
    assert output.logs["anchor_kl"] == pytest.approx(0.0, abs=1e-6)
    assert float(output.loss) == pytest.approx(float(expected.loss), rel=1e-6)
    assert gradients.keys() == expected_gradients.keys()
    for name, gradient in gradients.items():
        torch.testing.assert_close(gradient, expected_gradients[name], rtol=1e-4, atol=1e-7)


def test_the_anchor_measures_how_far_p_moved_and_pulls_it_back(tiny_bert_dir, tiny_llama_dir):
    import copy

    objective = _dream(tiny_bert_dir, tiny_llama_dir, anchor_weight=1.0)
    start = copy.deepcopy(objective.retriever)
    _perturb(objective.retriever)
    instances = _instances()
    output = objective(instances)
    kl = output.logs["anchor_kl"]
    assert kl > 1e-4
    assert kl == pytest.approx(_kl_by_hand(objective, instances, start), rel=1e-4)
    assert float(output.loss) == pytest.approx(output.logs["dream_loss"] + kl, rel=1e-5)
    # A descent step on the anchor alone brings p back towards the starting distribution.
    objective.zero_grad(set_to_none=True)
    scored, scores, mask = objective.scored_candidates(instances, "own")
    divergence = objective.anchor_divergence(scored, objective.candidate_distribution(scores, mask), mask)
    divergence.backward()
    with torch.no_grad():
        for parameter in objective.retriever.parameters():
            if parameter.grad is not None:
                parameter.sub_(parameter.grad * 0.5)
    assert _kl_by_hand(objective, instances, start) < float(divergence)


def test_the_starting_copy_is_frozen_and_outside_the_trained_state(tiny_bert_dir, tiny_llama_dir):
    objective = _dream(tiny_bert_dir, tiny_llama_dir, anchor_weight=1.0)
    names = {name for name, _ in objective.named_parameters()}
    assert not any("_starting" in name for name in names)
    objective.train()
    (start,) = objective._starting
    assert not start.training and not any(p.requires_grad for p in start.parameters())
    _perturb(objective.retriever)
    assert not torch.equal(next(start.parameters()), next(objective.retriever.parameters()))


def test_a_negative_anchor_weight_is_refused():
    with pytest.raises(ValueError, match="anchor-weight"):
        DreamOptions(anchor_weight=-0.1)
