"""REPLUG-LSR, the LM-supervised baseline: the frozen LLM scores each candidate alone,
q_k = softmax_k(log P_LLM(target | d_k, query) / beta), and the retriever's p is pulled towards q with
KL(q || p). Label-free, same frozen LLM, one no-grad LLM pass per candidate (batched).

For a fair comparison with DREAM's in-batch candidates, ``replug_candidates="batch"`` gives q and p the very
pool ``dream_candidates="batch"`` gives DREAM (every distinct candidate of the batch). Its cost then grows
with the pool: one pass per (query, pool passage), B x P per step where DREAM reads B prompts (each judgement
is computed once and kept, so a pair seen again costs nothing)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from dreamir.llm.frozen import FrozenLLM
from dreamir.objectives.base import (
    CandidateSource,
    LoadLLM,
    Objective,
    ObjectiveOutput,
    RetrieverPrecision,
    TrainingInstance,
)
from dreamir.options import positive
from dreamir.retriever import Retriever


@dataclass
class ReplugOptions:
    _argument_group_name = "replug options"  # its heading in --help

    replug_beta: float = field(
        default=1.0, metadata={"help": "temperature of the LLM's target distribution q (replug)"}
    )
    replug_candidates: CandidateSource = field(
        default="own",
        metadata={
            "help": "own: q and p over a query's own K candidates; batch: over the batch's pool of distinct "
            "candidates, as --dream-candidates batch (the same pool for a fair comparison; one LLM pass per "
            "query and pool passage, B x P per step, where DREAM reads one prompt per query)"
        },
    )

    def __post_init__(self) -> None:
        positive(self, "replug_beta")


class ReplugLoss(Objective):
    name = "replug"
    options_class = ReplugOptions
    uses_llm = True

    def __init__(
        self,
        retriever: Retriever,
        llm: FrozenLLM,
        temperature: float = 0.05,
        learn_temperature: bool = False,
        retriever_precision: RetrieverPrecision = "float32",
        beta: float = 1.0,
        llm_batch_size: int = 8,
        candidates: CandidateSource = "own",
    ) -> None:
        super().__init__(retriever, temperature, learn_temperature, retriever_precision)
        self.llm = llm
        self.beta = beta
        self.llm_batch_size = llm_batch_size
        self.candidates = candidates
        # The LLM's judgement of a (query, document, target) never changes: compute it once.
        self._log_likelihood: dict[tuple[str, str, str], float] = {}

    @classmethod
    def from_options(
        cls, retriever: Retriever, options: ReplugOptions, load_llm: LoadLLM, **common: Any
    ) -> ReplugLoss:
        return cls(
            retriever,
            load_llm(None, None, "preserve"),
            beta=options.replug_beta,
            candidates=options.replug_candidates,
            **common,
        )

    @torch.no_grad()
    def target_log_likelihood(self, instances: list[TrainingInstance]) -> torch.Tensor:
        """log P_LLM(target | d_k, query) for every candidate: [B, K] (-inf for empty slots)."""
        width = max(len(i.documents) for i in instances)
        keys = [(i.query, d.doc_id, i.target) for i in instances for d in i.documents]
        todo = [
            (i, d)
            for i in instances
            for d in i.documents
            if (i.query, d.doc_id, i.target) not in self._log_likelihood
        ]
        for start in range(0, len(todo), self.llm_batch_size):
            chunk = todo[start : start + self.llm_batch_size]
            batch = self.llm.collate(
                [self.llm.encode(i.query, [(d.title, d.text)], i.target) for i, d in chunk]
            )
            mean_nll = self.llm.target_loss(batch, None, reduction="example")
            lengths = (batch.labels != -100).sum(-1)
            for (i, d), nll, n in zip(chunk, mean_nll.tolist(), lengths.tolist(), strict=True):
                self._log_likelihood[(i.query, d.doc_id, i.target)] = -nll * n
        values = iter(self._log_likelihood[k] for k in keys)
        result = torch.full((len(instances), width), float("-inf"))
        for b, instance in enumerate(instances):
            for k in range(len(instance.documents)):
                result[b, k] = next(values)
        return result

    def forward(self, instances: list[TrainingInstance]) -> ObjectiveOutput:
        instances, scores, mask = self.scored_candidates(instances, self.candidates)
        log_p = torch.log_softmax((scores / self.temperature.value).masked_fill(~mask, float("-inf")), -1)
        q = torch.softmax(self.target_log_likelihood(instances).to(scores.device) / self.beta, -1)
        # KL(q || p) = sum q (log q - log p); empty slots have q = 0 and contribute nothing.
        kl = (q * (q.clamp_min(1e-12).log() - log_p.masked_fill(~mask, 0.0))).sum(-1).mean()
        # The target's own entropy and gold mass show how sharp a teacher q is next to the retriever's p.
        p = log_p.exp()
        logs = {"entropy": self.entropy(p), "target_entropy": self.entropy(q), **self.temperature_logs()}
        logs.update(self.gold_logs(p, instances))
        logs.update({f"target_{k}": v for k, v in self.gold_logs(q, instances).items()})
        if self.candidates == "batch":
            logs["pool_size"] = float(scores.shape[1])
        return ObjectiveOutput(kl, logs)
