"""The `dreamir` commands end to end on tiny models: heads, train (every objective, resumed, from a JSON
config), the quickstart path, and the option surface (help for every option, the objective registry)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from dreamir import cli
from dreamir.arguments import LLMArguments, ModelArguments, ObjectiveArguments
from dreamir.data.beir import load_beir
from dreamir.evaluation import compute_metrics
from dreamir.objectives import OBJECTIVES, DreamOptions, options_classes
from dreamir.retriever import Retriever
from dreamir.search import fuse_runs
from dreamir.search.runs import read_trec_run
from dreamir.workflow import build_objective, load_retriever
from tests.test_adapt import make_corpus, write_corpus
from tests.test_dream_objective import CORPUS, EXAMPLES


@pytest.fixture
def data(tmp_path) -> Path:
    directory = tmp_path / "data"
    directory.mkdir()
    corpus = [{"_id": d.doc_id, "title": d.title, "text": d.text} for d in CORPUS.values()]
    (directory / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (directory / "train.jsonl").write_text("".join(json.dumps(e.to_record()) + "\n" for e in EXAMPLES))
    return directory


def _train_argv(data: Path, bert: str, llama: str, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--train", str(data / "train.jsonl"),
        "--corpus", str(data),
        "--retriever", bert,
        "--pooling", "mean",
        "--max-length", "32",
        "--llm", llama,
        "--max-steps", "2",
        "--batch-size", "2",
        "--num-candidates", "3",
        "--learning-rate", "1e-3",
        "--threads", "1",
        "--no-show-progress",
        "--output-dir", str(out),
        *extra,
    ]  # fmt: skip


def _weights(run: Path) -> dict:
    return load_file(run / "final" / "model.safetensors")


def test_heads_then_train_through_the_cli_and_a_rerun_resumes(
    tmp_path, data, tiny_bert_dir, tiny_llama_dir, capsys
):
    heads = tmp_path / "heads.json"
    argv = ["heads", "--calibration", str(data / "train.jsonl"), "--corpus", str(data), "--out", str(heads)]
    argv += ["--llm", tiny_llama_dir, "--top-k", "3", "--num-candidates", "3", "--no-show-progress"]
    assert cli.main(argv) == 0
    assert len(json.loads(heads.read_text())["heads"]) == 8  # every (layer, head) of the tiny Llama, ranked
    assert "top 3 heads" in capsys.readouterr().out

    out = tmp_path / "run"
    assert cli.main(_train_argv(data, tiny_bert_dir, tiny_llama_dir, out, "--heads", str(heads))) == 0
    assert "trained 2 steps (resumed from 0)" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["tau"] == pytest.approx(0.05) for r in rows)
    assert Retriever.from_pretrained(out / "final").encode(["paris"], show_progress=False).shape[0] == 1
    # The same command again finds the finished run and trains nothing more.
    assert cli.main(_train_argv(data, tiny_bert_dir, tiny_llama_dir, out, "--heads", str(heads))) == 0
    assert "trained 2 steps (resumed from 2)" in capsys.readouterr().out


@pytest.mark.parametrize("objective", ["infonce", "replug"])
def test_options_from_a_json_config_train_as_the_same_flags_do(
    objective, tmp_path, data, tiny_bert_dir, tiny_llama_dir
):
    flags = _train_argv(data, tiny_bert_dir, tiny_llama_dir, tmp_path / "flags", "--objective", objective)
    assert cli.main(flags) == 0
    config = tmp_path / "run.json"
    # Names as in Python or as on the command line; the flag given beside the file wins over it.
    config.write_text(
        json.dumps({"objective": objective, "max-steps": 2, "learning_rate": 1e-3, "batch_size": 8})
    )
    from_file = [
        a for a in _train_argv(data, tiny_bert_dir, tiny_llama_dir, tmp_path / "file") if a != "--max-steps"
    ]
    from_file.remove("2")
    assert cli.main([*from_file, "--config", str(config)]) == 0
    flags_weights, file_weights = _weights(tmp_path / "flags"), _weights(tmp_path / "file")
    assert all(flags_weights[n].equal(file_weights[n]) for n in flags_weights)


def test_a_config_naming_an_unknown_option_is_refused_naming_file_and_key(tmp_path, capsys):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"batch_sise": 4}))
    assert cli.main(["eval", "--beir", "b", "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert str(config) in error and "batch_sise" in error and "unknown option" in error


def test_the_quickstart_path_runs_through_the_cli_on_tiny_models(
    tmp_path, tiny_bert_dir, tiny_llama_dir, monkeypatch
):
    beir = tmp_path / "beir"
    corpus = make_corpus(30)
    write_corpus(beir, corpus)
    (beir / "queries.jsonl").write_text(
        "".join(
            json.dumps({"_id": f"q{i}", "text": corpus[f"p{i}"].text.split(".")[0]}) + "\n" for i in range(5)
        )
    )
    (beir / "qrels").mkdir()
    (beir / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\tp{i}\t1\n" for i in range(5))
    )
    import dreamir.quickstart

    adapt = dreamir.quickstart.adapt
    small = {"max_passages": 30, "validation_examples": 6, "head_examples": 4, "num_heads": 2, "max_steps": 2}
    # ict: a tiny random LLM writes no usable query (genq end to end: tests/test_adapt.py)
    small |= {"batch_size": 2, "num_candidates": 4, "precision": "float32", "recipe": "ict"}
    seen = []

    def small_adapt(args):  # the quickstart's own adapt settings, shrunk to tiny-model size
        seen.append(args)
        return adapt(dataclasses.replace(args, **small))

    monkeypatch.setattr(dreamir.quickstart, "adapt", small_adapt)
    argv = ["quickstart", "--beir", str(beir), "--out", str(tmp_path / "q"), "--retriever", tiny_bert_dir]
    assert cli.main([*argv, "--llm", tiny_llama_dir, "--threads", "1", "--no-show-progress"]) == 0
    assert seen[0].retriever == tiny_bert_dir and seen[0].corpus == str(beir) and seen[0].threads == 1
    results = json.loads((tmp_path / "q" / "results.json").read_text())
    assert set(results["beir"]) == {"bm25", "base", "adapted", "bm25+base", "bm25+adapted"}
    assert all(0 <= m["ndcg@10"] <= 1 for m in results["beir"].values())
    # The hybrid rows are BM25's and the dense model's kept runs, fused (what `dreamir eval --hybrid` does).
    (adapted_run,) = (tmp_path / "q" / "eval").glob("beir-adapted-*.trec")
    runs = {
        "bm25": read_trec_run(tmp_path / "q" / "eval" / "beir-bm25.trec"),
        "adapted": read_trec_run(adapted_run),
    }
    fused = compute_metrics(load_beir(beir).qrels, fuse_runs(runs["bm25"], runs["adapted"]))
    assert results["beir"]["bm25+adapted"] == pytest.approx(fused, rel=1e-12)
    assert (tmp_path / "q" / "adapt" / "model" / "modules.json").exists()

    # Run again with the adapted model written anew (the base's weights, from the same training): its
    # evaluation is made again, not read from the first model's run file.
    small |= {"base_weight": 1.0}
    assert cli.main([*argv, "--llm", tiny_llama_dir, "--threads", "1", "--no-show-progress"]) == 0
    again = json.loads((tmp_path / "q" / "results.json").read_text())
    assert len(list((tmp_path / "q" / "eval").glob("beir-adapted-*.trec"))) == 2
    assert again["beir"]["adapted"] == pytest.approx(again["beir"]["base"], rel=1e-6)
    assert again["beir"]["bm25"] == results["beir"]["bm25"]


@pytest.mark.parametrize("command", cli.COMMANDS, ids=lambda c: c.name)
def test_every_option_has_help(command):
    parser = cli.command_parser(command)
    silent = [a.option_strings for a in parser._actions if a.option_strings and not (a.help or "").strip()]
    assert silent == []


def test_the_objective_option_offers_every_registered_objective_and_each_builds(
    tiny_bert_dir, tiny_llama_dir, tmp_path
):
    parser = cli.command_parser(next(c for c in cli.COMMANDS if c.name == "train"))
    choices = next(a.choices for a in parser._actions if a.dest == "objective")
    assert list(choices) == list(OBJECTIVES)
    names = [f.name for cls in options_classes() for f in dataclasses.fields(cls)]
    assert len(names) == len(set(names))  # one flag per option across objectives
    heads = tmp_path / "heads.json"
    heads.write_text(json.dumps({"model": tiny_llama_dir, "heads": [{"layer": 0, "head": 1, "score": 1.0}]}))
    retriever = load_retriever(ModelArguments(retriever=tiny_bert_dir))
    compress = load_retriever(ModelArguments(retriever=tiny_llama_dir, pooling="compress"))
    for name, cls in OBJECTIVES.items():
        built = build_objective(
            compress if cls.required_pooling == "compress" else retriever,
            ObjectiveArguments(objective=name),
            LLMArguments(llm=tiny_llama_dir),
            [DreamOptions(heads=str(heads), num_heads=1)],
        )
        assert type(built) is cls
    with pytest.raises(ValueError, match="--objective 'nope' is not one of dream, infonce, replug"):
        ObjectiveArguments(objective="nope")


def test_boolean_options_work_as_flags_with_their_negations():
    from dreamir.arguments import ModelArguments

    parser = cli.ArgumentParser([ModelArguments])
    parse = lambda *argv: parser.parse_args_into_dataclasses(list(argv), look_for_args_file=False)[0]  # noqa: E731
    assert parse().append_eos is None and parse().lora is False
    assert parse("--append-eos").append_eos is True and parse("--no-append-eos").append_eos is False
    assert parse("--lora").lora is True and parse("--lora", "--no-lora").lora is False
    assert parse("--append-eos", "false").append_eos is False
