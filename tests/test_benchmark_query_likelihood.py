"""benchmarks/query_likelihood.py: the reranked order and the query likelihood it reranks by."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamir.llm.frozen import FrozenLLM
from dreamir.llm.prompt import QUERY_TARGET_INSTRUCTION, PromptSettings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "query_likelihood_benchmark", ROOT / "benchmarks" / "query_likelihood.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_reranked_orders_the_top_by_the_new_scores_and_keeps_the_rest_after_them_in_the_base_order(bench):
    base = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6, "e": 0.5}
    ranked = bench.reranked(base, ["a", "b", "c"], np.array([-3.0, -1.0, -2.0]))
    assert sorted(ranked, key=ranked.get, reverse=True) == ["b", "c", "a", "d", "e"]
    z = bench.standardised(np.array([1.0, 2.0, 3.0]))
    assert z.mean() == pytest.approx(0.0, abs=1e-12) and z.std() == pytest.approx(1.0, rel=1e-6)


def test_query_likelihood_is_the_mean_log_probability_of_the_query_after_the_passage_alone(
    bench, tiny_llama_dir
):
    prompt = PromptSettings(instruction=QUERY_TARGET_INSTRUCTION, show_query=False, max_target_tokens=64)
    llm = FrozenLLM.from_pretrained(tiny_llama_dir, prompt=prompt, precision="float32")
    passages = [("france", "paris is the capital city of france"), ("spain", "madrid is a city in spain")]
    query = "capital of france"
    scores = bench.query_log_likelihood(llm, query, passages, batch_size=1)
    for passage, score in zip(passages, scores, strict=True):
        encoded = llm.encode("", [passage], query)
        ids = torch.tensor([encoded.input_ids])
        with torch.no_grad():  # the stock model, no dreamir machinery
            logits = llm.model(input_ids=ids).logits[0].float()
        log_probs = torch.log_softmax(logits[:-1], -1)
        targets = ids[0, 1:]
        rows = torch.arange(encoded.target_start - 1, len(encoded.input_ids) - 1)
        expected = log_probs[rows, targets[rows]].mean().item()
        assert score == pytest.approx(expected, rel=1e-4)
    assert scores[0] != scores[1]
