"""Weights load from safetensors only unless the user opts in; remote code is never trusted."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from dreamir.cli import main
from dreamir.llm.frozen import FrozenLLM
from dreamir.models import ALLOW_PICKLE_ENV, PickleWeightsError
from dreamir.retriever import Retriever


def _pickle_only_copy(source: str, target: Path, auto_class) -> Path:
    """A copy of a model directory whose weights are only in pytorch_model.bin."""
    shutil.copytree(source, target)
    for weights in target.glob("*.safetensors"):
        weights.unlink()
    torch.save(auto_class.from_pretrained(source).state_dict(), target / "pytorch_model.bin")
    assert (target / "pytorch_model.bin").exists()
    return target


def test_pickle_only_weights_are_refused_naming_the_directory_unless_allowed(
    tmp_path, tiny_bert_dir, tiny_llama_dir, monkeypatch, capsys
):
    monkeypatch.delenv(ALLOW_PICKLE_ENV, raising=False)
    bert = _pickle_only_copy(tiny_bert_dir, tmp_path / "bert", AutoModel)
    llama = _pickle_only_copy(tiny_llama_dir, tmp_path / "llama", AutoModelForCausalLM)
    with pytest.raises(PickleWeightsError, match=r"pytorch_model\.bin") as caught:
        Retriever.from_pretrained(bert)
    assert str(bert) in str(caught.value) and ALLOW_PICKLE_ENV in str(caught.value)
    with pytest.raises(PickleWeightsError) as caught:
        FrozenLLM.from_pretrained(llama)
    assert str(llama) in str(caught.value)
    (tmp_path / "beir" / "qrels").mkdir(parents=True)
    (tmp_path / "beir" / "corpus.jsonl").write_text('{"_id": "d0", "text": "paris"}\n')
    (tmp_path / "beir" / "queries.jsonl").write_text('{"_id": "q0", "text": "paris"}\n')
    (tmp_path / "beir" / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\n")
    command = ["eval", "--model", str(bert), "--beir", str(tmp_path / "beir"), "--no-show-progress"]
    assert main(command) == 2
    assert f"{bert}: its weights are only in pickle files" in capsys.readouterr().err

    monkeypatch.setenv(ALLOW_PICKLE_ENV, "1")
    Retriever.from_pretrained(bert)
    FrozenLLM.from_pretrained(llama)


def test_remote_code_is_never_trusted():
    source = Path(__file__).resolve().parents[1]
    offenders = [
        str(path)
        for folder in ("src", "benchmarks")
        for path in (source / folder).rglob("*.py")
        if "trust_remote_code=True" in path.read_text(encoding="utf-8")
    ]
    assert not offenders
