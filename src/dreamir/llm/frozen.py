"""The frozen LLM: loads a causal LM with the DREAM attention function and computes the target's NTP loss
with the retriever's distribution written into the selected heads. Its parameters never change."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from dreamir.llm.injection import (
    ATTENTION_NAME,
    DocumentMassProbe,
    InjectionMode,
    InjectionPlan,
    register,
)
from dreamir.llm.prompt import EncodedPrompt, PromptBatch, PromptSettings, collate_prompts, encode_prompt
from dreamir.models import resolve_model

HeadList = Sequence[tuple[int, int]]


class FrozenLLM(nn.Module):
    """A causal LM that reads K candidate documents and scores a target under an injected distribution."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        heads: HeadList = (),
        mode: InjectionMode = "preserve",
        prompt: PromptSettings | None = None,
    ) -> None:
        super().__init__()
        register()
        model.config._attn_implementation = ATTENTION_NAME
        self.model = model.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.mode: InjectionMode = mode
        self.prompt = prompt or PromptSettings()
        self.set_heads(heads)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        heads: HeadList = (),
        mode: InjectionMode = "preserve",
        prompt: PromptSettings | None = None,
        device: str | torch.device = "cpu",
    ) -> FrozenLLM:
        register()
        path = resolve_model(name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(
            path, attn_implementation=ATTENTION_NAME, dtype=torch.float32
        ).to(device)
        return cls(model, tokenizer, heads=heads, mode=mode, prompt=prompt)

    def train(self, mode: bool = True) -> FrozenLLM:
        # The LLM stays in eval mode whatever the objective around it does.
        super().train(False)
        return self

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def num_heads(self) -> int:
        return self.model.config.num_attention_heads

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def set_heads(self, heads: Iterable[tuple[int, int]]) -> None:
        heads = sorted({(int(layer), int(head)) for layer, head in heads})
        for layer, head in heads:
            if not (0 <= layer < self.num_layers and 0 <= head < self.num_heads):
                raise ValueError(
                    f"head ({layer}, {head}) outside the model's {self.num_layers} layers x {self.num_heads} heads"
                )
        self.heads = heads
        by_layer: dict[int, list[int]] = {}
        for layer, head in heads:
            by_layer.setdefault(layer, []).append(head)
        self._head_map = {layer: torch.tensor(h, dtype=torch.long) for layer, h in by_layer.items()}

    # ---- prompts -------------------------------------------------------------------------------------
    def encode(self, query: str, documents: Sequence[tuple[str, str]], target: str | None) -> EncodedPrompt:
        return encode_prompt(self.tokenizer, query, documents, target, self.prompt)

    def collate(self, prompts: Sequence[EncodedPrompt]) -> PromptBatch:
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else self.tokenizer.eos_token_id
        return collate_prompts(prompts, pad, self.prompt.inject_query_rows).to(self.device)

    # ---- the loss ------------------------------------------------------------------------------------
    def target_loss(
        self, batch: PromptBatch, doc_probs: Tensor | None, reuse_prefix: bool = True, reduction: str = "mean"
    ) -> Tensor:
        """Cross-entropy of the target tokens with ``doc_probs`` [B, K] injected (None: the stock model).

        ``reuse_prefix`` runs the documents prefix once without autograd, keeping its keys and values, and
        only the query + target suffix with autograd; False is the straightforward full-prompt reference.
        ``reduction``: "mean" over all target tokens of the batch, or "example" for a [B] vector.
        """
        plan = None
        if doc_probs is not None and self._head_map:
            plan = InjectionPlan(self._head_map, batch.doc_index, doc_probs, batch.inject_rows, self.mode)
        if reuse_prefix:
            hidden, start = self._hidden_with_cached_prefix(batch, plan), batch.prefix_length
        else:
            hidden, start = self._hidden_full(batch, plan), 0
        # Only rows that predict a target token go through the (large) output projection.
        labels = batch.labels[:, start:]
        next_labels = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
        rows = next_labels != -100
        logits = self.model.lm_head(hidden[rows]).float()
        token_loss = nn.functional.cross_entropy(logits, next_labels[rows], reduction="none")
        if reduction == "mean":
            return token_loss.mean()
        example = rows.nonzero()[:, 0]
        totals = torch.zeros(rows.shape[0], device=token_loss.device).index_add(0, example, token_loss)
        return totals / rows.sum(-1).clamp_min(1)

    def _hidden_full(self, batch: PromptBatch, plan: InjectionPlan | None) -> Tensor:
        return self.model.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
            dream_injection=plan,
        ).last_hidden_state

    def _hidden_with_cached_prefix(self, batch: PromptBatch, plan: InjectionPlan | None) -> Tensor:
        split = batch.prefix_length
        with torch.no_grad():
            prefix = self.model.model(
                input_ids=batch.input_ids[:, :split],
                attention_mask=batch.attention_mask[:, :split],
                position_ids=batch.position_ids[:, :split],
                use_cache=True,
            )
        if plan is not None:
            plan = InjectionPlan(
                plan.heads, plan.doc_index, plan.doc_probs, plan.row_mask[:, split:], plan.mode
            )
        # Layers below the first injected one see no tensor that requires grad, so autograd records nothing
        # there by itself; the graph starts at the first injected head.
        return self.model.model(
            input_ids=batch.input_ids[:, split:],
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids[:, split:],
            past_key_values=prefix.past_key_values,
            use_cache=True,
            dream_injection=plan,
        ).last_hidden_state

    @torch.no_grad()
    def document_mass(
        self, batches: Sequence[PromptBatch], rows: Sequence[Tensor] | None = None
    ) -> list[Tensor]:
        """Every head's attention mass on each candidate, averaged over ``rows`` (default: the query's rows).

        The batches must share their documents prefix (same candidates, other queries, e.g. the "N/A"
        calibration query): it is encoded once and its keys and values reused. Rows must lie after the
        documents. Returns one [B, layers, heads, K] tensor per batch.
        """
        first = batches[0]
        split = first.prefix_length
        for other in batches[1:]:
            if other.prefix_length != split or not torch.equal(
                other.input_ids[:, :split], first.input_ids[:, :split]
            ):
                raise ValueError("document_mass: the batches do not share their documents prefix")
        prefix = self.model.model(
            input_ids=first.input_ids[:, :split],
            attention_mask=first.attention_mask[:, :split],
            position_ids=first.position_ids[:, :split],
            use_cache=True,
        ).past_key_values
        masses = []
        for i, batch in enumerate(batches):
            probe_rows = batch.query_rows if rows is None else rows[i]
            if probe_rows[:, :split].any():
                raise ValueError("document_mass: probe rows must come after the documents")
            probe = DocumentMassProbe(batch.doc_index, batch.num_candidates, probe_rows[:, split:])
            self.model.model(
                input_ids=batch.input_ids[:, split:],
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids[:, split:],
                past_key_values=copy.deepcopy(prefix) if i < len(batches) - 1 else prefix,
                use_cache=True,
                dream_probe=probe,
            )
            masses.append(torch.stack([probe.masses[layer] for layer in range(self.num_layers)], dim=1))
        return masses
