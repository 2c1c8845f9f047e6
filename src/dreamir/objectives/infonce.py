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
        queries = self.retriever([i.query for i in labelled], is_query=True)
        # Pool: each example's gold, then every candidate that is not some example's gold.
        golds = [i.gold for i in labelled]
        gold_ids = {d.doc_id for d in golds}
        negatives = list(
            {d.doc_id: d for i in labelled for d in i.documents if d.doc_id not in gold_ids}.values()
        )
        pool = self.retriever([d.full_text for d in golds + negatives], is_query=False)
        logits = queries @ pool.T / self.temperature.value
        targets = torch.arange(len(labelled), device=logits.device)
        loss = torch.nn.functional.cross_entropy(logits, targets)
        accuracy = float((logits.argmax(-1) == targets).float().mean())
        logs = {"in_batch_top1": accuracy, "pool_size": float(len(golds) + len(negatives))}
        logs.update(self.gold_logs(self._over_own_candidates(logits, labelled, golds + negatives), labelled))
        return ObjectiveOutput(loss, logs)

    def _over_own_candidates(
        self, logits: Tensor, instances: list[TrainingInstance], pool: list[Document]
    ) -> Tensor:
        """Each query's softmax over its own K candidates only, as the label-free objectives log it, so that
        p_gold reads the same in every objective's curves."""
        column = {}
        for index, document in enumerate(pool):
            column.setdefault(document.doc_id, index)
        width = max(len(i.documents) for i in instances)
        own = logits.new_full((len(instances), width), float("-inf"))
        for b, instance in enumerate(instances):
            columns = [column[d.doc_id] for d in instance.documents]
            own[b, : len(columns)] = logits[b, columns]
        return torch.softmax(own.detach(), dim=-1)
