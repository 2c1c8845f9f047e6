"""The DREAM injection operator, registered as a transformers attention function.

A forward pass carries an :class:`InjectionPlan` as the keyword argument ``dream_injection``; transformers
passes unknown keyword arguments through to the attention function. Layers without selected heads run the
stock SDPA kernel; in a layer with selected heads only those heads are recomputed with eager math and
their attention is redistributed over the candidate documents:

    a'[t, j] = M[t] * p_k * a[t, j] / m[t, k]      for key j in document k   ("preserve")

where m[t, k] is the head's own mass on document k and M[t] its mass on all documents. Keys outside the
documents keep their weight; rows that are not injected are untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import eager_mask

from dreamir.attention import eager_weights

ATTENTION_NAME = "dream"
InjectionMode = Literal["preserve", "replace", "prior"]
INJECTION_MODES: tuple[str, ...] = ("preserve", "replace", "prior")
_EPS = 1e-12


@dataclass
class InjectionPlan:
    """Everything the attention function needs for one forward pass.

    heads: layer index -> head indices (LongTensor) to inject.
    doc_index: [B, S] document number of every key position (the full key length, cache included),
        -1 outside documents.
    doc_probs: [B, K] the retriever's distribution over the K candidates (or [B, T, K] per row).
    row_mask: [B, T] which rows of *this* forward (the query positions) are injected.
    """

    heads: dict[int, Tensor]
    doc_index: Tensor
    doc_probs: Tensor
    row_mask: Tensor
    mode: InjectionMode = "preserve"

    def __post_init__(self) -> None:
        if self.mode not in INJECTION_MODES:
            raise ValueError(f"injection mode must be one of {INJECTION_MODES}, got {self.mode!r}")


@dataclass
class DocumentMassProbe:
    """Records, per layer, every head's attention mass on each document, averaged over probe rows.

    Used by head selection; ``masses[layer]`` is [B, H, K]. Nothing is injected.
    """

    doc_index: Tensor
    num_docs: int
    row_mask: Tensor
    masses: dict[int, Tensor] = field(default_factory=dict)


@dataclass
class ConstantPrefix:
    """Keys and values of everything before a forward's own tokens, [layers, B, kv_heads, P, head_dim]
    each, computed without autograd (a document cache, a no-grad pass): the attention reads them as they
    are, without a transformers cache that would concatenate them with the new keys in every layer. B is 1
    when every row has the same prefix (broadcast over the rows)."""

    keys: Tensor
    values: Tensor

    @property
    def length(self) -> int:
        return self.keys.shape[3]

    def layer(self, index: int) -> tuple[Tensor, Tensor]:
        return self.keys[index], self.values[index]


def document_onehot(doc_index: Tensor, num_docs: int, dtype: torch.dtype) -> Tensor:
    """[B, S] document numbers -> [B, S, K] one-hot membership (all zeros outside documents)."""
    inside = (doc_index >= 0).to(dtype)
    return torch.nn.functional.one_hot(doc_index.clamp(min=0), num_docs).to(dtype) * inside[..., None]


def redistribute(
    attn: Tensor, doc_index: Tensor, doc_probs: Tensor, row_mask: Tensor, mode: InjectionMode = "preserve"
) -> Tensor:
    """Apply the injection operator to softmax attention ``attn`` [B, H, T, S]; returns a new tensor."""
    num_docs = doc_probs.shape[-1]
    onehot = document_onehot(doc_index, num_docs, attn.dtype)  # [B, S, K]
    outside = 1.0 - onehot.sum(-1)  # [B, S]
    mass = attn @ onehot[:, None]  # [B, H, T, K]: m[t, k]
    probs = doc_probs.to(attn.dtype)
    probs = probs[:, None, None, :] if probs.dim() == 2 else probs[:, None]  # broadcast over heads (and rows)
    if mode == "preserve":
        doc_factor = mass.sum(-1, keepdim=True) * probs / mass.clamp_min(_EPS)
        outside_factor = torch.ones_like(mass[..., :1])
    elif mode == "replace":
        doc_factor = probs / mass.clamp_min(_EPS)
        outside_factor = torch.zeros_like(mass[..., :1])
    elif mode == "prior":
        # softmax(logits + log p_k on document keys): weights a * p_k, renormalised.
        outside_mass = (attn * outside[:, None, None, :]).sum(-1, keepdim=True)
        norm = outside_mass + (mass * probs).sum(-1, keepdim=True)
        doc_factor = probs / norm
        outside_factor = 1.0 / norm
    else:
        raise ValueError(f"unknown injection mode {mode!r}")
    key_factor = doc_factor @ onehot.transpose(1, 2)[:, None] + outside_factor * outside[:, None, None, :]
    return torch.where(row_mask[:, None, :, None], attn * key_factor, attn)


def _eager_output(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None,
    scaling: float,
    prefix: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Attention output [B, T, H, D] in eager math, as sdpa_attention_forward returns it, over ``prefix``'s
    keys and values (if any) followed by ``key`` and ``value``.

    The query heads that share a key/value head (GQA) are stacked as rows of one matmul against it, so the
    keys and values are never repeated (nor their gradients summed back). The prefix gets its own matmuls:
    it is never concatenated with the rest, and no gradient is computed for it."""
    batch, heads, rows, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    # Head h = kv * groups + g; scaled here, on T rows, rather than the logits over every key.
    grouped = query.reshape(batch, kv_heads, groups * rows, dim) * scaling
    logits = torch.matmul(grouped, key.transpose(2, 3))
    split = 0
    if prefix is not None:
        split = prefix[0].shape[2]
        logits = torch.cat([torch.matmul(grouped, prefix[0].transpose(2, 3)), logits], dim=-1)
    length = logits.shape[-1]
    logits = logits.view(batch, kv_heads, groups, rows, length)
    if mask is not None:
        mask = mask[..., :length]  # [B, 1 or H, T, S]
        per_head = mask.shape[1] > 1
        logits = logits + (mask.reshape(-1, kv_heads, groups, rows, length) if per_head else mask[:, :, None])
    weights = torch.softmax(logits, dim=-1, dtype=torch.float32).to(value.dtype)
    weights = weights.view(batch, kv_heads, groups * rows, length)
    output = torch.matmul(weights[..., split:], value)
    if prefix is not None:
        output = output + torch.matmul(weights[..., :split], prefix[1].to(value.dtype))
    return output.view(batch, heads, rows, dim).transpose(1, 2).contiguous()


def _select_heads_kv(tensor: Tensor, heads: Tensor, groups: int) -> Tensor:
    """Pick, for each selected query head, its (shared, under GQA) key/value head."""
    return tensor.index_select(1, torch.div(heads, groups, rounding_mode="floor"))


def _after_prefix(prefix: Tensor | None, tensor: Tensor) -> Tensor:
    """``tensor`` (keys or values) after the prefix's, along the sequence (a prefix shared by every row,
    batch dimension 1, is repeated for each)."""
    if prefix is None:
        return tensor
    return torch.cat([prefix.to(tensor.dtype).expand(tensor.shape[0], -1, -1, -1), tensor], dim=2)


def dream_attention(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    dream_injection: InjectionPlan | None = None,
    dream_probe: DocumentMassProbe | None = None,
    dream_eager: bool = False,
    dream_prefix: ConstantPrefix | None = None,
    **kwargs,
) -> tuple[Tensor, Tensor | None]:
    """Attention function: SDPA everywhere (or eager math with ``dream_eager``), eager math plus
    redistribution in the selected heads. With ``dream_prefix`` the keys and values are the prefix's
    followed by this forward's own."""
    layer = getattr(module, "layer_idx", None)
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    prefix_key, prefix_value = dream_prefix.layer(layer) if dream_prefix is not None else (None, None)
    if dream_probe is not None:
        _record_mass(module, query, _after_prefix(prefix_key, key), attention_mask, scaling, dream_probe)
    heads = dream_injection.heads.get(layer) if dream_injection is not None else None
    if dream_eager:
        # A few query rows over a long cached key sequence: plain matmuls beat the CPU flash kernel,
        # whose backward dominates such a pass.
        prefix = (prefix_key, prefix_value) if dream_prefix is not None else None
        output = _eager_output(query, key, value, attention_mask, scaling, prefix)
    else:
        output, _ = sdpa_attention_forward(
            module,
            query,
            _after_prefix(prefix_key, key),
            _after_prefix(prefix_value, value),
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            **kwargs,
        )
    if heads is None or heads.numel() == 0:
        return output, None
    groups = query.shape[1] // key.shape[1]
    heads = heads.to(query.device)

    def selected(prefix_part: Tensor | None, part: Tensor) -> Tensor:
        own = _select_heads_kv(part, heads, groups).float()
        return (
            own if prefix_part is None else _after_prefix(_select_heads_kv(prefix_part, heads, groups), own)
        )

    # The injected heads run in float32 whatever the rest does (bf16 autocast): their softmax and the
    # redistribution carry the retriever's gradient. A no-op for a float32 model.
    with torch.autocast(query.device.type, enabled=False):
        attn = eager_weights(
            query.index_select(1, heads).float(),
            selected(prefix_key, key),
            attention_mask.float() if attention_mask is not None else None,
            scaling,
        )
        plan = dream_injection
        attn = redistribute(attn, plan.doc_index, plan.doc_probs, plan.row_mask, plan.mode)
        injected = torch.matmul(attn, selected(prefix_value, value)).transpose(1, 2)
    # output is [B, T, H, D]; out-of-place index_copy keeps autograd happy.
    return output.index_copy(2, heads, injected.to(output.dtype)), None


def _record_mass(module, query, key, attention_mask, scaling, probe: DocumentMassProbe) -> None:
    with torch.no_grad():
        attn = eager_weights(query, key, attention_mask, scaling)  # [B, H, T, S]
        onehot = document_onehot(probe.doc_index, probe.num_docs, attn.dtype)
        rows = probe.row_mask.to(attn.dtype)  # [B, T]
        row_mean = (attn * rows[:, None, :, None]).sum(2) / rows.sum(-1).clamp_min(1)[:, None, None]
        probe.masses[module.layer_idx] = (row_mean @ onehot).float()  # [B, H, K]


def register() -> str:
    """Register the attention function and its mask function (without the latter the causal mask is lost)."""
    AttentionInterface.register(ATTENTION_NAME, dream_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)
    return ATTENTION_NAME


register()
