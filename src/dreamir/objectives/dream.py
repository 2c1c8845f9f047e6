"""DREAM: the retriever's distribution over candidates is written into the frozen LLM's query-focused heads,
and the LLM's next-token loss on the target is the retriever's loss. No relevance labels are used."""

from __future__ import annotations

from dreamir.llm.frozen import FrozenLLM
from dreamir.objectives.base import Objective, ObjectiveOutput, RetrieverPrecision, TrainingInstance
from dreamir.retriever import Retriever


class DreamLoss(Objective):
    def __init__(
        self,
        retriever: Retriever,
        llm: FrozenLLM,
        temperature: float = 0.05,
        learn_temperature: bool = False,
        retriever_precision: RetrieverPrecision = "float32",
        reuse_prefix: bool = True,
    ) -> None:
        super().__init__(retriever, temperature, learn_temperature, retriever_precision)
        if not llm.heads:
            raise ValueError("DREAM needs at least one selected head to inject into")
        self.llm = llm
        self.reuse_prefix = reuse_prefix

    def forward(self, instances: list[TrainingInstance]) -> ObjectiveOutput:
        scores, mask = self.candidate_scores(instances)
        probs = self.candidate_distribution(scores, mask)
        prompts = [
            self.llm.encode(i.query, [(d.title, d.text) for d in i.documents], i.target) for i in instances
        ]
        loss = self.llm.target_loss(self.llm.collate(prompts), probs, reuse_prefix=self.reuse_prefix)
        logs = {"entropy": self.entropy(probs), **self.gold_logs(probs, instances)}
        return ObjectiveOutput(loss, logs)
