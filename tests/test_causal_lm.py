"""The generic frozen causal LM: target log-likelihood from token ids or from input embeddings (the path a
soft prompt takes), gradients to the inputs only."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from dreamir.llm.causal_lm import FrozenCausalLM
from tests.tolerances import assert_close_to_scale


@pytest.fixture(scope="module")
def lm(tiny_llama_dir):
    return FrozenCausalLM.from_pretrained(tiny_llama_dir)


def _sequences(lm):
    """Two right-padded rows (prompt + target), labels -100 outside the targets."""
    pieces = [("the capital of france is", "paris"), ("who was the first president of the world", "a cat")]
    rows, labels = [], []
    for prompt, target in pieces:
        p = lm.tokenizer(prompt)["input_ids"]
        t = lm.tokenizer(target)["input_ids"] + [lm.tokenizer.eos_token_id]
        rows.append(p + t)
        labels.append([-100] * len(p) + t)
    width = max(map(len, rows))
    pad = lm.tokenizer.pad_token_id
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask, torch.tensor([x + [-100] * (width - len(x)) for x in labels])


def test_ids_and_equivalent_embeddings_score_the_same(lm, tiny_llama_dir):
    ids, mask, labels = _sequences(lm)
    with torch.no_grad():
        from_ids = lm.target_log_likelihood(labels, input_ids=ids, attention_mask=mask)
        from_embeddings = lm.target_log_likelihood(
            labels, inputs_embeds=lm.embed_tokens(ids), attention_mask=mask
        )
    assert_close_to_scale(from_embeddings, from_ids, rtol=1e-6)
    assert (from_ids < 0).all()
    # Each row as the stock model scores it alone: transformers' own loss is the mean NLL of its labels.
    stock = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    for b in range(len(ids)):
        real = mask[b].bool()
        with torch.no_grad():
            loss = stock(input_ids=ids[b, real][None], labels=labels[b, real][None]).loss
        count = int((labels[b, 1:] != -100).sum())
        torch.testing.assert_close(from_ids[b], -loss * count, rtol=1e-5, atol=1e-5)


def test_soft_prompt_gets_gradients_and_the_lm_none(lm):
    ids, mask, labels = _sequences(lm)
    k, hidden = 3, lm.model.config.hidden_size
    torch.manual_seed(0)
    soft_prompt = torch.randn(len(ids), k, hidden, requires_grad=True)
    inputs_embeds = torch.cat([soft_prompt, lm.embed_tokens(ids)], dim=1)
    attention_mask = torch.cat([torch.ones(len(ids), k, dtype=mask.dtype), mask], dim=1)
    shifted = torch.cat([torch.full((len(ids), k), -100), labels], dim=1)
    log_likelihood = lm.target_log_likelihood(
        shifted, inputs_embeds=inputs_embeds, attention_mask=attention_mask
    )
    (-log_likelihood.sum()).backward()
    assert soft_prompt.grad is not None and soft_prompt.grad.abs().sum(-1).gt(0).all()
    assert all(p.grad is None and not p.requires_grad for p in lm.parameters())
    with torch.no_grad():  # the soft prompt changes what the LM predicts
        plain = lm.target_log_likelihood(labels, input_ids=ids, attention_mask=mask)
    assert not torch.allclose(log_likelihood.detach(), plain)


def test_needs_exactly_one_input(lm):
    ids, mask, labels = _sequences(lm)
    with pytest.raises(ValueError, match="exactly one"):
        lm.target_log_likelihood(labels, attention_mask=mask)
    with pytest.raises(ValueError, match="exactly one"):
        lm.target_log_likelihood(labels, input_ids=ids, inputs_embeds=lm.embed_tokens(ids))


def test_stays_frozen_and_in_eval_mode(lm):
    lm.train()
    assert not lm.model.training and not any(p.requires_grad for p in lm.parameters())
