from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from dreamir.data.beir import BeirDataset, Document, load_beir, write_beir
from dreamir.data.errors import DataFormatError


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _write_valid(directory: Path) -> None:
    _write_lines(
        directory / "corpus.jsonl",
        [
            json.dumps({"_id": "d1", "title": "Paris", "text": "Paris is the capital of France."}),
            json.dumps({"_id": "d2", "title": "", "text": "Berlin is in Germany."}),
            json.dumps({"_id": "d3", "title": "Rome", "text": "Rome is old."}),
        ],
    )
    _write_lines(
        directory / "queries.jsonl",
        [
            json.dumps({"_id": "q1", "text": "capital of France", "metadata": {}}),
            json.dumps({"_id": "q2", "text": "where is Berlin"}),
            json.dumps({"_id": "q3", "text": "judged only in train"}),
        ],
    )
    _write_lines(directory / "qrels" / "test.tsv", ["query-id\tcorpus-id\tscore", "q1\td1\t1", "q2\td2\t2"])
    _write_lines(directory / "qrels" / "train.tsv", ["query-id\tcorpus-id\tscore", "q3\td3\t1"])


def test_document_full_text_follows_beir_title_space_text() -> None:
    assert Document("d", "Title", "Body.").full_text == "Title Body."
    assert Document("d", "", "Body.").full_text == "Body."
    assert Document("d", "Title", "").full_text == "Title"


def test_load_keeps_whole_corpus_and_only_judged_queries(tmp_path: Path) -> None:
    _write_valid(tmp_path)
    dataset = load_beir(tmp_path)
    assert dataset.name == tmp_path.name
    assert set(dataset.corpus) == {"d1", "d2", "d3"}
    assert dataset.corpus["d1"] == Document("d1", "Paris", "Paris is the capital of France.")
    assert dataset.queries == {"q1": "capital of France", "q2": "where is Berlin"}
    assert dataset.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2}}

    train = load_beir(tmp_path, split="train")
    assert train.queries == {"q3": "judged only in train"}
    assert len(train.corpus) == 3


def test_missing_split_names_available_ones(tmp_path: Path) -> None:
    _write_valid(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"dev.*\['test', 'train'\]"):
        load_beir(tmp_path, split="dev")


def test_round_trip(tmp_path: Path) -> None:
    dataset = BeirDataset(
        name="tiny",
        corpus={
            "a": Document("a", 'Title with "quotes"', "text with ünïcode and\ttab"),
            "b": Document("b", "", "no title"),
        },
        queries={"q1": "first", "q2": "second"},
        qrels={"q1": {"a": 1, "b": 0}, "q2": {"b": 3}},
    )
    write_beir(tmp_path / "tiny", dataset, query_metadata={"q1": {"answer": "A"}})
    loaded = load_beir(tmp_path / "tiny")
    assert loaded == dataset
    first_query = json.loads((tmp_path / "tiny" / "queries.jsonl").read_text().splitlines()[0])
    assert first_query == {"_id": "q1", "text": "first", "metadata": {"answer": "A"}}


def test_write_refuses_qrels_for_unknown_documents(tmp_path: Path) -> None:
    dataset = BeirDataset("x", {"a": Document("a", "", "t")}, {"q": "x"}, {"q": {"zzz": 1}})
    with pytest.raises(ValueError, match="zzz"):
        write_beir(tmp_path, dataset)
    assert not (tmp_path / "corpus.jsonl").exists()


@pytest.mark.parametrize(
    ("file_name", "bad_line", "expected"),
    [
        ("corpus.jsonl", '{"_id": "d9", "text": "unterminated', r"corpus\.jsonl:2: malformed JSON"),
        ("corpus.jsonl", '{"_id": "d9", "title": "t"}', r"corpus\.jsonl:2: field 'text': missing"),
        (
            "corpus.jsonl",
            '{"_id": "d9", "title": 7, "text": "x"}',
            r"corpus\.jsonl:2: field 'title': expected a string",
        ),
        ("corpus.jsonl", '{"_id": 9, "text": "x"}', r"corpus\.jsonl:2: field '_id': expected a string"),
        ("corpus.jsonl", '["not", "an", "object"]', r"corpus\.jsonl:2: expected a JSON object"),
        ("corpus.jsonl", '{"_id": "d1", "text": "again"}', r"corpus\.jsonl:2: field '_id': duplicate"),
        ("queries.jsonl", '{"text": "no id"}', r"queries\.jsonl:2: field '_id': missing"),
    ],
)
def test_bad_jsonl_names_file_line_and_field(
    tmp_path: Path, file_name: str, bad_line: str, expected: str
) -> None:
    _write_valid(tmp_path)
    path = tmp_path / file_name
    first = path.read_text().splitlines()[0]
    _write_lines(path, [first, bad_line])
    with pytest.raises(DataFormatError, match=expected) as caught:
        load_beir(tmp_path)
    assert caught.value.path == str(path)
    assert caught.value.line == 2
    assert str(caught.value).startswith(str(path) + ":2:")


@pytest.mark.parametrize(
    ("bad_row", "expected"),
    [
        ("q1\td1", r"test\.tsv:3: expected 3 tab-separated columns .* got 2"),
        ("q1\td1\t1\textra", r"test\.tsv:3: expected 3 tab-separated columns .* got 4"),
        ("q1\td1\thigh", r"test\.tsv:3: field 'score': expected an integer, got 'high'"),
        ("q404\td1\t1", r"test\.tsv:3: field 'query-id': unknown query id 'q404'"),
        ("q1\td404\t1", r"test\.tsv:3: field 'corpus-id': unknown document id 'd404'"),
        ("q1\td1\t0", r"test\.tsv:3: field 'score': conflicting judgements"),
    ],
)
def test_bad_qrels_rows_name_file_line_and_field(tmp_path: Path, bad_row: str, expected: str) -> None:
    _write_valid(tmp_path)
    _write_lines(tmp_path / "qrels" / "test.tsv", ["query-id\tcorpus-id\tscore", "q1\td1\t1", bad_row])
    with pytest.raises(DataFormatError, match=expected) as caught:
        load_beir(tmp_path)
    assert caught.value.line == 3
    assert caught.value.path == str(tmp_path / "qrels" / "test.tsv")


def test_error_message_format_and_pickling() -> None:
    error = DataFormatError("data/corpus.jsonl", 12, "title", "expected a string")
    assert str(error) == "data/corpus.jsonl:12: field 'title': expected a string"
    assert isinstance(error, ValueError)
    assert str(DataFormatError("f.tsv", None, None, "empty")) == "f.tsv: empty"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.line, copy.field, str(copy)) == (error.path, 12, "title", str(error))


@pytest.mark.integration
def test_load_real_scifact(scifact_dir) -> None:
    dataset = load_beir(scifact_dir)
    assert len(dataset.corpus) == 5183
    assert len(dataset.queries) == 300
    assert set(dataset.qrels) == set(dataset.queries)
    assert all(doc_id in dataset.corpus for judged in dataset.qrels.values() for doc_id in judged)
