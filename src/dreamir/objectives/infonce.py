"""InfoNCE with labels, the contrastive baseline on identical data: the gold passage is the positive; the
other candidates of the example and every document of the other examples in the batch are negatives."""

from __future__ import annotations

import torch

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
        return ObjectiveOutput(
            loss, {"in_batch_top1": accuracy, "pool_size": float(len(golds) + len(negatives))}
        )
