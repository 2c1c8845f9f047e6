"""No command deletes what the user did not ask to delete: an existing directory given as an output file
is refused with a message naming it, and is left exactly as it was."""

import json
from pathlib import Path

import pytest

from dreamir.cli import main
from dreamir.datasets.factbook import build_factbook
from dreamir.io import OutputPathError, write_json_atomic
from dreamir.retriever import Retriever, RetrieverConfig


def _precious(directory: Path) -> dict[str, bytes]:
    (directory / "sub").mkdir(parents=True)
    (directory / "notes.txt").write_bytes(b"years of work")
    (directory / "sub" / "data.bin").write_bytes(bytes(range(256)))
    return _snapshot(directory)


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def _tiny_beir(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rows = [{"_id": f"d{i}", "title": f"doc {i}", "text": f"word{i} shared"} for i in range(5)]
    (directory / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (directory / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "word3"}) + "\n")
    (directory / "qrels").mkdir(exist_ok=True)
    (directory / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td3\t1\n")
    return directory


def test_atomic_write_refuses_to_replace_a_directory(tmp_path):
    before = _precious(tmp_path / "out")
    with pytest.raises(OutputPathError, match="existing directory"):
        write_json_atomic(tmp_path / "out", {"a": 1})
    assert _snapshot(tmp_path / "out") == before


def test_eval_out_on_a_directory_exits_non_zero_and_keeps_it(tmp_path, capsys):
    beir = _tiny_beir(tmp_path / "beir")
    before = _precious(tmp_path / "D")
    assert main(["eval", "--model", "bm25", "--beir", str(beir), "--out", str(tmp_path / "D")]) == 2
    assert str(tmp_path / "D") in capsys.readouterr().err
    assert _snapshot(tmp_path / "D") == before


def test_mine_out_on_a_directory_exits_non_zero_and_keeps_it(tmp_path):
    beir = _tiny_beir(tmp_path / "beir")
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"query": "word3", "target": "a"}) + "\n")
    before = _precious(tmp_path / "D")
    argv = ["mine", "--train", str(train), "--corpus", str(beir), "--out", str(tmp_path / "D")]
    assert main(argv) == 2
    assert _snapshot(tmp_path / "D") == before


def test_heads_out_on_a_directory_exits_non_zero_and_keeps_it(tmp_path, tiny_llama_dir):
    before = _precious(tmp_path / "D")
    argv = ["heads", "--calibration", "x", "--corpus", "x", "--llm", tiny_llama_dir, "--random"]
    assert main([*argv, "--top-k", "2", "--out", str(tmp_path / "D")]) == 2
    assert _snapshot(tmp_path / "D") == before


def test_factbook_refuses_an_output_named_like_a_directory_before_writing_anything(tmp_path):
    before = _precious(tmp_path / "fb" / "train.jsonl")
    with pytest.raises(OutputPathError, match=r"train\.jsonl"):
        build_factbook(tmp_path / "fb")
    assert _snapshot(tmp_path / "fb" / "train.jsonl") == before
    assert sorted(p.name for p in (tmp_path / "fb").iterdir()) == ["train.jsonl"]


def test_saving_a_model_replaces_an_earlier_save_but_not_a_users_directory(tmp_path, tiny_bert_dir):
    retriever = Retriever.from_pretrained(tiny_bert_dir, RetrieverConfig(pooling="mean"))
    before = _precious(tmp_path / "D")
    with pytest.raises(OutputPathError, match="refusing"):
        retriever.save(tmp_path / "D")
    assert _snapshot(tmp_path / "D") == before
    retriever.save(tmp_path / "model")
    retriever.save(tmp_path / "model")  # an earlier save is ours to replace
