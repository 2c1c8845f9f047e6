"""InfoNCE with labels, the contrastive baseline on identical data: the gold passage is the positive; the
other candidates of the example and every document of the other examples in the batch are negatives."""

from __future__ import annotations

import torch
from torch import Tensor

from dreamir.data.beir import Document
from dreamir.objectives.base import Objective, ObjectiveOutput, TrainingInstance


class InfoNCELoss(Objective):
    def forward(self, instances: list[TrainingInstance]) -> ObjectiveOutput:
        labelled = [i for i in instances if i.gold is not None]
        if not labelled:
            raise ValueError("InfoNCE needs examples with a gold_id")
        queries = self.embed([i.query for i in labelled], is_query=True)
        # Pool: each example's gold, then every candidate that is not some example's gold.
        golds = [i.gold for i in labelled]
        gold_ids = {d.doc_id for d in golds}
        negatives = list(
            {d.doc_id: d for i in labelled for d in i.documents if d.doc_id not in gold_ids}.values()
        )
        pool = self.embed([d.full_text for d in golds + negatives], is_query=False)
        similarities = self.similarity(queries, pool)
        logits = similarities / self.temperature.value
        targets = torch.arange(len(labelled), device=logits.device)
        loss = torch.nn.functional.cross_entropy(logits, targets)
        accuracy = float((logits.argmax(-1) == targets).float().mean())
        logs = {"in_batch_top1": accuracy, "pool_size": float(len(golds) + len(negatives))}
        # Diagnostics only: detached, so that they build no graph.
        own = self._own_candidate_scores(similarities.detach(), labelled, golds + negatives)
        logs.update(self.gold_logs(self.candidate_distribution(*own), labelled))
        return ObjectiveOutput(loss, logs)

    @staticmethod
    def _own_candidate_scores(
        similarities: Tensor, instances: list[TrainingInstance], pool: list[Document]
    ) -> tuple[Tensor, Tensor]:
        """Each query's scores over its own K candidates only, [B, K] with the mask of real ones, as the
        label-free objectives' candidate_scores gives them, so that p_gold reads the same in every
        objective's curves."""
        column: dict[str, int] = {}
        for index, document in enumerate(pool):
            column.setdefault(document.doc_id, index)
        width = max(len(i.documents) for i in instances)
        scores = similarities.new_zeros(len(instances), width)
        mask = torch.zeros(len(instances), width, dtype=torch.bool, device=similarities.device)
        for b, instance in enumerate(instances):
            columns = [column[d.doc_id] for d in instance.documents]
            scores[b, : len(columns)] = similarities[b, columns]
            mask[b, : len(columns)] = True
        return scores, mask
