"""benchmarks/compare.py: its cache of trained runs (reused across settings that do not change what is trained)
and its paired intervals between rows."""

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from dreamir.arguments import ModelArguments, SamplingArguments, TrainingArguments, field_defaults
from tests.benchmark_modules import benchmark_module


@pytest.fixture(scope="module")
def compare():
    with benchmark_module("compare") as module:
        yield module


def _run_settings(compare, **training) -> dict:
    arguments = TrainingArguments(output_dir="runs/raw-dream", **training)
    return {
        "setup": asdict(ModelArguments()),
        "dream": field_defaults(*compare.SYSTEM_PARTS),
        "training": {**asdict(arguments), **asdict(SamplingArguments())},
    }


def test_a_cached_run_survives_a_new_checkpoint_interval(compare, tmp_path):
    path = tmp_path / "run_settings.json"
    compare.check_cached_run(path, _run_settings(compare, save_steps=250))
    compare.check_cached_run(path, _run_settings(compare, save_steps=100))  # reused: no SystemExit
    assert json.loads(path.read_text())["training"]["save_steps"] == 250  # the record stays the original


def test_a_cached_run_is_refused_with_another_learning_rate_naming_it(compare, tmp_path):
    path = tmp_path / "run_settings.json"
    compare.check_cached_run(path, _run_settings(compare, learning_rate=5e-4))
    with pytest.raises(SystemExit, match=r"training\.learning_rate: checkpoint 0\.0005, now 0\.001"):
        compare.check_cached_run(path, _run_settings(compare, learning_rate=1e-3))


def test_a_cached_run_is_the_same_run_whether_work_was_given_absolute_or_relative(
    compare, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "run_settings.json"
    absolute = _run_settings(compare)
    absolute["dream"]["heads"] = str(tmp_path / "work" / "heads_qr_parallel.json")
    compare.check_cached_run(path, absolute)
    relative = _run_settings(compare)
    relative["dream"]["heads"] = "work/heads_qr_parallel.json"
    compare.check_cached_run(path, relative)  # reused: no SystemExit
    elsewhere = _run_settings(compare)
    elsewhere["dream"]["heads"] = "other/heads_qr_parallel.json"
    with pytest.raises(SystemExit, match=r"dream\.heads"):
        compare.check_cached_run(path, elsewhere)


def _cached_scores(compare, work: Path, name: str, scores: list[float]) -> "compare.Evaluated":
    """A model whose per-query nDCG@10 is already cached under WORK/eval (nothing is scored again)."""
    per_query = {f"q{i}": {"ndcg@10": score} for i, score in enumerate(scores)}
    path = work / "eval" / f"factbook-{name}-per-query.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(per_query))
    return compare.Evaluated(name, f"models/{name}", ("factbook",))


def test_paired_intervals_pair_rows_by_query_over_seeds_and_each_seed(compare, tmp_path):
    settings = compare.Settings(
        work=str(tmp_path),
        steps=1000,
        eval_steps="100",
        paired_against="replug",
        paired_from_step=100,
        resamples=2000,
    )
    scores = {
        ("replug", 0, 1000): [0.0, 0.5, 0.2, 0.1],
        ("replug", 1, 1000): [0.1, 0.3, 0.2, 0.0],
        ("dream", 0, 100): [0.0, 0.2, 0.1, 0.1],
        ("dream", 0, 1000): [0.2, 0.6, 0.3, 0.1],
        ("dream", 1, 100): [0.1, 0.1, 0.1, 0.1],
        ("dream", 1, 1000): [0.1, 0.4, 0.4, 0.2],
    }
    registry = {}
    for (objective, seed, step), values in scores.items():
        evaluated = _cached_scores(compare, tmp_path, f"raw-{objective}-lora{seed}@{step}", values)
        registry.setdefault(f"raw/{objective}", {}).setdefault(seed, {})[step] = evaluated

    assert compare.paired_comparisons(settings, registry) == [
        ("raw/replug", 1000, "raw/replug", 100),
        ("raw/dream", 1000, "raw/replug", 1000),
        ("raw/dream", 1000, "raw/dream", 100),
    ]
    paired = compare.paired_intervals(settings, registry, {"factbook": None})["factbook"]

    against_replug = paired["raw/dream@1000 - raw/replug@1000"]
    # Per query, seeds averaged: dream (0.15, 0.5, 0.35, 0.15), replug (0.05, 0.4, 0.2, 0.05).
    assert against_replug["gain"] == pytest.approx(0.1125, rel=1e-9)
    low, high = against_replug["ci95"]
    assert 0.1 - 1e-9 <= low <= 0.1125 <= high <= 0.15 + 1e-9  # every query gains 0.1 or 0.15
    assert against_replug["seeds"]["0"]["gain"] == pytest.approx(0.1, rel=1e-9)
    assert against_replug["seeds"]["1"]["gain"] == pytest.approx(0.125, rel=1e-9)
    assert paired["raw/dream@1000 - raw/dream@100"]["gain"] == pytest.approx(0.1875, rel=1e-9)
    assert "raw/replug@1000 - raw/replug@100" not in paired  # no seed of REPLUG-LSR has a 100-step model
    lines = compare.paired_lines({"factbook": paired})
    assert lines[0].startswith("factbook raw/dream@1000 - raw/replug@1000 nDCG@10: +0.1125 [")


def test_paired_options_that_cannot_be_served_are_refused_by_name_before_training(compare, tmp_path):
    def check(**options):
        compare.check_paired_options(compare.Settings(work=str(tmp_path), steps=1000, **options))

    check(objectives="dream,replug", paired_against="replug", eval_steps="100", paired_from_step=100)
    with pytest.raises(SystemExit, match="--paired-against infonce: not one of --objectives dream,replug"):
        check(objectives="dream,replug", paired_against="infonce")
    with pytest.raises(SystemExit, match="--paired-from-step 250 is not one of --eval-steps"):
        check(objectives="dream", paired_against="dream", eval_steps="100", paired_from_step=250)
    with pytest.raises(SystemExit, match="--paired-from-step needs --paired-against"):
        check(eval_steps="100", paired_from_step=100)


@pytest.mark.parametrize(
    "row",
    [
        "dream",
        "dream-batch",
        "replug-batch",
        "dream-uniform",
        "dream-batch-uniform",
        "dream-batch-uniform-learnt-tau",
        "dream-batch-uniform-tau02",
        "infonce-tau02",
    ],
)
def test_every_objective_variant_builds_its_system_with_the_options_it_names(compare, tmp_path, row):
    settings = compare.Settings(work=str(tmp_path))
    trains, variant = compare.base_objective(row)
    system = compare.system_arguments(
        settings, tmp_path / "train.jsonl", tmp_path, tmp_path / "heads.json", objective=trains, **variant
    )
    record = system.record()
    assert system.objective.objective == trains
    for option, value in variant.items():
        assert record[option] == value
    assert record["dream_candidates"] == variant.get("dream_candidates", "own")  # "dream" keeps its meaning
    assert system.objective.learn_temperature is (row == "dream-batch-uniform-learnt-tau")
    assert system.objective.temperature == (0.02 if row.endswith("tau02") else 0.05)


def test_workers_accept_the_options_they_are_started_with_when_the_parent_pairs(
    compare, tmp_path, monkeypatch
):
    """--jobs 2 with --paired-against: each worker trains one objective, so it must not be asked to pair
    against another (which it would refuse); the parent pairs once every worker is done."""
    commands = []

    def run(command, **_):
        commands.append(command)
        return type("Completed", (), {"returncode": 0})()

    monkeypatch.setattr(compare.subprocess, "run", run)
    settings = compare.Settings(
        work=str(tmp_path),
        steps=1000,
        objectives="dream-batch-uniform-tau02,infonce-tau02",
        paired_against="infonce-tau02",
        eval_steps="100",
        paired_from_step=100,
        jobs=2,
    )
    compare.train_in_workers(settings, "raw", [0, 1])
    assert len(commands) == 4
    for command in commands:
        monkeypatch.setattr(compare.sys, "argv", command[1:])
        worker = compare.parse()
        compare.check_paired_options(worker)  # no SystemExit
        assert (worker.paired_against, worker.jobs, len(worker.objectives.split(","))) == ("", 1, 1)
