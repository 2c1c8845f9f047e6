"""benchmarks/compare.py's cache of trained runs: reused across settings that do not change what is trained."""

import importlib.util
import json
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from dreamir.arguments import ModelArguments, SamplingArguments, TrainingArguments, field_defaults

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("compare_benchmark", ROOT / "benchmarks" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


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
