"""What every objective shares: the training instance it receives and the retriever's candidate scores."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from dreamir import distributed
from dreamir import precision as compute
from dreamir.data.beir import Document
from dreamir.data.sampling import TrainingInstance
from dreamir.precision import Precision as RetrieverPrecision
from dreamir.retriever import Retriever

__all__ = [
    "CANDIDATE_SOURCES",
    "CandidateSource",
    "LoadLLM",
    "Objective",
    "ObjectiveOutput",
    "RetrieverPrecision",
    "Temperature",
    "TrainingInstance",
]

# Loads the frozen LLM for an objective: (head file or None, number of its top heads or None, injection mode).
LoadLLM = Callable[[str | None, int | None, str], Any]

# Which candidates a query's distribution p covers: its own K, or every distinct candidate of the batch
# (with several processes, of the whole batch all of them hold), so that the teacher also speaks about
# passages shown to other queries.
CandidateSource = Literal["own", "batch"]
CANDIDATE_SOURCES: tuple[str, ...] = ("own", "batch")


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

    def embed(self, texts: list[str], is_query: bool, retriever: Retriever | None = None) -> Tensor:
        """The retriever's (or ``retriever``'s) embeddings with autograd, float32 whatever the precision."""
        with self.retriever_autocast():
            encoder = retriever or self.retriever
            return encoder(texts, is_query=is_query, max_length=self.train_max_length).float()

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

    def scored_candidates(
        self, instances: list[TrainingInstance], source: CandidateSource
    ) -> tuple[list[TrainingInstance], Tensor, Tensor]:
        """The instances with the candidates their p covers, the scores [B, K] and the mask of real
        candidates: ``own`` keeps every query's own candidates (``candidate_scores``), ``batch`` gives every
        query the batch's pool (``in_batch_scores``)."""
        if source == "batch":
            return self.in_batch_scores(instances)
        if source != "own":
            raise ValueError(f"candidates must be one of {CANDIDATE_SOURCES}, got {source!r}")
        return instances, *self.candidate_scores(instances)

    def in_batch_scores(
        self, instances: list[TrainingInstance]
    ) -> tuple[list[TrainingInstance], Tensor, Tensor]:
        """In-batch candidates: the pool is every distinct candidate (by document id, in order of first
        appearance) of the batch's queries, and of every process's queries when several run, so that N
        processes with batch B see the pool one process with batch N * B sees. Returns the instances with
        the pool as their candidates (the gold's index into it, where it is there), the scores [B, P] of
        every query against the whole pool and the mask (all true). Each pool passage is embedded once."""
        local = _distinct_documents(instances)
        with self.retriever_autocast():
            queries = self.embed([i.query for i in instances], is_query=True)
            documents = self.embed([d.full_text for d in local], is_query=False)
        pool = local
        if distributed.current().count > 1:
            documents, pool = _whole_batch_pool(documents, local)
        scores = self.similarity(queries, documents)
        position = {d.doc_id: k for k, d in enumerate(pool)}
        pooled = [
            TrainingInstance(i.query, i.target, pool, position.get(_gold_id(i)), i.gold) for i in instances
        ]
        return pooled, scores, torch.ones_like(scores, dtype=torch.bool)

    def keep_starting_retriever(self) -> None:
        """Freeze a copy of the retriever as it is now (before any step), for ``starting_scores``. Held
        outside the module tree: it is no parameter, is never trained, saved or put in training mode."""
        frozen = copy.deepcopy(self.retriever).eval().requires_grad_(False)
        self._starting = (frozen,)

    @torch.no_grad()
    def starting_scores(self, instances: list[TrainingInstance], mask: Tensor) -> Tensor:
        """The starting retriever's scores [B, K] of each instance's candidates (those ``scored_candidates``
        returned: its own, or the batch's pool), zero where ``mask`` is false."""
        (start,) = self._starting
        queries = self.embed([i.query for i in instances], is_query=True, retriever=start)
        distinct = _distinct_documents(instances)
        row = {d.doc_id: k for k, d in enumerate(distinct)}
        documents = self.embed([d.full_text for d in distinct], is_query=False, retriever=start)
        scores = torch.zeros(mask.shape, dtype=queries.dtype, device=queries.device)
        for b, instance in enumerate(instances):
            rows = torch.tensor([row[d.doc_id] for d in instance.documents], device=queries.device)
            scores[b, : len(rows)] = self.similarity(queries[b : b + 1], documents[rows])[0]
        return scores

    def anchor_divergence(self, instances: list[TrainingInstance], probs: Tensor, mask: Tensor) -> Tensor:
        """KL(p_start || p), averaged over queries: how far p over these candidates has moved from the
        starting retriever's distribution at the current temperature (0 before the first step but for the
        live retriever's dropout: the copy runs without it). A penalty on
        it keeps what the starting retriever knew about passages the LLM's judgement does not speak for."""
        logits = self.starting_scores(instances, mask) / self.temperature.value.detach()
        start = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)
        terms = torch.xlogy(start, start) - torch.xlogy(start, probs.clamp_min(1e-30))
        return terms.masked_fill(~mask, 0.0).sum(-1).mean()

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


def _distinct_documents(instances: list[TrainingInstance]) -> list[Document]:
    """Every candidate of the instances once, by document id, in order of first appearance."""
    return list({d.doc_id: d for i in instances for d in i.documents}.values())


def _gold_id(instance: TrainingInstance) -> str | None:
    if instance.gold is not None:
        return instance.gold.doc_id
    return instance.documents[instance.gold_index].doc_id if instance.gold_index is not None else None


def _whole_batch_pool(embeddings: Tensor, documents: list[Document]) -> tuple[Tensor, list[Document]]:
    """Every process's pool passages (this process's rows keeping their gradient), deduplicated in rank
    order of first appearance: the pool one process holding every process's queries builds."""
    rows, _ = distributed.gather_rows(embeddings)
    pieces = distributed.gather_objects(documents)
    keep, pool, seen = [], [], set()
    for row, document in enumerate(d for piece in pieces for d in piece):
        if document.doc_id not in seen:
            seen.add(document.doc_id)
            keep.append(row)
            pool.append(document)
    return rows[keep], pool
