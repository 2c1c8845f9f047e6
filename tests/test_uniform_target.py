"""DREAM's target at uniform p (``--dream-target uniform``): KL(q || p) towards q = softmax(-eta * n * dL/dp at
uniform p), the LLM's judgement at a fixed point, on a tiny BERT retriever and a tiny Llama."""

from __future__ import annotations

import pytest
import torch

from dreamir.objectives import DreamOptions
from tests.test_anchor import _perturb
from tests.test_in_batch_candidates import _dream, _instances
from tests.test_proximal_target import mean_kl_by_hand

# The tiny LLM's slopes are small: a large step gives a target far from uniform.
ETA = 30.0


def _target_by_hand(objective, instance, eta: float) -> torch.Tensor:
    """One query's q from its own prompt and one LLM call, at uniform p over its candidates."""
    llm = objective.llm
    batch = llm.collate(
        [llm.encode(instance.query, [(d.title, d.text) for d in instance.documents], instance.target)]
    )
    count = len(instance.documents)
    point = torch.full((1, count), 1.0 / count, requires_grad=True)
    loss = llm.target_loss(batch, point, reuse_prefix=False)
    (slope,) = torch.autograd.grad(loss, point)
    tokens = int((batch.labels[0, 1:] != -100).sum())
    return torch.softmax(-eta * tokens * slope[0].double(), dim=-1)


def _pooled(objective, candidates):
    pooled, scores, mask = objective.scored_candidates(_instances(), candidates)
    batch = objective.llm.collate(
        [objective.llm.encode(i.query, [(d.title, d.text) for d in i.documents], i.target) for i in pooled]
    )
    return pooled, objective.candidate_distribution(scores, mask), mask, batch


@pytest.mark.parametrize("candidates", ["own", "batch"])
def test_the_target_and_the_loss_equal_a_hand_computation(tiny_bert_dir, tiny_llama_dir, candidates):
    objective = _dream(
        tiny_bert_dir, tiny_llama_dir, candidates=candidates, target="uniform", proximal_step=ETA
    )
    pooled, probs, mask, batch = _pooled(objective, candidates)
    target, losses = objective.uniform_target(batch, mask)
    expected = [_target_by_hand(objective, instance, ETA) for instance in pooled]
    for row, hand in enumerate(expected):
        torch.testing.assert_close(target[row, : len(hand)].double(), hand, rtol=1e-4, atol=1e-6)
        assert float(target[row, len(hand) :].sum()) == 0.0  # empty slots get nothing
        # The LLM's judgement is in it: not uniform.
        assert float(hand.max() - hand.min()) > 1e-3
    assert torch.allclose(target.sum(-1), torch.ones(len(pooled)), atol=1e-6)

    output = objective(_instances())
    assert float(output.loss.detach()) == pytest.approx(mean_kl_by_hand(expected, probs), rel=1e-4)
    assert output.logs["dream_loss"] == pytest.approx(float(losses.mean()), rel=1e-6)
    assert output.logs["target_entropy"] > 0.0


def test_the_target_does_not_follow_the_retriever(tiny_bert_dir, tiny_llama_dir):
    """A fixed point: the retriever's p changes, the judgement stays; the gradient target's would move."""
    objective = _dream(tiny_bert_dir, tiny_llama_dir, target="uniform", proximal_step=ETA)
    _, probs, mask, batch = _pooled(objective, "own")
    before, _ = objective.uniform_target(batch, mask)
    _perturb(objective.retriever)
    _, moved_probs, _, _ = _pooled(objective, "own")
    assert not torch.allclose(probs, moved_probs, atol=1e-3)
    after, _ = objective.uniform_target(batch, mask)
    torch.testing.assert_close(after, before, rtol=1e-6, atol=1e-7)


def test_the_options_accept_it():
    assert DreamOptions(dream_target="uniform").dream_target == "uniform"
    from dreamir.adapt.arguments import AdaptArguments

    assert AdaptArguments(corpus="c", out="o", dream_target="uniform").dream_target == "uniform"
