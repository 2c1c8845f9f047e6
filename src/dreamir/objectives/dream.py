"""DREAM: the retriever's distribution over candidates is written into the frozen LLM's query-focused heads,
and the LLM's next-token loss on the target is the retriever's loss. No relevance labels are used.

With ``dream_candidates="batch"`` a query's prompt holds every distinct candidate of the batch (its own and the
other queries'), and p is the softmax over all of them: the LLM's judgement then also pushes away passages
that do not help this query, not only its own BM25 neighbours."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from dreamir.distributed import share_of_mean
from dreamir.llm.frozen import FrozenLLM
from dreamir.objectives.base import (
    CandidateSource,
    LoadLLM,
    Objective,
    ObjectiveOutput,
    RetrieverPrecision,
    TrainingInstance,
)
from dreamir.options import at_least, non_negative
from dreamir.retriever import Retriever


@dataclass
class DreamOptions:
    _argument_group_name = "dream options"  # its heading in --help

    heads: str | None = field(default=None, metadata={"help": "head file written by `dreamir heads` (dream)"})
    num_heads: int | None = field(
        default=None, metadata={"help": "heads injected; default: the head file's top_k"}
    )
    injection_mode: Literal["preserve", "replace", "prior"] = field(
        default="preserve", metadata={"help": "how p sets the documents' attention in a head (see METHOD)"}
    )
    reference_step: bool = field(
        default=False, metadata={"help": "full-prompt step instead of the cached one (slower, same loss)"}
    )
    dream_candidates: CandidateSource = field(
        default="own",
        metadata={
            "help": "own: a query's prompt holds its own K candidates; batch: every distinct candidate of the "
            "batch (all processes' queries), p the softmax over all of them, so the LLM's judgement also "
            "pushes away passages shown to other queries. In the parallel layout with the document cache "
            "this costs attention over more cached keys, not more documents read"
        },
    )

    anchor_weight: float = field(
        default=0.0,
        metadata={
            "help": "weight of KL(p_start || p), the distance of p over the candidates from the starting "
            "retriever's own distribution, added to DREAM's loss so that training keeps what the retriever "
            "knew (0: no anchor)"
        },
    )

    def __post_init__(self) -> None:
        at_least(self, 1, "num_heads")
        non_negative(self, "anchor_weight")


class DreamLoss(Objective):
    name = "dream"
    options_class = DreamOptions
    uses_llm = True

    def __init__(
        self,
        retriever: Retriever,
        llm: FrozenLLM,
        temperature: float = 0.05,
        learn_temperature: bool = False,
        retriever_precision: RetrieverPrecision = "float32",
        reuse_prefix: bool = True,
        candidates: CandidateSource = "own",
        anchor_weight: float = 0.0,
    ) -> None:
        super().__init__(retriever, temperature, learn_temperature, retriever_precision)
        if not llm.heads:
            raise ValueError("DREAM needs at least one selected head to inject into")
        self.llm = llm
        self.reuse_prefix = reuse_prefix
        self.candidates = candidates
        self.anchor_weight = anchor_weight
        if anchor_weight:
            self.keep_starting_retriever()

    @classmethod
    def from_options(
        cls, retriever: Retriever, options: DreamOptions, load_llm: LoadLLM, **common: Any
    ) -> DreamLoss:
        if options.heads is None:
            raise ValueError("DREAM needs --heads (a head file from `dreamir heads`)")
        llm = load_llm(options.heads, options.num_heads, options.injection_mode)
        return cls(
            retriever,
            llm,
            reuse_prefix=not options.reference_step,
            candidates=options.dream_candidates,
            anchor_weight=options.anchor_weight,
            **common,
        )

    def forward(self, instances: list[TrainingInstance]) -> ObjectiveOutput:
        instances, scores, mask = self.scored_candidates(instances, self.candidates)
        probs = self.candidate_distribution(scores, mask)
        prompts = [
            self.llm.encode(i.query, [(d.title, d.text) for d in i.documents], i.target) for i in instances
        ]
        batch = self.llm.collate(prompts)
        # A mean over target tokens: weighted by token counts across processes, not averaged per process
        # (the share is exactly 1.0 in one process, and multiplying by it changes no bit).
        loss = self.llm.target_loss(batch, probs, reuse_prefix=self.reuse_prefix) * share_of_mean(
            batch.target_tokens
        )
        logs = {"entropy": self.entropy(probs), **self.gold_logs(probs, instances), **self.temperature_logs()}
        if self.anchor_weight:
            divergence = self.anchor_divergence(instances, probs, mask)
            logs.update(dream_loss=float(loss.detach()), anchor_kl=float(divergence.detach()))
            loss = loss + self.anchor_weight * divergence
        if self.candidates == "batch":
            logs["pool_size"] = float(scores.shape[1])
        return ObjectiveOutput(loss, logs)
