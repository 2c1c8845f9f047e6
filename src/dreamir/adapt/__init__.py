"""`dreamir adapt`: make a retriever better on a corpus that has no queries and no labels.

Stages, each written atomically under ``OUT/work`` and skipped when its output exists (an interrupted run
picks up where it stopped; training resumes from its last checkpoint):

1. examples: (query, target, pseudo-gold passage) triples from the corpus alone (``dreamir.data.
   corpus_examples``), some held out for validation; BM25 candidates with the pseudo-gold put in;
2. heads: the LLM's query-focused heads scored on the training examples, each example's pseudo-gold
   standing in for a gold label (no label is used);
3. training (LoRA by default) with a label-free validation signal (how often the held-out examples'
   pseudo-gold ranks in the retriever's top 10 over the corpus), saving the best checkpoint by it, and
   optionally refreshing the candidates with the current retriever's own top-K (mined hard negatives);
4. ``OUT/model``: the kept checkpoint (``--keep auto``, the default: the last one unless the validation
   ended below its start, then the validation's best) as a sentence-transformers directory, its weights
   averaged with the starting retriever's if ``--base-weight`` is above 0 (``averaging``);
   ``OUT/report.json``, ``OUT/report.md`` and ``OUT/curves.png``.

Only ``CORPUS_DIR/corpus.jsonl`` is read: never queries or qrels.

One module a stage: ``arguments`` (the options), ``examples`` (1), ``heads`` (2), ``training`` (3) with its
callbacks ``validation`` and ``candidates`` (and ``encoding``, the retriever pass both make), ``averaging``
and ``report`` (4), and ``pipeline``, the command that runs them in order. Imports point one way:
pipeline -> stages -> arguments; no stage imports the pipeline.
"""

from dreamir.adapt.arguments import AdaptArguments
from dreamir.adapt.averaging import average_checkpoint, average_with_base
from dreamir.adapt.candidates import DenseCandidateRefresher
from dreamir.adapt.examples import (
    build_examples,
    prepare_examples,
    read_derived,
    source_passage,
    split_by_source,
)
from dreamir.adapt.heads import select_heads_label_free
from dreamir.adapt.pipeline import adapt
from dreamir.adapt.report import render_report
from dreamir.adapt.training import build_trainer
from dreamir.adapt.validation import TIE_BREAKER, VALIDATION_METRIC, PseudoGoldValidator

__all__ = [
    "TIE_BREAKER",
    "VALIDATION_METRIC",
    "AdaptArguments",
    "DenseCandidateRefresher",
    "PseudoGoldValidator",
    "adapt",
    "average_checkpoint",
    "average_with_base",
    "build_examples",
    "build_trainer",
    "prepare_examples",
    "read_derived",
    "render_report",
    "select_heads_label_free",
    "source_passage",
    "split_by_source",
]
