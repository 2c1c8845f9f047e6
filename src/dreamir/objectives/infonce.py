"""InfoNCE with labels, the contrastive baseline on identical data: the gold passage is the positive; the
other candidates of the example and every document of the other examples in the batch are negatives. With
several processes the batch is every process's examples: queries and passages are gathered (this process's
keeping their gradient), so the loss and its gradient are those of one process holding the whole batch."""

from __future__ import annotations

import torch
from torch import Tensor

from dreamir import distributed
from dreamir.data.beir import Document
from dreamir.objectives.base import Objective, ObjectiveOutput, TrainingInstance


def _pool(labelled: list[TrainingInstance]) -> tuple[list[Document], list[Document]]:
    """Each example's gold, and every candidate that is not some example's gold (first appearance order)."""
    golds = [i.gold for i in labelled if i.gold is not None]
    gold_ids = {d.doc_id for d in golds}
    negatives = {d.doc_id: d for i in labelled for d in i.documents if d.doc_id not in gold_ids}
    return golds, list(negatives.values())


class InfoNCELoss(Objective):
    name = "infonce"

    def forward(self, instances: list[TrainingInstance]) -> ObjectiveOutput:
        labelled = [i for i in instances if i.gold is not None]
        if not labelled:
            raise ValueError("InfoNCE needs examples with a gold_id")
        golds, negatives = _pool(labelled)
        pool_documents = golds + negatives
        with self.retriever_autocast():  # the weights cast to bf16 once for both calls
            queries = self.embed([i.query for i in labelled], is_query=True)
            pool = self.embed([d.full_text for d in pool_documents], is_query=False)
        first_query = 0
        if distributed.current().count > 1:
            queries, pool, pool_documents, first_query = self._whole_batch(queries, pool, golds, negatives)
        similarities = self.similarity(queries, pool)
        logits = similarities / self.temperature.value
        targets = torch.arange(len(queries), device=logits.device)
        loss = torch.nn.functional.cross_entropy(logits, targets)
        accuracy = float((logits.argmax(-1) == targets).float().mean())
        logs = {"in_batch_top1": accuracy, "pool_size": float(len(pool_documents)), **self.temperature_logs()}
        # Diagnostics only, over this process's examples: detached, so that they build no graph.
        own_rows = similarities.detach()[first_query : first_query + len(labelled)]
        own = self._own_candidate_scores(own_rows, labelled, pool_documents)
        logs.update(self.gold_logs(self.candidate_distribution(*own), labelled))
        return ObjectiveOutput(loss, logs)

    @staticmethod
    def _whole_batch(
        queries: Tensor, pool: Tensor, golds: list[Document], negatives: list[Document]
    ) -> tuple[Tensor, Tensor, list[Document], int]:
        """Every process's queries and the pool one process would build from all their examples, in the
        same order (golds by process, then negatives by first appearance); and where this process's
        queries start."""
        all_queries, query_counts = distributed.gather_rows(queries)
        all_pool, _ = distributed.gather_rows(pool)
        pieces = distributed.gather_objects(([d.doc_id for d in golds], [d.doc_id for d in negatives]))
        documents = {d.doc_id: d for d in golds + negatives}
        offsets, offset = [], 0
        for gold_ids, negative_ids in pieces:
            offsets.append(offset)
            offset += len(gold_ids) + len(negative_ids)
        rows, order = [], []
        for (gold_ids, _), start in zip(pieces, offsets, strict=True):
            rows += range(start, start + len(gold_ids))
            order += gold_ids
        taken = set(order)
        for (gold_ids, negative_ids), start in zip(pieces, offsets, strict=True):
            for position, doc_id in enumerate(negative_ids, start=start + len(gold_ids)):
                if doc_id not in taken:
                    taken.add(doc_id)
                    rows.append(position)
                    order.append(doc_id)
        # Other processes' passages are only known by id here: a stand-in keeps the list's length.
        pool_documents = [documents.get(i, Document(i, "", "")) for i in order]
        first_query = sum(query_counts[: distributed.current().rank])
        return all_queries, all_pool[rows], pool_documents, first_query

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
