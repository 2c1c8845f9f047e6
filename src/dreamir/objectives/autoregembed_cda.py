"""AutoRegEmbed, conditional distribution alignment (needs pairs): with lp(x | e) the frozen decoder's
log-likelihood of passage x after the compress-token vectors e, a query's vectors should make its gold
passage d+ likelier than a negative d- ("next", the query template), and about as likely as d+'s own
vectors make it ("self", the document template):

    z = [lp(d+|q) - lp(d-|q)] + [ref(d+|q) - ref(d-|q)],   s2 = sigmoid(beta z),
    s1 = sigmoid(beta |lp(d+|q) - lp(d+|d+)|),             loss = -log(e^(-s1/T) / (e^(-s1/T) + e^(-s2/T)))

where ref is the same log-likelihood under the frozen model the stage starts from (the information
compression stage's), computed once per (query, passage) and kept (Deng et al., EMNLP 2025)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from dreamir.data.beir import Document
from dreamir.llm.causal_lm import FrozenCausalLM
from dreamir.objectives.autoregembed_ic import AutoRegEmbedICLoss, AutoRegEmbedOptions
from dreamir.objectives.base import ObjectiveOutput, TrainingInstance
from dreamir.retriever import Retriever


class AutoRegEmbedCDALoss(AutoRegEmbedICLoss):
    name = "autoregembed-cda"
    options_class = AutoRegEmbedOptions
    uses_llm = True

    def __init__(
        self,
        retriever: Retriever,
        llm: FrozenCausalLM,
        *,
        beta: float = 0.1,
        alignment_temperature: float = 0.1,
        negatives: int = 1,
        **common: Any,
    ) -> None:
        """``common``: the information compression stage's arguments (temperature, target_tokens, ...)."""
        super().__init__(retriever, llm, **common)
        self.beta = beta
        self.alignment_temperature = alignment_temperature
        self.negatives = negatives
        # The model the stage starts from, frozen: not a submodule, so that it is neither trained nor saved.
        reference = copy.deepcopy(retriever).requires_grad_(False).eval()
        object.__setattr__(self, "reference", reference)
        self._reference_scores: dict[tuple[str, str], float] = {}

    @staticmethod
    def own_options(options: AutoRegEmbedOptions) -> dict[str, Any]:
        return {
            "target_tokens": options.autoregembed_target_tokens,
            "beta": options.autoregembed_beta,
            "alignment_temperature": options.autoregembed_temperature,
            "negatives": options.autoregembed_negatives,
        }

    def triples(self, instances: list[TrainingInstance]) -> list[tuple[str, Document, list[Document]]]:
        """(query, gold passage, its first ``negatives`` non-gold candidates) of each usable example."""
        triples = []
        for instance in instances:
            if instance.gold is None:
                continue
            negatives = [d for d in instance.documents if d.doc_id != instance.gold.doc_id][: self.negatives]
            if negatives:
                triples.append((instance.query, instance.gold, negatives))
        if not triples:
            raise ValueError(f"{self.name} needs examples with a gold_id and at least one other candidate")
        return triples

    @torch.no_grad()
    def reference_scores(self, pairs: list[tuple[str, Document]]) -> Tensor:
        """ref(d | q) for each (query, passage): the frozen starting model's lp, computed once per pair."""
        todo = list(
            {(q, d.doc_id): (q, d) for q, d in pairs if (q, d.doc_id) not in self._reference_scores}.values()
        )
        if todo:
            prompts = self.compress([q for q, _ in todo], is_query=True, retriever=self.reference)
            scores, _ = self.log_likelihood(prompts, [d.full_text for _, d in todo])
            for (q, d), score in zip(todo, scores.tolist(), strict=True):
                self._reference_scores[(q, d.doc_id)] = score
        return torch.tensor([self._reference_scores[(q, d.doc_id)] for q, d in pairs])

    def forward(self, instances: list[TrainingInstance]) -> ObjectiveOutput:
        triples = self.triples(instances)
        width = self.negatives
        queries = self.compress([q for q, _, _ in triples], is_query=True)
        golds = self.compress([g.full_text for _, g, _ in triples], is_query=False)
        # One decoder pass over every (prompt, target): q -> d+, q -> each d-, d+ -> d+.
        rows, targets, pairs = [], [], []
        for b, (query, gold, negatives) in enumerate(triples):
            padded = (negatives * width)[:width]  # fewer negatives than asked: cycle through them
            for document in [gold, *padded]:
                rows.append(queries[b])
                targets.append(document.full_text)
                pairs.append((query, document))
        prompts = torch.cat([torch.stack(rows), golds])
        log_likelihood, _ = self.log_likelihood(prompts, targets + [g.full_text for _, g, _ in triples])
        count = len(triples)
        given_query = log_likelihood[: count * (width + 1)].view(count, width + 1)
        given_self = log_likelihood[count * (width + 1) :].unsqueeze(1)
        reference = self.reference_scores(pairs).to(given_query.device).view(count, width + 1)
        margin = given_query[:, :1] - given_query[:, 1:]
        z = margin + (reference[:, :1] - reference[:, 1:])
        s2 = torch.sigmoid(self.beta * z)
        s1 = torch.sigmoid(self.beta * (given_query[:, :1] - given_self).abs())
        # -log(e^(-s1/T) / (e^(-s1/T) + e^(-s2/T))) = softplus((s1 - s2) / T), stable in floating point.
        loss = torch.nn.functional.softplus((s1 - s2) / self.alignment_temperature).mean()
        logs = {
            "margin": float(margin.detach().mean()),
            "margin_positive": float((margin.detach() > 0).float().mean()),
            "self_gap": float((given_query[:, :1] - given_self).detach().abs().mean()),
            "reference_margin": float((reference[:, :1] - reference[:, 1:]).mean()),
        }
        return ObjectiveOutput(loss, logs)
