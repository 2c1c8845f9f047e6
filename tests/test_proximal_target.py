"""DREAM's proximal target (``--dream-target proximal``): KL(q || p) towards q = softmax(log p_start + eta * g),
g = -dL_b/dp at the current p, on a tiny BERT retriever and a tiny Llama."""

from __future__ import annotations

import copy

import pytest
import torch

from dreamir.objectives import DreamOptions
from tests.test_anchor import _logits_by_hand, _perturb
from tests.test_in_batch_candidates import _dream, _instances, _retriever_gradients


def _target_by_hand(objective, instances, start_retriever, eta: float) -> list[torch.Tensor]:
    """Each query's q from plain encodings and one LLM call per query (its own loss, its own slope)."""
    targets = []
    for instance in instances:
        start, now = (_logits_by_hand(objective, instance, r) for r in (start_retriever, objective.retriever))
        point = torch.softmax(now, dim=-1)[None].requires_grad_(True)
        llm = objective.llm
        batch = llm.collate(
            [llm.encode(instance.query, [(d.title, d.text) for d in instance.documents], instance.target)]
        )
        loss = llm.target_loss(batch, point, reuse_prefix=False)
        (slope,) = torch.autograd.grad(loss, point)
        targets.append(torch.softmax(torch.log_softmax(start, -1) - eta * slope[0], dim=-1).double())
    return targets


def mean_kl_by_hand(targets: list[torch.Tensor], probs: torch.Tensor) -> float:
    """KL(q || p) of each query's target q over its own candidates, averaged over the queries."""
    return sum(
        float((q * (q.log() - probs[b, : len(q)].detach().double().log())).sum())
        for b, q in enumerate(targets)
    ) / len(targets)


# The tiny LLM's slopes are small: a large step gives a KL far from float32's cancellation.
ETA = 30.0


@pytest.mark.parametrize("candidates", ["own", "batch"])
def test_the_target_and_the_loss_equal_a_hand_computation(tiny_bert_dir, tiny_llama_dir, candidates):
    objective = _dream(
        tiny_bert_dir, tiny_llama_dir, candidates=candidates, target="proximal", proximal_step=ETA
    )
    start = copy.deepcopy(objective.retriever)
    _perturb(objective.retriever)
    instances = _instances()
    pooled, scores, mask = objective.scored_candidates(instances, candidates)
    probs = objective.candidate_distribution(scores, mask)
    batch = objective.llm.collate(
        [objective.llm.encode(i.query, [(d.title, d.text) for d in i.documents], i.target) for i in pooled]
    )
    target, losses = objective.proximal_target(pooled, batch, probs, mask)
    expected = _target_by_hand(objective, pooled, start, eta=ETA)
    for row, hand in enumerate(expected):
        torch.testing.assert_close(target[row, : len(hand)].double(), hand, rtol=1e-4, atol=1e-6)
    assert torch.allclose(target.sum(-1), torch.ones(len(pooled)), atol=1e-6)
    # The target moved away from p_start: the LLM's judgement is in it.
    assert not torch.allclose(
        target[0, : len(expected[0])].double(),
        torch.softmax(objective.starting_scores(pooled, mask)[0, : len(expected[0])] / 0.5, -1).double(),
        atol=1e-4,
    )

    output = objective(instances)
    assert float(output.loss.detach()) == pytest.approx(mean_kl_by_hand(expected, probs), rel=1e-4)
    assert output.logs["dream_loss"] == pytest.approx(float(losses.mean()), rel=1e-6)
    assert "target_entropy" in output.logs


def test_a_small_step_is_dreams_step_scaled_by_eta(tiny_bert_dir, tiny_llama_dir):
    """At the start (p = p_start), grad KL(q || p) = eta * grad L to first order in eta: the same direction as
    DREAM's own step. One query, so DREAM's token mean and the proximal per-query mean weigh alike."""
    eta = 1.0  # the tiny LLM's slopes are ~1e-3: eta * g stays small, far above float32's resolution of p
    instances = _instances()[:1]
    plain = _dream(tiny_bert_dir, tiny_llama_dir)
    proximal = _dream(tiny_bert_dir, tiny_llama_dir, target="proximal", proximal_step=eta)
    _, dream_gradients = _retriever_gradients(plain, instances)
    _, gradients = _retriever_gradients(proximal, instances)
    assert gradients.keys() == dream_gradients.keys()
    flat = torch.cat([gradients[n].flatten() for n in sorted(gradients)])
    reference = torch.cat([dream_gradients[n].flatten() for n in sorted(dream_gradients)]) * eta
    assert torch.linalg.vector_norm(reference) > 0
    assert torch.linalg.vector_norm(flat - reference) <= 1e-2 * torch.linalg.vector_norm(reference)


@pytest.mark.parametrize(("target", "eta"), [("proximal", 3.0), ("uniform", 30.0)])
def test_a_descent_step_moves_p_towards_the_target(tiny_bert_dir, tiny_llama_dir, target, eta):
    """For both KL targets (the uniform one is tests/test_uniform_target.py's)."""
    objective = _dream(tiny_bert_dir, tiny_llama_dir, target=target, proximal_step=eta)
    instances = _instances()
    before = float(objective(instances).loss.detach())
    optimiser = torch.optim.SGD(objective.retriever.parameters(), lr=0.5)
    for _ in range(3):
        optimiser.zero_grad()
        objective(instances).loss.backward()
        optimiser.step()
    assert float(objective(instances).loss.detach()) < before


def test_the_options_name_the_bad_value():
    with pytest.raises(ValueError, match="--proximal-step"):
        DreamOptions(proximal_step=0.0)
    assert DreamOptions(dream_target="proximal").dream_target == "proximal"


class _Built(Exception):
    pass


def test_adapt_hands_its_dream_options_to_the_objective(monkeypatch, tiny_bert_dir, tmp_path):
    import dreamir.adapt.training as training
    from dreamir.adapt.arguments import AdaptArguments

    seen = {}

    def build_objective(retriever, objective, llm, options):
        seen["options"] = options
        raise _Built

    monkeypatch.setattr(training, "build_objective", build_objective)
    args = AdaptArguments(
        corpus=str(tmp_path),
        out=str(tmp_path / "out"),
        retriever=tiny_bert_dir,
        dream_candidates="batch",
        anchor_weight=0.5,
        dream_target="proximal",
        proximal_step=2.0,
    )
    with pytest.raises(_Built):
        training.build_trainer(args, tmp_path, tmp_path / "heads.json", [], [], {}, {}, {})
    (options,) = seen["options"]
    assert (options.dream_candidates, options.anchor_weight) == ("batch", 0.5)
    assert (options.dream_target, options.proximal_step) == ("proximal", 2.0)
