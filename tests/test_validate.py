"""`dreamir validate` reports every problem in every file, not only the first, and exits non-zero."""

import json

from dreamir.cli import main


def test_validate_names_every_bad_line_and_exits_non_zero(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        '{"_id": "d1", "title": "t", "text": "ok"}\n'
        '{"_id": "d2", "text": 5}\n'
        "not json\n"
        '{"_id": "d1", "text": "again"}\n'
        '{"_id": "d3", "text": "ok"}\n'
    )
    assert main(["validate", str(corpus)]) == 1
    out = capsys.readouterr().out
    assert f"{corpus}:2: field 'text'" in out and f"{corpus}:3: malformed JSON" in out
    assert f"{corpus}:4: field '_id': duplicate" in out and "3 problem(s)" in out


def test_validate_checks_a_beir_directory_training_and_head_files(tmp_path, capsys):
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "text": "x"}) + "\n")
    (tmp_path / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "what"}) + "\n")
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tnope\t1\nq1\td1\tx\n")
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"query": "q"}) + "\n" + json.dumps({"query": "q", "target": "a"}) + "\n")
    heads = tmp_path / "heads.json"
    heads.write_text('{"model": "m", "heads": [{"layer": "x"}]}')
    assert main(["validate", str(tmp_path), str(train), str(heads)]) == 1
    out = capsys.readouterr().out
    assert "test.tsv:2: field 'corpus-id'" in out and "test.tsv:3: field 'score'" in out
    assert f"{train}:1: field 'target'" in out and f"{heads}:" in out


def test_validate_passes_sound_files(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"_id": "d1", "text": "x"}) + "\n")
    assert main(["validate", str(corpus)]) == 0
    assert "valid" in capsys.readouterr().out


def test_a_corpus_directory_is_checked_as_adapt_reads_it(tmp_path, capsys):
    """A directory holding only corpus.jsonl (what `dreamir adapt` reads) is valid; one with queries.jsonl
    but no qrels/ is a BEIR directory missing its labels."""
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "text": "x"}) + "\n")
    assert main(["validate", str(tmp_path)]) == 0
    assert "1 path(s) valid" in capsys.readouterr().out
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1"}\n')
    assert main(["validate", str(tmp_path)]) == 1
    assert "corpus.jsonl:1: field 'text'" in capsys.readouterr().out
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "text": "x"}) + "\n")
    (tmp_path / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "what"}) + "\n")
    assert main(["validate", str(tmp_path)]) == 1
    assert "no qrels/*.tsv file" in capsys.readouterr().out
