"""In-batch candidates (``--dream-candidates batch``, ``--replug-candidates batch``): every query of a batch
is scored against every distinct candidate of the batch, on a tiny BERT retriever and a tiny Llama."""

from collections import Counter

import pytest
import torch

from dreamir.arguments import field_defaults
from dreamir.data.sampling import SamplingArguments, step_instances
from dreamir.llm.frozen import FrozenLLM
from dreamir.llm.prompt import PromptSettings
from dreamir.objectives import DreamLoss, DreamOptions, ReplugLoss, ReplugOptions
from dreamir.retriever import Retriever, RetrieverConfig
from tests.test_dream_objective import CORPUS, EXAMPLES
from tests.tolerances import assert_close_to_scale

HEADS = [(0, 1), (1, 2)]


def _instances():
    """The three examples, candidates shuffled as the trainer draws them: ten candidates, d0, d2, d4 and d5
    each twice, so six distinct passages."""
    return step_instances(
        EXAMPLES, CORPUS, SamplingArguments(num_candidates=4), seed=0, step=0, per_process=3
    )


def _pool_ids(instances):
    """The pool's expected order: first appearance over the batch's queries."""
    return list(dict.fromkeys(d.doc_id for i in instances for d in i.documents))


def _retriever(bert_dir):
    torch.manual_seed(0)
    retriever = Retriever.from_pretrained(bert_dir, RetrieverConfig(pooling="mean", max_length=32))
    return retriever.eval()  # no dropout: every call is the same function of the weights


def _dream(bert_dir, llama_dir, layout="parallel", **kwargs):
    llm = FrozenLLM.from_pretrained(llama_dir, heads=HEADS, prompt=PromptSettings(document_layout=layout))
    return DreamLoss(_retriever(bert_dir), llm, temperature=0.5, **kwargs)


def _retriever_gradients(objective, instances):
    objective.zero_grad(set_to_none=True)
    output = objective(instances)
    output.loss.backward()
    named = objective.retriever.named_parameters()
    return output, {n: p.grad.clone() for n, p in named if p.grad is not None}


def test_in_batch_prompts_hold_every_candidate_of_the_batch_once(tiny_bert_dir, tiny_llama_dir):
    objective = _dream(tiny_bert_dir, tiny_llama_dir, candidates="batch")
    instances = _instances()
    assert sum(len(i.documents) for i in instances) == 10 and len(_pool_ids(instances)) == 6
    seen = {}

    def target_loss(batch, probs, **kwargs):
        seen["batch"], seen["probs"] = batch, probs
        return FrozenLLM.target_loss(objective.llm, batch, probs, **kwargs)

    objective.llm.target_loss = target_loss
    output = objective(instances)

    pooled, scores, mask = objective.in_batch_scores(instances)
    assert [d.doc_id for d in pooled[0].documents] == _pool_ids(instances)
    assert all(i.documents == pooled[0].documents for i in pooled)
    assert scores.shape == (3, 6) and mask.all()
    for original, pooled_instance in zip(instances, pooled, strict=True):
        assert pooled_instance.documents[pooled_instance.gold_index].doc_id == original.gold.doc_id

    # Every prompt reads each of the six passages exactly once, whatever its own candidates were.
    llm = objective.llm
    expected = Counter(
        tuple(llm.encode("", [(d.title, d.text)], None).document_ids[0]) for d in pooled[0].documents
    )
    batch, probs = seen["batch"], seen["probs"]
    assert len(expected) == 6 and batch.candidate_mask.all()
    for row in batch.document_ids:
        assert Counter(map(tuple, row)) == expected
    # The rows read the same cached documents: their keys and values are held once, not once per row.
    assert llm._prefix_cache(batch).keys.shape[1] == 1
    # p is a distribution over the whole pool, and the one the retriever's scores give.
    assert probs.shape == (3, 6)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(probs, objective.candidate_distribution(scores, mask), atol=1e-6, rtol=1e-5)
    assert output.logs["pool_size"] == 6.0
    assert 0.0 <= output.logs["p_gold"] <= 1.0


def test_the_pool_remaps_a_gold_given_only_by_its_index(tiny_bert_dir, tiny_llama_dir):
    objective = _dream(tiny_bert_dir, tiny_llama_dir, candidates="batch")
    instances = _instances()
    for instance in instances:
        instance.gold = None  # the index into the own candidates is all that is known
    pooled, _, _ = objective.in_batch_scores(instances)
    for original, pooled_instance in zip(instances, pooled, strict=True):
        own_gold = original.documents[original.gold_index].doc_id
        assert pooled_instance.documents[pooled_instance.gold_index].doc_id == own_gold


@pytest.mark.parametrize("layout", ["parallel", "sequential"])
def test_cached_in_batch_step_equals_its_one_pass_reference(tiny_bert_dir, tiny_llama_dir, layout):
    """The cached step (document cache in the parallel layout, a no-grad prefix in the sequential one)
    against the full prompt in one pass (the block mask in the parallel layout): loss and the gradient of
    every retriever weight, float32."""
    instances = _instances()
    cached = _dream(tiny_bert_dir, tiny_llama_dir, layout, candidates="batch")
    reference = _dream(tiny_bert_dir, tiny_llama_dir, layout, candidates="batch", reuse_prefix=False)
    assert cached.llm.precision == "float32"
    output, gradients = _retriever_gradients(cached, instances)
    expected, expected_gradients = _retriever_gradients(reference, instances)
    assert output.logs["pool_size"] == 6.0
    assert_close_to_scale(output.loss, expected.loss, rtol=1e-5)
    assert gradients.keys() == expected_gradients.keys() and gradients
    assert any(g.abs().sum() > 0 for g in gradients.values())
    # One vector, held to its own scale: some weights' true gradient is zero (a key bias shifts every logit
    # of a row alike), and their float noise says nothing on its own.
    flat = torch.cat([gradients[n].flatten() for n in sorted(gradients)])
    expected_flat = torch.cat([expected_gradients[n].flatten() for n in sorted(gradients)])
    assert_close_to_scale(flat, expected_flat, rtol=1e-5)


def test_the_loss_module_keeps_each_querys_own_candidates_bit_for_bit(tiny_bert_dir, tiny_llama_dir):
    """Defaults: in-batch candidates for DREAM's command-line options (a run recorded before the option
    existed counts as own candidates), own for REPLUG-LSR's and for the loss module; and the module's
    default step is exactly the step written out as it was before the option existed (scores over the own
    candidates, p, one prompt per query)."""
    assert DreamOptions().dream_candidates == "batch" and ReplugOptions().replug_candidates == "own"
    assert field_defaults(DreamOptions)["dream_candidates"] == "own"
    default = _dream(tiny_bert_dir, tiny_llama_dir)
    assert default.candidates == "own"
    instances = _instances()
    output, gradients = _retriever_gradients(default, instances)
    assert "pool_size" not in output.logs

    written_out = _dream(tiny_bert_dir, tiny_llama_dir)
    written_out.zero_grad(set_to_none=True)
    scores, mask = written_out.candidate_scores(instances)
    probs = written_out.candidate_distribution(scores, mask)
    llm = written_out.llm
    prompts = [llm.encode(i.query, [(d.title, d.text) for d in i.documents], i.target) for i in instances]
    loss = llm.target_loss(llm.collate(prompts), probs)
    loss.backward()
    assert torch.equal(output.loss.detach(), loss.detach())
    for name, parameter in written_out.retriever.named_parameters():
        if parameter.grad is not None:
            assert torch.equal(gradients[name], parameter.grad), name
    # In-batch candidates change the step (the pool is larger than any query's own candidates).
    batch_loss = _dream(tiny_bert_dir, tiny_llama_dir, candidates="batch")(instances).loss
    assert not torch.equal(batch_loss.detach(), output.loss.detach())


def test_options_reach_the_objectives(tiny_bert_dir, tiny_llama_dir, tmp_path):
    from dreamir.llm.heads import HeadSet

    HeadSet("tiny", HEADS, [1.0, 1.0], {"top_k": 2}).save(tmp_path / "heads.json")

    def load_llm(heads, num_heads, mode):
        chosen = HEADS if heads is not None else ()
        return FrozenLLM.from_pretrained(tiny_llama_dir, heads=chosen, mode=mode)

    retriever = _retriever(tiny_bert_dir)
    dream = DreamLoss.from_options(
        retriever, DreamOptions(heads=str(tmp_path / "heads.json"), dream_candidates="batch"), load_llm
    )
    replug = ReplugLoss.from_options(retriever, ReplugOptions(replug_candidates="batch"), load_llm)
    assert dream.candidates == "batch" and replug.candidates == "batch"


def test_replug_scores_the_same_in_batch_pool(tiny_bert_dir, tiny_llama_dir):
    """REPLUG-LSR with --replug-candidates batch: q and p over the same pool DREAM sees, q from one LLM pass
    per (query, pool passage)."""
    llm = FrozenLLM.from_pretrained(tiny_llama_dir, prompt=PromptSettings(document_layout="parallel"))
    objective = ReplugLoss(_retriever(tiny_bert_dir), llm, candidates="batch")
    instances = _instances()
    pooled, _, _ = objective.in_batch_scores(instances)
    likelihood = objective.target_log_likelihood(pooled)
    assert likelihood.shape == (3, 6) and torch.isfinite(likelihood).all()
    assert len(objective._log_likelihood) == 3 * 6
    output = objective(instances)
    output.loss.backward()
    assert output.logs["pool_size"] == 6.0 and torch.isfinite(output.loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.retriever.parameters())
    # q over the pool: each query's own likelihoods are among it, unchanged.
    for b, instance in enumerate(instances):
        own = objective.target_log_likelihood([instance])[0]
        columns = [_pool_ids(instances).index(d.doc_id) for d in instance.documents]
        torch.testing.assert_close(own, likelihood[b, columns], atol=0, rtol=0)
