"""Scoring a text after a soft prompt: a frozen causal LM reads k vectors as input embeddings, then the
text's token embeddings and EOS, and gives the log-likelihood of the text and EOS (AutoRegEmbed's
decoder side). Gradients reach the vectors, never the LM."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dreamir.llm.causal_lm import FrozenCausalLM


def soft_prompt_log_likelihood(
    llm: FrozenCausalLM, prompts: Tensor, targets: Sequence[str], max_target_tokens: int
) -> tuple[Tensor, Tensor]:
    """log p(target tokens, EOS | prompt vectors) per row [n], and the number of tokens scored per row [n].

    ``prompts`` [n, k, hidden] must have the LM's hidden size; each target keeps its first
    ``max_target_tokens`` tokens."""
    if prompts.shape[0] != len(targets):
        raise ValueError(f"{prompts.shape[0]} soft prompts for {len(targets)} targets")
    hidden = llm.model.get_input_embeddings().embedding_dim
    if prompts.shape[-1] != hidden:
        raise ValueError(
            f"soft prompt vectors have {prompts.shape[-1]} dimensions, the frozen LM reads {hidden}: "
            "the encoder must be a model of the LM's hidden size (e.g. the LM itself)"
        )
    tokenizer = llm.tokenizer
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{type(tokenizer).__name__} has no EOS token to end the targets with")
    encoded = tokenizer(
        list(targets), add_special_tokens=False, truncation=True, max_length=max_target_tokens
    )["input_ids"]
    ids = [[*row, tokenizer.eos_token_id] for row in encoded]
    count, k, width = len(ids), prompts.shape[1], max(len(row) for row in ids)
    input_ids = torch.full((count, width), tokenizer.eos_token_id, dtype=torch.long)
    labels = torch.full((count, k + width), -100, dtype=torch.long)
    mask = torch.zeros(count, k + width, dtype=torch.long)
    for row, tokens in enumerate(ids):
        input_ids[row, : len(tokens)] = torch.tensor(tokens)
        labels[row, k : k + len(tokens)] = torch.tensor(tokens)
        mask[row, : k + len(tokens)] = 1
    token_embeds = llm.embed_tokens(input_ids)
    embeds = torch.cat([prompts.to(token_embeds.device, token_embeds.dtype), token_embeds], dim=1)
    log_likelihood = llm.target_log_likelihood(
        labels, inputs_embeds=embeds, attention_mask=mask.to(embeds.device)
    )
    return log_likelihood, torch.tensor([len(row) for row in ids], device=log_likelihood.device)
