"""The training-file format: JSONL, one example per line.

``{"query": str, "target": str, "candidate_ids": [str, ...], "gold_id": str, "query_id": str}``;
only ``query`` and ``target`` are required. ``gold_id`` is read only by labelled baselines and
head-selection calibration: DREAM itself never looks at it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreamir.data.errors import DataFormatError, iter_jsonl_records, optional_string, require_string
from dreamir.io import write_jsonl_atomic

TRAINING_FIELDS = ("query", "target", "candidate_ids", "gold_id", "query_id")


@dataclass
class TrainingExample:
    query: str
    target: str
    candidate_ids: list[str] | None = None
    gold_id: str | None = None
    query_id: str | None = None
    # Where the example was read from, so later checks can point at the right line; not serialised.
    source_line: int | None = field(default=None, compare=False, repr=False)

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"query": self.query, "target": self.target}
        if self.candidate_ids is not None:
            record["candidate_ids"] = list(self.candidate_ids)
        if self.gold_id is not None:
            record["gold_id"] = self.gold_id
        if self.query_id is not None:
            record["query_id"] = self.query_id
        return record


def _parse_candidate_ids(value: Any, path: Path, line: int) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise DataFormatError(
            path, line, "candidate_ids", f"expected a list of strings, got {type(value).__name__}"
        )
    if not value:
        raise DataFormatError(path, line, "candidate_ids", "must not be empty (omit the field instead)")
    seen: set[str] = set()
    for position, candidate in enumerate(value):
        if not isinstance(candidate, str) or not candidate:
            raise DataFormatError(
                path,
                line,
                "candidate_ids",
                f"expected a list of non-empty strings; item {position} is {candidate!r}",
            )
        if candidate in seen:
            # A repeated candidate would be counted twice in the retriever's softmax.
            raise DataFormatError(path, line, "candidate_ids", f"duplicate candidate id {candidate!r}")
        seen.add(candidate)
    return list(value)


def read_training_file(path: str | Path) -> list[TrainingExample]:
    """Read and validate a training file; any problem raises DataFormatError naming line and field."""
    path = Path(path)
    examples: list[TrainingExample] = []
    lines_by_query_id: dict[str, int] = {}
    for line, record in iter_jsonl_records(path):
        unknown = sorted(set(record) - set(TRAINING_FIELDS))
        if unknown:
            # Catches typos such as "candidates" that would otherwise be dropped silently.
            raise DataFormatError(
                path, line, unknown[0], f"unknown field (allowed: {', '.join(TRAINING_FIELDS)})"
            )
        query = require_string(record, "query", path, line, allow_empty=False)
        target = require_string(record, "target", path, line, allow_empty=False)
        candidate_ids = _parse_candidate_ids(record.get("candidate_ids"), path, line)
        gold_id = optional_string(record, "gold_id", path, line, allow_empty=False)
        query_id = optional_string(record, "query_id", path, line, allow_empty=False)
        if query_id is not None:
            if query_id in lines_by_query_id:
                raise DataFormatError(
                    path,
                    line,
                    "query_id",
                    f"duplicate query id {query_id!r} (first on line {lines_by_query_id[query_id]})",
                )
            lines_by_query_id[query_id] = line
        examples.append(
            TrainingExample(
                query=query,
                target=target,
                candidate_ids=candidate_ids,
                gold_id=gold_id,
                query_id=query_id,
                source_line=line,
            )
        )
    return examples


def write_training_file(path: str | Path, examples: Iterable[TrainingExample]) -> None:
    """Write examples as JSONL (atomically); absent optional fields are left out."""
    write_jsonl_atomic(path, (example.to_record() for example in examples))


def validate_against_corpus(
    examples: Iterable[TrainingExample], corpus: Collection[str], path: str | Path
) -> None:
    """Raise DataFormatError if a candidate_id or gold_id is not a document id of ``corpus``.

    ``corpus`` is anything supporting ``in`` over document ids (a dict of Documents works);
    ``path`` names the training file in the message.
    """
    for index, example in enumerate(examples):
        # Examples read from a file know their line; otherwise assume one example per line.
        line = example.source_line if example.source_line is not None else index + 1
        for candidate in example.candidate_ids or ():
            if candidate not in corpus:
                raise DataFormatError(
                    path, line, "candidate_ids", f"candidate id {candidate!r} is not in the corpus"
                )
        if example.gold_id is not None and example.gold_id not in corpus:
            raise DataFormatError(path, line, "gold_id", f"gold id {example.gold_id!r} is not in the corpus")


def with_candidates(example: TrainingExample, candidate_ids: list[str]) -> TrainingExample:
    """A copy of ``example`` with its candidate list replaced."""
    return dataclasses.replace(example, candidate_ids=list(candidate_ids))
