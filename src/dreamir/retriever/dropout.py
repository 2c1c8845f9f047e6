"""Dropout with cheaper random masks on a CPU, for training the retriever.

PyTorch's CPU dropout draws one Mersenne-Twister number per element, on one thread whatever the thread
count: training all-MiniLM-L6-v2 on 2 queries and 16 passages of ~150 tokens draws ~38 million of them per
step, about a third of the retriever's bf16 forward and backward on this project's 2-core machine. Here
every element's keep/drop decision is 16 random bits, four of them cut from each 64-bit draw of the same
generator (so ``torch.manual_seed`` still fixes the masks): the same inverted dropout, with the rate
rounded to a multiple of 1/65536. Off a CPU, or outside training, it is PyTorch's own dropout.

The attention probabilities' dropout happens inside the attention function, not in a module: training on a
CPU uses :func:`eager_attention`, registered with transformers under :data:`ATTENTION_NAME`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import eager_mask

from dreamir.attention import eager_weights

ATTENTION_NAME = "dreamir_eager"
_LEVELS = 1 << 16  # keep/drop resolution: 16 bits per element


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> Tensor:
    """A boolean mask of ``shape``, each element True with probability 1 - p (to 1/65536)."""
    count = math.prod(shape)
    # Full-range 64-bit draws (the default range of random_ leaves the top bit at zero), seen as 16-bit lanes.
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_(-(1 << 63), None)
    lanes = words.view(torch.int16)[:count].view(shape)
    return lanes >= round(p * _LEVELS) - _LEVELS // 2


def fast_dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """``torch.nn.functional.dropout``, with the CPU mask from :func:`keep_mask`."""
    if not training or p == 0.0 or x.device.type != "cpu":
        return nn.functional.dropout(x, p, training)
    if p == 1.0:
        return x * 0.0
    scale = keep_mask(x.shape, p, x.device).to(x.dtype).mul_(1.0 / (1.0 - p))
    return x * scale


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with :func:`fast_dropout`'s cheaper CPU masks (an ``nn.Dropout`` still, same ``p``)."""

    def forward(self, x: Tensor) -> Tensor:
        return fast_dropout(x, self.p, self.training)


def attention_dropout(config) -> float:
    """The attention-probability dropout rate a transformers config declares (BERT-style or decoder-style
    name), 0 if none."""
    for name in ("attention_probs_dropout_prob", "attention_dropout"):
        rate = getattr(config, name, None)
        if rate:
            return float(rate)
    return 0.0


def use_fast_dropout(model: nn.Module) -> None:
    """Replace every ``nn.Dropout`` module inside ``model`` by a :class:`FastDropout` of the same rate."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p).train(child.training))


def eager_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[Tensor, Tensor]:
    """Eager attention as transformers computes it (float32 softmax; key/value heads repeated under GQA),
    with :func:`fast_dropout` on the attention probabilities while training."""
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    weights = fast_dropout(eager_weights(query, key, attention_mask, scaling), dropout, module.training)
    groups = query.shape[1] // value.shape[1]
    value = value.repeat_interleave(groups, dim=1) if groups > 1 else value
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


def register() -> str:
    """Register the attention function and its (additive, eager) mask function with transformers."""
    AttentionInterface.register(ATTENTION_NAME, eager_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)
    return ATTENTION_NAME


register()
