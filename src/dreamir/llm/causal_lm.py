"""A frozen causal LM that scores target tokens, reading either token ids or input embeddings.

It reaches the network only through transformers' public accessors (``get_decoder``,
``get_output_embeddings``, ``get_input_embeddings``), so any ``AutoModelForCausalLM`` works. Its parameters
never change and it stays in eval mode; gradients flow through it to whatever fed it (input embeddings, or a
distribution written into its attention by the DREAM reader built on it, dreamir.llm.frozen).
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from dreamir import precision as compute
from dreamir.models import resolve_model, use_safetensors
from dreamir.precision import Precision

# float32: everything in float32 (exact, the classes' default); bfloat16: the LM's matmuls under bf16
# autocast; auto: bf16 where the processor computes it natively (dreamir.precision decides).
# "mean": one number, the mean over every target token of the batch; "example": the mean per row, [B].
Reduction = Literal["mean", "example"]


class FrozenCausalLM(nn.Module):
    """A causal LM whose parameters never change, scoring the labelled tokens of a sequence.

    Labels follow the transformers convention: ``labels[b, t]`` is the token at position t, predicted from
    the state at t - 1; -100 marks positions that are not scored.
    """

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, precision: Precision = "float32"
    ) -> None:
        super().__init__()
        self.model = model.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        # What the model computes in, decided once here ("auto" resolved for the model's device).
        self.precision: compute.Resolved = compute.resolve(precision, self.device)
        # What runs the forward passes: the model itself, or (bfloat16) a view of it whose linear layers hold
        # bf16 copies of their weights, so autocast does not cast 100M frozen weights at every call.
        # Not a registered submodule: its parameters are the model's or frozen copies of them.
        runner = _with_bf16_linears(self.model) if self.precision == "bfloat16" else self.model
        object.__setattr__(self, "compute_model", runner)

    @staticmethod
    def load_model(
        name_or_path: str | Path, device: str | torch.device = "cpu", attn_implementation: str | None = None
    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """A local causal LM (a packaged name or a directory) in float32 on ``device``, and its tokenizer."""
        path = resolve_model(name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(
            path,
            attn_implementation=attn_implementation,
            dtype=torch.float32,
            use_safetensors=use_safetensors(path),
        ).to(device)
        return model, tokenizer

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, device: str | torch.device = "cpu", **options: Any
    ) -> FrozenCausalLM:
        return cls(*cls.load_model(name_or_path, device), **options)

    def train(self, mode: bool = True) -> FrozenCausalLM:
        # The LM stays in eval mode whatever the module around it does.
        super().train(False)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_layers(self) -> int:
        return self.model.config.get_text_config().num_hidden_layers

    @property
    def num_heads(self) -> int:
        return self.model.config.get_text_config().num_attention_heads

    @property
    def decoder(self) -> nn.Module:
        """The network that turns ids or input embeddings into hidden states (no output projection)."""
        return self.compute_model.get_decoder()

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast for the LM's matmuls when its precision is bf16; nothing in float32."""
        return compute.autocast(self.precision, self.device)

    def embed_tokens(self, input_ids: Tensor) -> Tensor:
        """The LM's input embeddings of ``input_ids``, [B, T, hidden] (what ``inputs_embeds`` stands for)."""
        return self.model.get_input_embeddings()(input_ids.to(self.device))

    def target_log_likelihood(
        self,
        labels: Tensor,
        input_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> Tensor:
        """Sum of log p(labelled token | everything before it) per row, [B].

        The sequence comes as ``input_ids`` or as ``inputs_embeds`` (e.g. soft prompt vectors followed by
        the target's token embeddings); gradients reach ``inputs_embeds``, never the LM's weights.
        Right padding needs only ``attention_mask``; position ids default to 0..T-1.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        with self.autocast():
            hidden = self.decoder(
                input_ids=input_ids,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
            ).last_hidden_state
        token_loss, rows = self.token_losses(hidden, labels.to(hidden.device))
        example = rows.nonzero()[:, 0]
        return -torch.zeros(rows.shape[0], device=token_loss.device).index_add(0, example, token_loss)

    def token_losses(self, hidden: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-entropy [N] of each labelled token from the state before it, and the [B, T] mask of the
        states that predict one (only those go through the, large, output projection)."""
        next_labels = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
        rows = next_labels != -100
        logits = self.compute_model.get_output_embeddings()(hidden[rows]).float()
        return nn.functional.cross_entropy(logits, next_labels[rows], reduction="none"), rows

    @staticmethod
    def reduce(token_loss: Tensor, rows: Tensor, reduction: Reduction) -> Tensor:
        """Per-token losses from :meth:`token_losses` as one mean, or as the mean of each row ([B])."""
        if reduction == "mean":
            return token_loss.mean()
        example = rows.nonzero()[:, 0]
        totals = torch.zeros(rows.shape[0], device=token_loss.device).index_add(0, example, token_loss)
        return totals / rows.sum(-1).clamp_min(1)


def _with_bf16_linears(model: PreTrainedModel) -> PreTrainedModel:
    """A copy of ``model`` sharing every parameter with it except the decoder's linear weights, which become
    frozen bf16 copies (about 2 bytes per weight more). Run under bf16 autocast it computes what autocast
    computes on the float32 model (embeddings, norms and residual stream stay float32)."""
    memo: dict[int, object] = {id(p): p for p in model.parameters()}
    for module in model.get_decoder().modules():
        if isinstance(module, nn.Linear):
            bf16 = nn.Parameter(module.weight.detach().to(torch.bfloat16), requires_grad=False)
            memo[id(module.weight)] = bf16
    return copy.deepcopy(model, memo)
