"""benchmarks/adapt.py: each run is `dreamir adapt` with the benchmark's options passed through."""

from pathlib import Path

import pytest

from tests.benchmark_modules import benchmark_module

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def benchmark():
    with benchmark_module("adapt") as module:
        yield module


def test_the_generator_options_reach_adapt_and_unset_ones_keep_adapts_defaults(benchmark, tmp_path):
    examples = ROOT / "benchmarks" / "query_examples" / "claims.jsonl"
    settings = benchmark.Settings(query_examples=str(examples), query_instruction="Write a claim.")
    arguments = benchmark.adapt_arguments(settings, tmp_path / "corpus", tmp_path / "out", "dream", seed=1)
    assert arguments.query_examples == str(examples)
    assert arguments.query_instruction == "Write a claim."
    assert arguments.seed == 1
    default = benchmark.adapt_arguments(
        benchmark.Settings(), tmp_path / "corpus", tmp_path / "out", "dream", seed=0
    )
    assert default.query_examples is None and default.query_instruction is None


def test_lora_and_keep_reach_adapt_and_unset_ones_keep_adapts_defaults(benchmark, tmp_path):
    def arguments(**options):
        settings = benchmark.Settings(**options)
        return benchmark.adapt_arguments(settings, tmp_path / "corpus", tmp_path / "out", "dream", seed=0)

    default = arguments()
    assert (default.lora, default.learning_rate, default.base_weight, default.keep) == (
        True,
        2e-4,
        0.0,
        "auto",
    )
    all_weights = arguments(lora=False, keep="best")
    assert (all_weights.lora, all_weights.learning_rate, all_weights.base_weight) == (False, 2e-5, 0.25)
    assert all_weights.keep == "best"
    assert arguments(lora=False, learning_rate=1e-5).learning_rate == 1e-5


def test_the_worked_claim_examples_are_a_valid_query_examples_file():
    from dreamir.data.corpus_examples import read_query_examples

    examples = read_query_examples(ROOT / "benchmarks" / "query_examples" / "claims.jsonl")
    assert len(examples) == 5
    assert all(query.endswith(".") and "?" not in query for _, query in examples)
