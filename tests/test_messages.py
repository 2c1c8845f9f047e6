"""Every bad input gets one clear message naming the file at fault, and nothing is skipped silently."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from dreamir.cli import main
from dreamir.data.beir import load_beir, read_corpus
from dreamir.data.errors import DataFormatError
from dreamir.data.sampling import SamplingArguments
from dreamir.data.training import TrainingExample
from dreamir.objectives import InfoNCELoss
from dreamir.retriever import Retriever, RetrieverConfig
from dreamir.trainer import Trainer, TrainingArguments
from tests.test_dream_objective import CORPUS


def _beir(directory, corpus="", qrels="q1\td1\t1\n"):
    (directory / "qrels").mkdir(parents=True)
    (directory / "corpus.jsonl").write_text(corpus)
    (directory / "queries.jsonl").write_text(
        '{"_id": "q1", "text": "paris"}\n{"_id": "q2", "text": "rome"}\n'
    )
    (directory / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels)
    return directory


def test_an_empty_corpus_or_qrels_file_is_reported_as_such(tmp_path, capsys):
    empty_corpus = _beir(tmp_path / "a")
    assert main(["eval", "--model", "bm25", "--beir", str(empty_corpus)]) == 2
    assert f"{empty_corpus / 'corpus.jsonl'}: holds no documents" in capsys.readouterr().err
    empty_qrels = _beir(tmp_path / "b", corpus='{"_id": "d1", "text": "paris"}\n', qrels="")
    assert main(["eval", "--model", "bm25", "--beir", str(empty_qrels)]) == 2
    assert f"{empty_qrels / 'qrels' / 'test.tsv'}: holds no judgements" in capsys.readouterr().err


def test_queries_with_no_relevant_document_get_a_note(tmp_path, caplog):
    corpus = '{"_id": "d1", "text": "paris"}\n{"_id": "d2", "text": "rome"}\n'
    directory = _beir(tmp_path, corpus=corpus, qrels="q1\td1\t1\nq2\td2\t0\nq2\td1\t-1\n")
    with caplog.at_level(logging.WARNING, logger="dreamir.data.beir"):
        load_beir(directory)
    assert "test.tsv: 1 of 2 queries have no relevant document" in caplog.text and "'q2'" in caplog.text


def test_a_directory_where_a_file_is_expected_is_named_not_a_traceback(tmp_path, capsys):
    with pytest.raises(DataFormatError, match="is a directory"):
        read_corpus(tmp_path)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "d1", "text": "paris"}\n')
    assert (
        main(["mine", "--train", str(tmp_path), "--corpus", str(corpus), "--out", str(tmp_path / "o")]) == 2
    )
    assert f"{tmp_path}: is a directory, expected a file" in capsys.readouterr().err


def test_an_out_path_under_a_file_is_refused_clearly_and_verbose_shows_the_traceback(tmp_path, capsys):
    directory = _beir(tmp_path / "beir", corpus='{"_id": "d1", "text": "paris"}\n')
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    command = ["eval", "--model", "bm25", "--beir", str(directory), "--out", str(blocker / "m.json")]
    assert main(command) == 2
    error = capsys.readouterr().err
    assert f"{blocker} is a file, not a directory" in error and "Traceback" not in error
    assert main(["--verbose", *command]) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err
    assert blocker.read_text() == "keep me"


def test_mine_keeps_at_most_k_candidates_and_says_so(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": f"word{i}"}) + "\n" for i in range(4)))
    train = tmp_path / "train.jsonl"
    rows = [
        {"query": "word1", "target": "t", "candidate_ids": ["d0", "d1", "d2"]},
        {"query": "word2", "target": "t", "candidate_ids": ["d3"]},
        {"query": "word3", "target": "t"},
    ]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "mined.jsonl"
    assert main(["mine", "--train", str(train), "--corpus", str(corpus), "--out", str(out), "--k", "2"]) == 0
    assert "1 examples had more than 2 candidates: kept their first 2" in capsys.readouterr().err
    mined = [json.loads(line)["candidate_ids"] for line in out.read_text().splitlines()]
    assert mined[0] == ["d0", "d1"] and mined[1] == ["d3"] and len(mined[2]) == 2


def _trainer(bert_dir, tmp_path, candidate_lists, num_candidates=3):
    retriever = Retriever.from_pretrained(bert_dir, RetrieverConfig(pooling="mean", max_length=32))
    examples = [
        TrainingExample("q", "t", ids, source_line=line) for line, ids in enumerate(candidate_lists, start=1)
    ]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, show_progress=False)
    sampling = SamplingArguments(num_candidates=num_candidates)
    return Trainer(InfoNCELoss(retriever), examples, CORPUS, args, sampling=sampling)


def test_training_examples_with_a_single_candidate_are_warned_about_or_refused(
    tiny_bert_dir, tmp_path, caplog
):
    ids = list(CORPUS)
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="dreamir.data.sampling"):
        _trainer(tiny_bert_dir, tmp_path, [ids[:3], ids[:1], ids[1:3]])
    assert "1 of 3 training examples have a single candidate (line 2)" in caplog.text
    with pytest.raises(ValueError, match="every training example has a single candidate"):
        _trainer(tiny_bert_dir, tmp_path, [ids[:3], ids[1:3]], num_candidates=1)
