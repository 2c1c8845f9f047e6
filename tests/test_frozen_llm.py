"""The frozen LLM with the registered attention function, on a tiny random Llama with GQA."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from dreamir.llm.frozen import FrozenLLM
from dreamir.llm.injection import InjectionPlan

DOCS = [
    ("france", "paris is the capital city of france"),
    ("germany", "berlin is the capital of germany and a large city"),
    ("italy", "rome"),
    ("spain", "madrid is a city in spain"),
]


@pytest.fixture(scope="module")
def llm(tiny_llama_dir):
    return FrozenLLM.from_pretrained(tiny_llama_dir, heads=[(1, 0), (1, 3)])


@pytest.fixture(scope="module")
def stock(tiny_llama_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="eager").eval()


def _batch(llm):
    prompts = [
        llm.encode("what is the capital of france?", DOCS[:3], "paris"),
        llm.encode("where is madrid?", DOCS[1:], "in spain, a country"),
    ]
    return prompts, llm.collate(prompts)


def test_prompt_spans_cover_each_document(llm):
    prompts, _ = _batch(llm)
    for (start, end), (title, text) in zip(prompts[0].document_spans, DOCS[:3], strict=True):
        decoded = llm.tokenizer.decode(prompts[0].input_ids[start:end])
        assert title in decoded and text.split()[0] in decoded
    target = llm.tokenizer.decode(prompts[0].input_ids[prompts[0].target_start :])
    assert target.startswith("paris") and target.endswith("<|im_end|>")


def _stock_hidden(stock, prompt):
    ids = torch.tensor([prompt.input_ids])
    with torch.no_grad():
        return stock.model(input_ids=ids).last_hidden_state[0]


@pytest.mark.parametrize("reuse_prefix", [False, True])
def test_without_injection_matches_stock_eager_under_padding(llm, stock, reuse_prefix):
    prompts, batch = _batch(llm)
    with torch.no_grad():
        hidden = llm._hidden_full(batch, None)
        losses = llm.target_loss(batch, None, reuse_prefix=reuse_prefix, reduction="example")
    for b, prompt in enumerate(prompts):
        expected = _stock_hidden(stock, prompt)
        mask = batch.attention_mask[b].bool()
        torch.testing.assert_close(hidden[b, mask], expected, atol=1e-5, rtol=1e-5)
        logits = stock(torch.tensor([prompt.input_ids])).logits[0]
        target = torch.tensor(prompt.input_ids[prompt.target_start :])
        stock_loss = torch.nn.functional.cross_entropy(logits[prompt.target_start - 1 : -1], target)
        torch.testing.assert_close(losses[b], stock_loss, atol=1e-5, rtol=1e-5)


def test_custom_attention_keeps_the_causal_mask(llm):
    prompts, _ = _batch(llm)
    ids = prompts[0].input_ids
    changed = [*ids[:-3], *reversed(ids[-3:])]
    batch_a, batch_b = llm.collate([prompts[0]]), llm.collate([prompts[0]])
    batch_b.input_ids[0, -3:] = torch.tensor(changed[-3:])
    with torch.no_grad():
        a, b = llm._hidden_full(batch_a, None), llm._hidden_full(batch_b, None)
    torch.testing.assert_close(a[0, :-3], b[0, :-3])
    assert not torch.allclose(a[0, -2:], b[0, -2:])


def test_own_attention_shares_reproduce_the_stock_model(llm):
    prompts, _ = _batch(llm)
    batch = llm.collate(prompts[:1])
    row = int(batch.inject_rows[0].nonzero()[0])  # the last prompt token
    rows = torch.zeros_like(batch.inject_rows)
    rows[0, row] = True
    mass = llm.document_mass([batch], rows=[rows])[0][0, 1, 2]  # layer 1, head 2
    single = FrozenLLM(llm.model, llm.tokenizer, heads=[(1, 2)])
    batch.inject_rows = rows
    with torch.no_grad():
        plain = single._hidden_full(batch, None)
        plan = InjectionPlan(single._head_map, batch.doc_index, (mass / mass.sum())[None], rows)
        injected = single._hidden_full(batch, plan)
        uniform = InjectionPlan(single._head_map, batch.doc_index, torch.full((1, 3), 1 / 3), rows)
        moved = single._hidden_full(batch, uniform)
    torch.testing.assert_close(injected, plain, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(moved[0, row], plain[0, row], atol=1e-4)


def test_cached_prefix_equals_the_full_prompt_reference(llm):
    _, batch = _batch(llm)
    grads, losses = [], []
    for reuse_prefix in (False, True):
        scores = torch.tensor([[0.3, -0.2, 0.5], [1.0, 0.1, -5.0]], requires_grad=True)
        probs = torch.softmax(scores.masked_fill(~batch.candidate_mask, float("-inf")), -1)
        loss = llm.target_loss(batch, probs, reuse_prefix=reuse_prefix)
        loss.backward()
        grads.append(scores.grad)
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-4, rtol=1e-4)
    assert grads[0].abs().sum() > 0


def test_batched_loss_equals_each_example_alone(llm):
    prompts, batch = _batch(llm)
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]])
    with torch.no_grad():
        batched = llm.target_loss(batch, probs, reduction="example")
        for b, prompt in enumerate(prompts):
            alone = llm.target_loss(llm.collate([prompt]), probs[b : b + 1], reduction="example")
            torch.testing.assert_close(batched[b], alone[0], atol=1e-5, rtol=1e-5)


def test_llm_is_frozen(llm):
    assert not any(p.requires_grad for p in llm.parameters())
    llm.train()
    assert not llm.model.training


def test_heads_outside_the_model_are_rejected(llm):
    with pytest.raises(ValueError, match="outside"):
        llm.set_heads([(5, 0)])
