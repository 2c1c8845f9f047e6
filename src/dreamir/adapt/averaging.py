"""Stage 4's option, weight averaging (``--base-weight``): the kept checkpoint's weights moved back towards the
starting retriever's, theta = (1 - w) theta_adapted + w theta_base, as WiSE-FT does for fine-tuned models.
What training on generated queries learned that real queries share survives a partial return; what it
learned only about the generated queries (the drift) is diluted."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from dreamir.adapt.arguments import AdaptArguments
from dreamir.arguments import ModelArguments
from dreamir.retriever import Retriever
from dreamir.workflow import load_retriever


@torch.no_grad()
def average_with_base(adapted: Retriever, base: Retriever, base_weight: float) -> Retriever:
    """``adapted`` with every weight replaced in place by (1 - w) adapted + w base; returns it."""
    if not 0.0 <= base_weight <= 1.0:
        raise ValueError(f"--base-weight must be between 0 and 1, got {base_weight}")
    mine, theirs = adapted.state_dict(), base.state_dict()
    if mine.keys() != theirs.keys():
        different = sorted(mine.keys() ^ theirs.keys())[:3]
        raise ValueError(f"the adapted and the base retriever hold different weights (e.g. {different})")
    for name, weight in mine.items():
        if weight.shape != theirs[name].shape:
            raise ValueError(
                f"weight {name}: {tuple(weight.shape)} adapted, {tuple(theirs[name].shape)} base"
            )
        if weight.is_floating_point():
            weight.lerp_(theirs[name].to(weight.dtype), base_weight)
    return adapted


def average_checkpoint(args: AdaptArguments, checkpoint: Path, out: Path) -> Path:
    """The retriever saved at ``checkpoint`` averaged with the starting retriever (``args.retriever``, cut
    to ``args.retriever_layers``), saved to ``out``."""
    # A LoRA run's checkpoint holds merged weights: read as a plain model, it has the base's weights' names.
    adapted = Retriever.from_pretrained(
        checkpoint, dataclasses.replace(Retriever.read_config(checkpoint), lora=None)
    )
    base = load_retriever(ModelArguments(retriever=args.retriever, retriever_layers=args.retriever_layers))
    return average_with_base(adapted, base, args.base_weight).save(out)
