from __future__ import annotations

import json
from pathlib import Path

import pytest

from dreamir.data.beir import Document
from dreamir.data.errors import DataFormatError
from dreamir.data.training import (
    TrainingExample,
    read_training_file,
    validate_against_corpus,
    write_training_file,
)


def _write(path: Path, records: list[object | str]) -> Path:
    lines = [record if isinstance(record, str) else json.dumps(record) for record in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = {"query": "capital of France?", "target": "Paris"}


def test_round_trip_keeps_every_field_and_omits_absent_ones(tmp_path: Path) -> None:
    examples = [
        TrainingExample("q one", "t one"),
        TrainingExample("q two", "t two", candidate_ids=["a", "b"], gold_id="a", query_id="x2"),
    ]
    path = tmp_path / "train.jsonl"
    write_training_file(path, examples)
    assert json.loads(path.read_text().splitlines()[0]) == {"query": "q one", "target": "t one"}
    loaded = read_training_file(path)
    assert loaded == examples
    assert [example.source_line for example in loaded] == [1, 2]


def test_blank_lines_are_skipped_but_line_numbers_stay_true(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.jsonl", [GOOD, "", {"query": "q", "target": "t", "gold_id": "missing"}])
    examples = read_training_file(path)
    assert len(examples) == 2
    with pytest.raises(DataFormatError, match=r"t\.jsonl:3: field 'gold_id'"):
        validate_against_corpus(examples, {"d1": Document("d1", "", "x")}, path)


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ('{"query": "q", "target": ', r":2: malformed JSON"),
        ({"query": "q"}, r":2: field 'target': missing"),
        ({"target": "t"}, r":2: field 'query': missing"),
        ({"query": "   ", "target": "t"}, r":2: field 'query': must not be empty"),
        ({"query": "q", "target": ""}, r":2: field 'target': must not be empty"),
        ({"query": 3, "target": "t"}, r":2: field 'query': expected a string, got int"),
        ({"query": "q", "target": "t", "candidate_ids": "d1"}, r":2: field 'candidate_ids': expected a list"),
        ({"query": "q", "target": "t", "candidate_ids": ["d1", 2]}, r":2: field 'candidate_ids': .*item 1"),
        ({"query": "q", "target": "t", "candidate_ids": []}, r":2: field 'candidate_ids': must not be empty"),
        ({"query": "q", "target": "t", "candidate_ids": ["a", "a"]}, r":2: field 'candidate_ids': duplicate"),
        ({"query": "q", "target": "t", "gold_id": 5}, r":2: field 'gold_id': expected a string"),
        ({"query": "q", "target": "t", "candidates": ["a"]}, r":2: field 'candidates': unknown field"),
        (
            {"query": "q", "target": "t", "query_id": "same"},
            r":2: field 'query_id': duplicate query id 'same'",
        ),
    ],
)
def test_bad_examples_name_file_line_and_field(tmp_path: Path, bad: object, expected: str) -> None:
    path = _write(tmp_path / "train.jsonl", [{**GOOD, "query_id": "same"}, bad])
    with pytest.raises(DataFormatError, match=expected) as caught:
        read_training_file(path)
    assert str(caught.value).startswith(f"{path}:2:")
    assert caught.value.line == 2


def test_null_optional_fields_read_as_absent(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.jsonl", [{**GOOD, "candidate_ids": None, "gold_id": None, "query_id": None}])
    assert read_training_file(path) == [TrainingExample("capital of France?", "Paris")]


def test_validate_against_corpus_names_the_offending_line(tmp_path: Path) -> None:
    corpus = {"d1": Document("d1", "", "x"), "d2": Document("d2", "", "y")}
    path = _write(
        tmp_path / "t.jsonl",
        [
            {**GOOD, "candidate_ids": ["d1", "d2"], "gold_id": "d2"},
            {**GOOD, "candidate_ids": ["d1", "ghost"]},
        ],
    )
    examples = read_training_file(path)
    validate_against_corpus(examples[:1], corpus, path)  # the first line is fine
    with pytest.raises(DataFormatError, match=r"t\.jsonl:2: field 'candidate_ids': candidate id 'ghost'"):
        validate_against_corpus(examples, corpus, path)


def test_validate_in_memory_examples_counts_lines_from_one() -> None:
    examples = [TrainingExample("q", "t", gold_id="d1"), TrainingExample("q", "t", gold_id="nope")]
    with pytest.raises(DataFormatError, match=r"^mem\.jsonl:2: field 'gold_id'"):
        validate_against_corpus(examples, {"d1"}, "mem.jsonl")
