"""AutoRegEmbed, information compression (label-free): the retriever compresses a text into the final
states of its k compress tokens, and a frozen copy of the decoder must regenerate the text (and EOS) from
those k vectors alone; the loss is the mean next-token cross-entropy of the text's tokens. It trains on
the candidate passages of the examples, never on a label (Deng et al., EMNLP 2025)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from dreamir.llm.causal_lm import FrozenCausalLM
from dreamir.llm.soft_prompt import soft_prompt_log_likelihood
from dreamir.objectives.base import LoadLLM, Objective, ObjectiveOutput, RetrieverPrecision, TrainingInstance
from dreamir.options import at_least, positive
from dreamir.retriever import Retriever


@dataclass
class AutoRegEmbedOptions:
    """The options of both AutoRegEmbed stages (the number of compress tokens and the templates are the
    retriever's: --pooling compress --compress-tokens --query-template --document-template)."""

    _argument_group_name = "autoregembed options"  # its heading in --help

    autoregembed_target_tokens: int = field(
        default=128, metadata={"help": "tokens of each text the frozen decoder must generate (then EOS)"}
    )
    autoregembed_texts_per_example: int = field(
        default=1, metadata={"help": "autoregembed-ic: candidate passages compressed per example"}
    )
    autoregembed_beta: float = field(
        default=0.1, metadata={"help": "autoregembed-cda: beta inside the sigmoids of the alignment loss"}
    )
    autoregembed_temperature: float = field(
        default=0.1, metadata={"help": "autoregembed-cda: temperature T of the alignment loss"}
    )
    autoregembed_negatives: int = field(
        default=1,
        metadata={"help": "autoregembed-cda: negative passages per query (first non-gold candidates)"},
    )

    def __post_init__(self) -> None:
        at_least(
            self, 1, "autoregembed_target_tokens", "autoregembed_texts_per_example", "autoregembed_negatives"
        )
        positive(self, "autoregembed_beta", "autoregembed_temperature")


class AutoRegEmbedICLoss(Objective):
    name = "autoregembed-ic"
    options_class = AutoRegEmbedOptions
    uses_llm = True
    required_pooling = "compress"

    def __init__(
        self,
        retriever: Retriever,
        llm: FrozenCausalLM,
        temperature: float = 0.05,
        learn_temperature: bool = False,
        retriever_precision: RetrieverPrecision = "float32",
        target_tokens: int = 128,
        texts_per_example: int = 1,
    ) -> None:
        super().__init__(retriever, temperature, learn_temperature, retriever_precision)
        self.llm = llm
        self.target_tokens = target_tokens
        self.texts_per_example = texts_per_example

    @classmethod
    def from_options(
        cls, retriever: Retriever, options: AutoRegEmbedOptions, load_llm: LoadLLM, **common: Any
    ) -> AutoRegEmbedICLoss:
        return cls(retriever, load_llm(None, None, "preserve"), **cls.own_options(options), **common)

    @staticmethod
    def own_options(options: AutoRegEmbedOptions) -> dict[str, Any]:
        """The constructor's arguments from the command line's options."""
        return {
            "target_tokens": options.autoregembed_target_tokens,
            "texts_per_example": options.autoregembed_texts_per_example,
        }

    def compress(self, texts: list[str], is_query: bool, retriever: Retriever | None = None) -> Tensor:
        """The k compress-token states [n, k, h] of each text (float32, with autograd), by ``retriever``
        (default: the one being trained) inside its query or document template."""
        retriever = retriever or self.retriever
        with self.retriever_autocast():
            return retriever.compress(texts, is_query, self.train_max_length).float()

    def log_likelihood(self, prompts: Tensor, targets: list[str]) -> tuple[Tensor, Tensor]:
        """log p_decoder(target, EOS | prompt) per row, and the tokens scored per row."""
        return soft_prompt_log_likelihood(self.llm, prompts, targets, self.target_tokens)

    def forward(self, instances: list[TrainingInstance]) -> ObjectiveOutput:
        documents = list(
            {d.doc_id: d for i in instances for d in i.documents[: self.texts_per_example]}.values()
        )
        texts = [d.full_text for d in documents]
        log_likelihood, lengths = self.log_likelihood(self.compress(texts, is_query=False), texts)
        loss = -log_likelihood.sum() / lengths.sum()
        return ObjectiveOutput(loss, {"texts": float(len(texts)), "target_tokens": float(lengths.sum())})
