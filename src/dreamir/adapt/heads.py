"""Stage 2, heads: the LLM's query-focused heads scored on the training examples, each example's
pseudo-gold standing in for a gold label (no label is used)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from dreamir.adapt.arguments import AdaptArguments
from dreamir.data.beir import Document
from dreamir.data.training import TrainingExample
from dreamir.llm.frozen import FrozenLLM
from dreamir.llm.heads import CalibrationExample, HeadSet, rank_heads, score_heads
from dreamir.llm.prompt import PromptSettings


def select_heads_label_free(
    args: AdaptArguments, train: Sequence[TrainingExample], corpus: Mapping[str, Document], out: Path
) -> HeadSet:
    """QRHead scoring with each example's pseudo-gold as its gold: no label involved."""
    calibration = []
    for example in train[: args.head_examples]:
        ids = list(example.candidate_ids or [])
        if example.gold_id not in ids:
            continue
        documents = [(corpus[i].title, corpus[i].text) for i in ids]
        calibration.append(CalibrationExample(example.query, documents, ids.index(example.gold_id)))
    llm = FrozenLLM.from_pretrained(
        args.llm, prompt=PromptSettings(document_layout=args.document_layout), precision=args.precision
    )
    scores = score_heads(llm, calibration, batch_size=4, show_progress=args.show_progress)
    heads = rank_heads(
        scores,
        args.llm,
        {
            "method": "qrhead-pseudo-gold",
            "examples": len(calibration),
            "recipe": args.recipe,
            "top_k": args.num_heads,
            "document_layout": args.document_layout,
            "precision": llm.precision,
        },
    )
    heads.save(out)
    return heads
