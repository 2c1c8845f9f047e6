"""A frozen LLM with sliding-window attention layers (Gemma 3's kind), on a tiny random Gemma 3."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from dreamir.llm.frozen import FrozenLLM
from dreamir.llm.prompt import PromptSettings
from tests.tiny_models import make_tiny_gemma3

DOCS = [
    ("france", "paris is the capital city of france"),
    ("germany", "berlin is the capital of germany and a large city"),
    ("italy", "rome"),
]
# (0, 1) is in the sliding-window layer, (1, 0) in the full-attention one.
HEADS = [(0, 1), (1, 0)]


@pytest.fixture(scope="module")
def narrow(tmp_path_factory):
    return make_tiny_gemma3(tmp_path_factory.mktemp("gemma3-window6"), sliding_window=6)


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    return make_tiny_gemma3(tmp_path_factory.mktemp("gemma3-window128"), sliding_window=128)


def _loss_and_grad(llm, reuse_prefix):
    batch = llm.collate([llm.encode("what is the capital of france?", DOCS, "paris")])
    scores = torch.tensor([[0.3, -0.2, 0.5]], requires_grad=True)
    loss = llm.target_loss(batch, torch.softmax(scores, -1), reuse_prefix=reuse_prefix)
    loss.backward()
    return loss.detach(), scores.grad


def test_sequential_cached_prefix_equals_the_full_pass_under_a_window_shorter_than_the_prompt(narrow):
    llm = FrozenLLM.from_pretrained(narrow, heads=HEADS)
    assert llm.sliding_window == 6
    loss_full, grad_full = _loss_and_grad(llm, reuse_prefix=False)
    loss_cached, grad_cached = _loss_and_grad(llm, reuse_prefix=True)
    torch.testing.assert_close(loss_cached, loss_full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_cached, grad_full, atol=1e-5, rtol=1e-5)
    assert grad_full.abs().sum() > 0


def test_without_injection_the_loss_is_the_stock_models(narrow):
    llm = FrozenLLM.from_pretrained(narrow, heads=HEADS)
    stock = AutoModelForCausalLM.from_pretrained(narrow, attn_implementation="eager").eval()
    prompt = llm.encode("what is the capital of france?", DOCS, "paris")
    with torch.no_grad():
        logits = stock(torch.tensor([prompt.input_ids])).logits[0]
        for reuse_prefix in (False, True):
            loss = llm.target_loss(llm.collate([prompt]), None, reuse_prefix=reuse_prefix)
            target = torch.tensor(prompt.input_ids[prompt.target_start :])
            expected = torch.nn.functional.cross_entropy(logits[prompt.target_start - 1 : -1], target)
            torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def test_head_scoring_reads_every_layer_under_a_window(narrow):
    llm = FrozenLLM.from_pretrained(narrow)
    batch = llm.collate([llm.encode("where is rome?", DOCS, None)])
    mass = llm.document_mass([batch])[0]
    assert mass.shape == (1, 2, 4, 3)
    # The query rows see all of the candidates in the full layer and only the window in the sliding one.
    assert (mass[0, 0].sum(-1) < mass[0, 1].sum(-1)).all()


def test_parallel_cached_step_equals_the_block_mask_pass_when_the_window_covers_the_prompt(wide):
    llm = FrozenLLM.from_pretrained(wide, heads=HEADS, prompt=PromptSettings(document_layout="parallel"))
    loss_full, grad_full = _loss_and_grad(llm, reuse_prefix=False)
    loss_cached, grad_cached = _loss_and_grad(llm, reuse_prefix=True)
    torch.testing.assert_close(loss_cached, loss_full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_cached, grad_full, atol=1e-5, rtol=1e-5)


def test_parallel_layout_refuses_a_prompt_longer_than_the_window(narrow):
    llm = FrozenLLM.from_pretrained(narrow, heads=HEADS, prompt=PromptSettings(document_layout="parallel"))
    prompt = llm.encode("what is the capital of france?", DOCS, "paris")
    with pytest.raises(ValueError, match=r"spans \d+ positions, more than this LLM's window of 6"):
        llm.collate([prompt])
