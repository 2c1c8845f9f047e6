"""The injection operator: exact shares, untouched heads/rows, identity at the head's own shares."""

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from dreamir.llm.injection import ConstantPrefix, InjectionPlan, dream_attention, redistribute


def _random_attention(batch=2, heads=3, rows=5, keys=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(batch, heads, rows, keys, generator=g) * 2, dim=-1, dtype=torch.float64)


def _layout(batch=2, keys=12, docs=3):
    # Row 0: docs at [2,5) [5,8) [8,10); row 1: a different layout with only two documents.
    doc_index = torch.full((batch, keys), -1)
    doc_index[0, 2:5], doc_index[0, 5:8], doc_index[0, 8:10] = 0, 1, 2
    doc_index[1, 1:4], doc_index[1, 6:11] = 0, 1
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.9, 0.1, 0.0]], dtype=torch.float64)
    return doc_index, probs


def _shares(attn, doc_index, docs=3):
    onehot = torch.nn.functional.one_hot(doc_index.clamp(min=0), docs).double() * (doc_index >= 0)[..., None]
    return attn @ onehot[:, None]  # [B, H, T, K]


@pytest.mark.parametrize("mode", ["preserve", "replace", "prior"])
def test_document_shares_follow_the_mode(mode):
    attn = _random_attention()
    doc_index, probs = _layout()
    rows = torch.zeros(2, 5, dtype=torch.bool)
    rows[:, 2:] = True
    new = redistribute(attn, doc_index, probs, rows, mode)
    before, after = _shares(attn, doc_index), _shares(new, doc_index)
    injected = after[:, :, 2:]
    if mode == "replace":
        torch.testing.assert_close(injected, probs[:, None, None, :].expand_as(injected))
        torch.testing.assert_close(new[:, :, 2:].sum(-1), torch.ones(2, 3, 3, dtype=torch.float64))
    elif mode == "preserve":
        total = before[:, :, 2:].sum(-1, keepdim=True)
        torch.testing.assert_close(injected, total * probs[:, None, None, :])
        torch.testing.assert_close(new.sum(-1), torch.ones(2, 3, 5, dtype=torch.float64))
        outside = doc_index < 0
        torch.testing.assert_close(new[..., outside[0]][0], attn[..., outside[0]][0])
    else:  # prior: a * p_k renormalised
        weights = (
            attn * torch.where(doc_index >= 0, probs.gather(1, doc_index.clamp(min=0)), 1.0)[:, None, None]
        )
        torch.testing.assert_close(new[:, :, 2:], (weights / weights.sum(-1, keepdim=True))[:, :, 2:])
    # Rows that are not injected are untouched.
    torch.testing.assert_close(new[:, :, :2], attn[:, :, :2])
    # Within a document the head keeps its own distribution over tokens.
    inside = new[0, 0, 3, 2:5] / new[0, 0, 3, 2:5].sum()
    torch.testing.assert_close(inside, attn[0, 0, 3, 2:5] / attn[0, 0, 3, 2:5].sum())


def test_own_shares_are_the_identity():
    attn = _random_attention(batch=2, heads=1)
    doc_index, _ = _layout()
    rows = torch.ones(2, 5, dtype=torch.bool)
    shares = _shares(attn, doc_index)[:, 0]  # [B, T, K]
    own = shares / shares.sum(-1, keepdim=True)
    torch.testing.assert_close(redistribute(attn, doc_index, own, rows, "preserve"), attn)


class _Attention(torch.nn.Module):
    def __init__(self, layer_idx, groups):
        super().__init__()
        self.layer_idx, self.num_key_value_groups, self.is_causal = layer_idx, groups, True


def test_attention_function_touches_only_selected_heads_under_gqa():
    torch.manual_seed(0)
    batch, heads, kv_heads, length, dim = 2, 4, 2, 12, 8
    q = torch.randn(batch, heads, length, dim)
    k, v = torch.randn(batch, kv_heads, length, dim), torch.randn(batch, kv_heads, length, dim)
    causal = torch.full((length, length), float("-inf")).triu(1)
    mask = causal.expand(batch, 1, length, length).clone()
    mask[1, :, :, :2] = float("-inf")  # row 1 is left-padded by two positions
    mask[1, :, :2, 0] = 0.0  # keep padded rows finite
    doc_index, probs = _layout(batch, length)
    doc_index[1, :2] = -1
    rows = torch.zeros(batch, length, dtype=torch.bool)
    rows[:, 10:] = True
    module = _Attention(layer_idx=1, groups=heads // kv_heads)
    plan = InjectionPlan({1: torch.tensor([3])}, doc_index, probs.float(), rows, "replace")
    out, _ = dream_attention(module, q, k, v, mask, scaling=dim**-0.5, dream_injection=plan)
    stock, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=dim**-0.5)
    torch.testing.assert_close(out[:, :, :3], stock[:, :, :3])  # other heads
    torch.testing.assert_close(out[:, :10, 3], stock[:, :10, 3])  # other rows
    # Head 3 shares key/value head 1 under GQA; recompute it by hand.
    logits = q[:, 3] @ k[:, 1].transpose(1, 2) * dim**-0.5 + mask[:, 0]
    attn = torch.softmax(logits, -1)
    onehot = torch.nn.functional.one_hot(doc_index.clamp(min=0), 3).float() * (doc_index >= 0)[..., None]
    share = attn @ onehot
    factor = probs.float()[:, None, :] / share.clamp_min(1e-12)  # absent document: p = 0, share = 0
    expected_attn = attn * (factor @ onehot.transpose(1, 2))
    torch.testing.assert_close(out[:, 10:, 3], (expected_attn @ v[:, 1])[:, 10:], rtol=1e-4, atol=1e-5)
    # A layer without selected heads is exactly SDPA.
    other, _ = dream_attention(_Attention(0, 2), q, k, v, mask, scaling=dim**-0.5, dream_injection=plan)
    torch.testing.assert_close(other, stock)


@pytest.mark.parametrize("prefix_length", [0, 7])
def test_eager_suffix_attention_equals_sdpa_with_gqa_and_a_constant_prefix(prefix_length):
    """The eager path the cached suffix takes (query heads grouped per key/value head, the cached prefix's
    keys and values read apart, without a gradient) computes SDPA's output over the whole key sequence, and
    SDPA's gradients for the query and the suffix's own keys and values."""
    torch.manual_seed(1)
    batch, heads, kv_heads, rows, length, dim = 2, 6, 2, 4, 11, 8
    q = torch.randn(batch, heads, rows, dim, requires_grad=True)
    k, v = (torch.randn(batch, kv_heads, length, dim, requires_grad=True) for _ in range(2))
    mask = torch.zeros(batch, 1, rows, length)
    mask[:, :, :, -rows:] = torch.full((rows, rows), float("-inf")).triu(1)  # causal over the suffix
    mask[1, :, :, :3] = float("-inf")  # row 1 is left-padded
    module = _Attention(layer_idx=0, groups=heads // kv_heads)
    prefix = None
    if prefix_length:
        keys, values = (t[:, :, :prefix_length].detach()[None] for t in (k, v))  # [layers = 1, B, ...]
        prefix = ConstantPrefix(keys, values)
    own_k, own_v = k[:, :, prefix_length:], v[:, :, prefix_length:]
    eager, _ = dream_attention(
        module, q, own_k, own_v, mask, scaling=dim**-0.5, dream_eager=True, dream_prefix=prefix
    )
    weights = torch.randn_like(eager)
    eager_grads = torch.autograd.grad((eager * weights).sum(), (q, k, v))
    stock, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=dim**-0.5)
    stock_grads = torch.autograd.grad((stock * weights).sum(), (q, k, v))
    torch.testing.assert_close(eager, stock)
    torch.testing.assert_close(eager_grads[0], stock_grads[0])
    for got, expected in zip(eager_grads[1:], stock_grads[1:], strict=True):
        torch.testing.assert_close(got[:, :, prefix_length:], expected[:, :, prefix_length:])
        assert not got[:, :, :prefix_length].any()  # the cached prefix gets no gradient
        assert got[:, :, prefix_length:].abs().sum() > 0
    # The same prefix through the SDPA path (no dream_eager) and through an injected head.
    plan = InjectionPlan(
        {0: torch.tensor([1, 4])},
        torch.full((batch, length), -1),
        torch.ones(batch, 1),
        torch.zeros(batch, rows, dtype=torch.bool),
    )
    for eager_math in (False, True):
        out, _ = dream_attention(
            module,
            q,
            own_k,
            own_v,
            mask,
            scaling=dim**-0.5,
            dream_eager=eager_math,
            dream_prefix=prefix,
            dream_injection=plan,
        )
        torch.testing.assert_close(out, stock)


def test_unknown_mode_is_rejected():
    doc_index, probs = _layout()
    with pytest.raises(ValueError, match="injection mode"):
        InjectionPlan({}, doc_index, probs, torch.ones(2, 5, dtype=torch.bool), "sharpen")
