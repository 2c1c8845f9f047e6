"""The retriever's CPU dropout: PyTorch's inverted dropout with cheaper masks, and the eager attention that
applies it to the attention probabilities while training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from dreamir.retriever import Retriever, RetrieverConfig
from dreamir.retriever.dropout import ATTENTION_NAME, FastDropout, eager_attention, fast_dropout, keep_mask
from tests.tiny_models import make_tiny_bert

TEXTS = ["the cat sat on the mat", "dogs chase cats", "a long sentence about nothing much at all"]


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_mask_keeps_each_element_with_probability_one_minus_p(p: float) -> None:
    torch.manual_seed(0)
    mask = keep_mask((1000, 1001), p, torch.device("cpu"))  # not a multiple of 4: the last word is cut
    assert mask.shape == (1000, 1001) and mask.dtype == torch.bool
    n = mask.numel()
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(float(mask.float().mean()) - (1 - p)) < 5 * sigma
    for column in range(4):  # every 16-bit lane of the 64-bit draws is fair, the top one too
        lane = mask.flatten()[column : n - n % 4 : 4].float().mean()
        assert abs(float(lane) - (1 - p)) < 5 * sigma * 2
    torch.manual_seed(0)
    assert torch.equal(keep_mask((1000, 1001), p, torch.device("cpu")), mask)  # seeded by torch


def test_fast_dropout_is_inverted_dropout_with_its_gradient() -> None:
    torch.manual_seed(1)
    x = torch.randn(64, 300, requires_grad=True)
    y = fast_dropout(x, 0.25)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    assert 0.7 < float(kept.float().mean()) < 0.8
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.75)
    assert fast_dropout(x, 0.25, training=False) is x
    assert torch.equal(fast_dropout(x, 0.0), x)
    assert not fast_dropout(x, 1.0).any()
    bf16 = fast_dropout(x.detach().bfloat16(), 0.25)
    assert bf16.dtype == torch.bfloat16


def test_eager_attention_without_dropout_is_sdpa_under_gqa() -> None:
    torch.manual_seed(2)
    query, key, value = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    mask = torch.zeros(2, 1, 5, 5)
    mask[1, :, :, 3:] = torch.finfo(torch.float32).min  # row 1 has two padding keys
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 2, False
    module.train()
    output, weights = eager_attention(module, query, key, value, mask, dropout=0.0)
    expected, _ = sdpa_attention_forward(module, query, key, value, mask, dropout=0.0)
    torch.testing.assert_close(output, expected)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 5))
    dropped, weights = eager_attention(module, query, key, value, mask, dropout=0.5)
    assert (weights == 0).any() and not torch.allclose(dropped, expected)


def test_a_training_retriever_drops_out_with_the_fast_masks(tmp_path: Path) -> None:
    retriever = Retriever.from_pretrained(make_tiny_bert(tmp_path / "bert"), RetrieverConfig(pooling="mean"))
    dropouts = [m for m in retriever.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(type(m) is FastDropout for m in dropouts)
    backbone_config = retriever.backbone.config
    with torch.no_grad():
        inference = retriever(TEXTS, is_query=False)
        retriever.train()
        assert backbone_config._attn_implementation == ATTENTION_NAME
        torch.manual_seed(3)
        first = retriever(TEXTS, is_query=False)
        torch.manual_seed(3)
        again = retriever(TEXTS, is_query=False)
        other = retriever(TEXTS, is_query=False)
    assert torch.equal(first, again)  # the seed fixes the masks
    assert not torch.allclose(first, other) and not torch.allclose(first, inference)
    retriever.eval()
    with torch.no_grad():
        torch.testing.assert_close(retriever(TEXTS, is_query=False), inference)
