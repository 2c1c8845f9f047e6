"""The head-attention picture: the operator's share per injected head, measured through the LLM's own
attention, before and after training."""

from __future__ import annotations

import json

import pytest
import torch

from dreamir.cli import main
from dreamir.data.training import TrainingExample
from dreamir.head_attention import injected_share, measure_head_attention, plot_head_attention
from dreamir.llm.frozen import FrozenLLM
from dreamir.llm.heads import HeadSet
from dreamir.retriever import Retriever
from tests.test_dream_objective import CORPUS


def test_the_injected_share_is_p_in_preserve_and_replace_and_p_times_mass_in_prior():
    mass = torch.tensor([[0.1, 0.3, 0.2], [0.05, 0.05, 0.6]])  # [heads, K]; the rest is outside the documents
    p = torch.tensor([0.7, 0.2, 0.1])
    for mode in ("preserve", "replace"):
        assert torch.allclose(injected_share(mass, p, mode), p.expand(2, 3), atol=1e-6)
    prior = mass * p
    assert torch.allclose(injected_share(mass, p, "prior"), prior / prior.sum(-1, keepdim=True), atol=1e-6)
    # p equal to the head's own split leaves the head as it was.
    own = mass[0] / mass[0].sum()
    assert torch.allclose(injected_share(mass[:1], own, "preserve")[0], own, atol=1e-6)


def test_measure_and_plot_for_two_retrievers(tmp_path, tiny_llama_dir, tiny_bert_dir):
    heads = [(0, 1), (1, 2)]
    llm = FrozenLLM.from_pretrained(tiny_llama_dir, heads=heads)
    examples = [
        TrainingExample("capital of france", "paris", candidate_ids=["d1", "d0", "d2"], gold_id="d0"),
        TrainingExample("capital of italy", "rome", candidate_ids=["d2", "d3", "d1"], gold_id="d2"),
    ]
    before = Retriever.from_pretrained(tiny_bert_dir).eval()
    after = Retriever.from_pretrained(tiny_bert_dir).eval()
    with torch.no_grad():  # a different "trained" retriever
        for parameter in after.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    measured = measure_head_attention(
        llm, heads, examples, CORPUS, {"before": before, "after": after}, 0.05, 3
    )
    assert measured["heads"] == [[0, 1], [1, 2]] and measured["uniform"] == pytest.approx(1 / 3)
    assert all(0 <= s <= 1 for s in measured["llm_alone"])
    # preserve: each injected head's share of the gold is the retriever's mean p on the gold.
    for name in ("before", "after"):
        assert measured["injected"][name] == pytest.approx([measured["p_gold"][name]] * 2, abs=1e-5)
    assert measured["p_gold"]["before"] != pytest.approx(measured["p_gold"]["after"], abs=1e-6)
    png = plot_head_attention(measured, tmp_path / "head_attention.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(png.with_suffix(".json").read_text())["p_gold"] == measured["p_gold"]


def test_head_attention_command(tmp_path, tiny_llama_dir, tiny_bert_dir):
    (tmp_path / "corpus.jsonl").write_text(
        "".join(
            json.dumps({"_id": d.doc_id, "title": d.title, "text": d.text}) + "\n" for d in CORPUS.values()
        )
    )
    (tmp_path / "train.jsonl").write_text(
        json.dumps(
            {
                "query": "capital of germany",
                "target": "berlin",
                "candidate_ids": ["d0", "d1"],
                "gold_id": "d1",
            }
        )
        + "\n"
        + json.dumps(
            {"query": "no gold among them", "target": "x", "candidate_ids": ["d0", "d2"], "gold_id": "d3"}
        )
        + "\n"
    )
    HeadSet(tiny_llama_dir, [(1, 0), (0, 3)], [0.2, 0.1]).save(tmp_path / "heads.json")
    out = tmp_path / "train" / "head_attention.png"
    args = ["head-attention", "--examples", str(tmp_path / "train.jsonl"), "--corpus", str(tmp_path)]
    args += ["--heads", str(tmp_path / "heads.json"), "--llm", tiny_llama_dir, "--num-heads", "2"]
    args += ["--before", tiny_bert_dir, "--after", tiny_bert_dir, "--out", str(out), "--no-show-progress"]
    assert main(args) == 0
    measured = json.loads(out.with_suffix(".json").read_text())
    assert measured["examples"] == 1 and measured["heads"] == [[1, 0], [0, 3]]
