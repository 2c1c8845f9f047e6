"""What the trainer feeds an objective at each step: examples drawn in a seeded order, each with its first K
candidates (shuffled per example) resolved into passages.

Everything here is a pure function of (seed, step, process rank, number of processes): a resumed run sees
the very batches an uninterrupted one would, and the processes of a multi-process run share each step's
examples out between them (process r takes the r-th slice of the step's global batch), so N processes with
batch B see exactly what one process with batch N * B sees.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from dreamir.data.beir import Document
from dreamir.data.training import TrainingExample
from dreamir.options import at_least

logger = logging.getLogger(__name__)


@dataclass
class TrainingInstance:
    """One query with its K candidates, in the order the objective should use them."""

    query: str
    target: str
    documents: list[Document]
    gold_index: int | None = None  # position of the gold among the candidates, if it is one (logging)
    gold: Document | None = None  # the gold passage, candidate or not: only labelled baselines use it


@dataclass
class SamplingArguments:
    _argument_group_name = "candidates"  # its heading in --help

    num_candidates: int = field(
        default=8, metadata={"help": "candidates per example: the first K of its candidate_ids"}
    )
    # Per example, against the LLM's position bias (sequential layout); in the parallel layout the order
    # changes nothing the LLM computes, so shuffling is harmless there and changes only the logged order.
    shuffle_candidates: bool = field(
        default=True, metadata={"help": "shuffle each example's candidates (seeded), against position bias"}
    )

    def __post_init__(self) -> None:
        at_least(self, 1, "num_candidates")


def example_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of the examples in ``epoch`` (one pass over them)."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def step_positions(step: int, per_process: int, rank: int = 0, processes: int = 1) -> range:
    """Positions in the endless, epoch-by-epoch example stream that process ``rank`` reads at ``step``."""
    start = step * per_process * processes + rank * per_process
    return range(start, start + per_process)


def make_instance(
    example: TrainingExample,
    corpus: Mapping[str, Document],
    sampling: SamplingArguments,
    seed: int,
    epoch: int,
) -> TrainingInstance:
    ids = list(example.candidate_ids or [])[: sampling.num_candidates]
    if sampling.shuffle_candidates:
        random.Random(f"{seed}/{epoch}/{example.query}").shuffle(ids)
    gold = ids.index(example.gold_id) if example.gold_id in ids else None
    gold_document = corpus.get(example.gold_id) if example.gold_id else None
    return TrainingInstance(example.query, example.target, [corpus[i] for i in ids], gold, gold_document)


def step_instances(
    examples: Sequence[TrainingExample],
    corpus: Mapping[str, Document],
    sampling: SamplingArguments,
    *,
    seed: int,
    step: int,
    per_process: int,
    rank: int = 0,
    processes: int = 1,
) -> list[TrainingInstance]:
    """The ``per_process`` instances process ``rank`` of ``processes`` trains on at ``step``."""
    instances = []
    orders: dict[int, np.ndarray] = {}
    for position in step_positions(step, per_process, rank, processes):
        epoch, index = divmod(position, len(examples))
        if epoch not in orders:
            orders[epoch] = example_order(len(examples), seed, epoch)
        example = examples[orders[epoch][index]]
        instances.append(make_instance(example, corpus, sampling, seed, epoch))
    return instances


def check_examples(examples: Sequence[TrainingExample], num_candidates: int) -> None:
    """Refuse examples the sampler cannot use; warn about those that teach nothing."""
    if not examples:
        raise ValueError("no training examples")
    missing = [i for i, e in enumerate(examples) if not e.candidate_ids]
    if missing:
        raise ValueError(
            f"{len(missing)} training examples have no candidate_ids (first: #{missing[0]}); mine them first"
        )
    _check_candidate_counts(examples, num_candidates)


def _check_candidate_counts(examples: Sequence[TrainingExample], num_candidates: int) -> None:
    """A softmax over one candidate is constant: such an example gives the retriever no gradient at all.
    Refuse a run where every example is like that, warn (with the lines) when some are."""
    single = [i for i, e in enumerate(examples) if len((e.candidate_ids or [])[:num_candidates]) < 2]
    if not single:
        return
    where = ", ".join(
        f"line {examples[i].source_line}" if examples[i].source_line else f"#{i}" for i in single[:5]
    )
    reason = "a single candidate gives a constant softmax and so a zero gradient"
    if len(single) == len(examples):
        raise ValueError(
            f"every training example has a single candidate ({where}, ...; --num-candidates {num_candidates}):"
            f" {reason}; training would not change the model. Give 2 or more candidates"
        )
    logger.warning(
        "%d of %d training examples have a single candidate (%s%s): %s, they add nothing to training",
        len(single),
        len(examples),
        where,
        ", ..." if len(single) > 5 else "",
        reason,
    )
