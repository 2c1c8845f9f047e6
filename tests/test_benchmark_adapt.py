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


def test_lora_reaches_adapt_only_when_asked(benchmark, tmp_path):
    lora = benchmark.Settings(lora=True, learning_rate=2e-4)
    arguments = benchmark.adapt_arguments(lora, tmp_path / "corpus", tmp_path / "out", "dream", seed=0)
    assert (arguments.lora, arguments.learning_rate) == (True, 2e-4)
    default = benchmark.adapt_arguments(
        benchmark.Settings(), tmp_path / "corpus", tmp_path / "out", "dream", seed=0
    )
    assert default.lora is False


def test_the_worked_claim_examples_are_a_valid_query_examples_file():
    from dreamir.data.corpus_examples import read_query_examples

    examples = read_query_examples(ROOT / "benchmarks" / "query_examples" / "claims.jsonl")
    assert len(examples) == 5
    assert all(query.endswith(".") and "?" not in query for _, query in examples)
