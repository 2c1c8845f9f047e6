"""What every objective shares: the training instance it receives and the retriever's candidate scores."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from dreamir import precision as compute
from dreamir.data.sampling import TrainingInstance
from dreamir.precision import Precision as RetrieverPrecision
from dreamir.retriever import Retriever

__all__ = ["LoadLLM", "Objective", "ObjectiveOutput", "RetrieverPrecision", "Temperature", "TrainingInstance"]

# Loads the frozen LLM for an objective: (head file or None, number of its top heads or None, injection mode).
LoadLLM = Callable[[str | None, int | None, str], Any]


@dataclass
class ObjectiveOutput:
    loss: Tensor
    logs: dict[str, float] = field(default_factory=dict)


class Temperature(nn.Module):
    """Softmax temperature tau over candidate scores, fixed or learnable (kept in log space, positive)."""

    def __init__(self, value: float = 0.05, learnable: bool = False) -> None:
        super().__init__()
        if value <= 0:
            raise ValueError(f"temperature must be positive, got {value}")
        self.log_tau = nn.Parameter(torch.tensor(math.log(value)), requires_grad=learnable)

    @property
    def value(self) -> Tensor:
        return self.log_tau.exp()


class Objective(nn.Module):
    """Base class: a loss module over the retriever (sentence-transformers style).

    ``retriever_precision`` bf16 ("bfloat16", or "auto" where the processor computes bf16 natively: see
    dreamir.precision) runs the retriever's forward (and so its backward) under bf16 autocast; its weights,
    the optimiser and the scores stay float32 (mixed precision)."""

    # Tokens the retriever reads per text while training (None: the model's own maximum). Shorter
    # texts make a step cheaper; inference keeps the model's own length.
    train_max_length: int | None = None
    # The registry's view of an objective (dreamir.objectives.OBJECTIVES): its --objective name, the
    # dataclass of its own options (None: it has none) and whether it reads the frozen LLM.
    name: ClassVar[str]
    options_class: ClassVar[type | None] = None
    uses_llm: ClassVar[bool] = False
    # The retriever pooling the objective trains (None: any).
    required_pooling: ClassVar[str | None] = None

    def __init__(
        self,
        retriever: Retriever,
        temperature: float = 0.05,
        learn_temperature: bool = False,
        retriever_precision: RetrieverPrecision = "float32",
    ) -> None:
        super().__init__()
        if self.required_pooling not in (None, retriever.config.pooling):
            raise ValueError(
                f"{self.name} trains a retriever with {self.required_pooling!r} pooling; this one pools "
                f"{retriever.config.pooling!r} (pass --pooling {self.required_pooling})"
            )
        self.retriever = retriever
        self.temperature = Temperature(temperature, learn_temperature)
        # Resolved once: what the retriever computes in on its device.
        self.retriever_precision: compute.Resolved = compute.resolve(retriever_precision, retriever.device)

    def compute_dtypes(self) -> dict[str, str]:
        """The dtype each model of the objective computes in (for logs and reports)."""
        dtypes = {"retriever": self.retriever_precision}
        llm_precision = getattr(getattr(self, "llm", None), "precision", None)
        if llm_precision is not None:
            dtypes["llm"] = llm_precision
        return dtypes

    def retriever_autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast for the retriever when its precision is bf16. Several embedding calls inside one
        such context cast the float32 weights to bf16 once, not once per call."""
        return compute.autocast(self.retriever_precision, self.retriever.device)

    def embed(self, texts: list[str], is_query: bool) -> Tensor:
        """The retriever's embeddings with autograd, float32 whatever the precision."""
        with self.retriever_autocast():
            return self.retriever(texts, is_query=is_query, max_length=self.train_max_length).float()

    def similarity(self, queries: Tensor, documents: Tensor) -> Tensor:
        """Scores [m, n] by the retriever's own similarity, the one evaluation and search use too."""
        return self.retriever.similarity(queries, documents)

    def candidate_scores(self, instances: list[TrainingInstance]) -> tuple[Tensor, Tensor]:
        """Scores [B, K] between each query and its candidates (the retriever's similarity), and the mask of
        real candidates."""
        width = max(len(i.documents) for i in instances)
        with self.retriever_autocast():
            queries = self.embed([i.query for i in instances], is_query=True)
            documents = self.embed([d.full_text for i in instances for d in i.documents], is_query=False)
        scores = queries.new_zeros(len(instances), width)
        mask = torch.zeros(len(instances), width, dtype=torch.bool, device=queries.device)
        offset = 0
        for b, instance in enumerate(instances):
            count = len(instance.documents)
            scores[b, :count] = self.similarity(queries[b : b + 1], documents[offset : offset + count])[0]
            mask[b, :count] = True
            offset += count
        return scores, mask

    def candidate_distribution(self, scores: Tensor, mask: Tensor) -> Tensor:
        """p = softmax_k(s_k / tau) over the real candidates."""
        return torch.softmax((scores / self.temperature.value).masked_fill(~mask, float("-inf")), dim=-1)

    @classmethod
    def from_options(cls, retriever: Retriever, options: Any, load_llm: LoadLLM, **common: Any) -> Objective:
        """Build from the objective's own options (an ``options_class`` instance, or None); ``common``:
        temperature, learn_temperature and retriever_precision."""
        return cls(retriever, **common)

    def forward(self, instances: list[TrainingInstance]) -> ObjectiveOutput:
        raise NotImplementedError

    def temperature_logs(self) -> dict[str, float]:
        return {"tau": float(self.temperature.value.detach())}

    @staticmethod
    def entropy(probs: Tensor) -> float:
        """Mean entropy (nats) of the rows of a distribution over candidates (diagnostics only)."""
        return float(-(probs * probs.clamp_min(1e-12).log()).sum(-1).mean().detach())

    @staticmethod
    def gold_logs(probs: Tensor, instances: list[TrainingInstance]) -> dict[str, float]:
        """Diagnostics only: how much of p the gold document gets, where a gold is known."""
        rows = [(b, i.gold_index) for b, i in enumerate(instances) if i.gold_index is not None]
        if not rows:
            return {}
        gold = torch.stack([probs[b, g] for b, g in rows]).detach()
        ranks = [int((probs[b] > probs[b, g]).sum()) for b, g in rows]
        return {"p_gold": float(gold.mean()), "gold_top1": sum(r == 0 for r in ranks) / len(ranks)}
