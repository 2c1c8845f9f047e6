"""The CLI and workflow steps: clear errors on bad input, calibration with the gold put in, model names."""

import json

import pytest

from dreamir.arguments import ModelArguments
from dreamir.artefacts import MANIFEST_FILE
from dreamir.cli import main
from dreamir.data.beir import Document
from dreamir.data.training import TrainingExample
from dreamir.models import ModelNotFoundError, resolve_model
from dreamir.retriever import CONFIG_FILE, Retriever, RetrieverConfig
from dreamir.workflow import calibration_examples, load_retriever


def test_unknown_model_names_fail_without_touching_the_hub(tmp_path):
    with pytest.raises(ModelNotFoundError, match="never downloads"):
        resolve_model("sentence-transformers/all-mpnet-base-v2")
    assert resolve_model(tmp_path) == tmp_path


def test_asking_for_last_token_pooling_appends_eos_even_to_a_foreign_model(tiny_llama_dir, tmp_path):
    # A mean-pooling sentence-transformers dir from elsewhere (no dreamir settings file).
    Retriever.from_pretrained(tiny_llama_dir, RetrieverConfig(pooling="mean")).save(tmp_path / "st")
    (tmp_path / "st" / CONFIG_FILE).unlink()
    (tmp_path / "st" / MANIFEST_FILE).unlink()  # a foreign model has no dreamir manifest either
    as_saved = load_retriever(ModelArguments(retriever=str(tmp_path / "st")))
    assert as_saved.config.pooling == "mean" and not as_saved.config.ends_with_eos
    same = load_retriever(ModelArguments(retriever=str(tmp_path / "st"), pooling="mean", max_length=8))
    assert not same.config.ends_with_eos
    last = load_retriever(ModelArguments(retriever=str(tmp_path / "st"), pooling="last"))
    assert last.config.ends_with_eos
    ids = last.tokenize(["the cat sat"])["input_ids"][0].tolist()
    assert ids[-1] == last.tokenizer.eos_token_id


def test_last_token_pooling_on_a_tokenizer_without_eos_names_the_way_out(tiny_bert_dir):
    with pytest.raises(ValueError, match="--no-append-eos"):
        load_retriever(ModelArguments(retriever=tiny_bert_dir, pooling="last"))
    plain = load_retriever(ModelArguments(retriever=tiny_bert_dir, pooling="last", append_eos=False))
    assert plain.config.pooling == "last" and not plain.config.ends_with_eos


def test_lora_seed_sets_the_adapters_initialisation(tiny_llama_dir):
    def lora_a(seed: int) -> list:
        args = ModelArguments(retriever=tiny_llama_dir, pooling="last", lora=True, lora_r=4, lora_seed=seed)
        retriever = load_retriever(args)
        assert retriever.config.lora.init_seed == seed
        return [p.detach().clone() for n, p in retriever.named_parameters() if "lora_A" in n]

    first, again, other = lora_a(0), lora_a(0), lora_a(1)
    assert first and all(a.equal(b) for a, b in zip(first, again, strict=True))
    assert not any(a.equal(b) for a, b in zip(first, other, strict=True))


def test_calibration_puts_the_gold_among_the_candidates():
    corpus = {f"d{i}": Document(f"d{i}", f"title {i}", f"text about topic {i} and more") for i in range(20)}
    corpus["gold"] = Document("gold", "zebra", "nothing the query shares")
    examples = [
        TrainingExample("topic 3 text", "x", gold_id="gold"),
        TrainingExample("topic 7", "y", gold_id="d7"),
    ]
    calibration = calibration_examples(examples, corpus, num_candidates=4, seed=0)
    for example, source in zip(calibration, examples, strict=True):
        assert len(example.documents) == 4
        gold = corpus[source.gold_id]
        assert example.documents[example.gold_index] == (gold.title, gold.text)


def test_cli_names_file_line_and_field_on_bad_training_data(tmp_path, capsys):
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "title": "t", "text": "x"}) + "\n")
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"query": "q", "target": "a"}) + "\n" + json.dumps({"query": "q2"}) + "\n")
    code = main(
        ["mine", "--train", str(train), "--corpus", str(tmp_path), "--out", str(tmp_path / "o.jsonl")]
    )
    assert code == 2
    error = capsys.readouterr().err
    assert f"{train}:2" in error and "target" in error
    assert not (tmp_path / "o.jsonl").exists()


def test_cli_rejects_qrels_naming_unknown_documents(tmp_path, capsys):
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "title": "t", "text": "x"}) + "\n")
    (tmp_path / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "what"}) + "\n")
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\tnope\t1\n")
    assert main(["eval", "--model", "bm25", "--beir", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "test.tsv:3" in error and "nope" in error


def test_cli_mines_candidates(tmp_path):
    rows = [{"_id": f"d{i}", "title": f"doc {i}", "text": f"word{i} shared"} for i in range(10)]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"query": "word3", "target": "a"}) + "\n")
    assert (
        main(
            [
                "mine",
                "--train",
                str(train),
                "--corpus",
                str(tmp_path),
                "--out",
                str(tmp_path / "o.jsonl"),
                "--k",
                "3",
            ]
        )
        == 0
    )
    mined = json.loads((tmp_path / "o.jsonl").read_text())
    assert len(mined["candidate_ids"]) == 3 and mined["candidate_ids"][0] == "d3"


def test_training_curves_are_drawn_from_a_log(tmp_path):
    from dreamir.plots import plot_training_curves, run_styles

    log = tmp_path / "log.jsonl"
    log.write_text(
        "".join(json.dumps({"step": i, "loss": 1 / i, "grad_norm": 0.1 * i}) + "\n" for i in range(1, 30))
        + '{"step": 30'
    )
    png = plot_training_curves({"run": log}, tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Seeds of one system share a colour, told apart by line style.
    groups = {"a/seed1": "a"}
    assert run_styles(["a", "b", "a/seed1"], groups) == {"a": (0, "-"), "b": (1, "-"), "a/seed1": (0, "--")}
    grouped = plot_training_curves({"a": log, "a/seed1": log, "b": log}, tmp_path / "g.png", groups=groups)
    assert grouped.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_held_out_scores_by_step_are_drawn_per_dataset(tmp_path):
    from dreamir.plots import plot_metric_by_step

    curves = {
        "factbook": {
            "raw/dream": {"100": {"ndcg@10": 0.02}, "1000": {"ndcg@10": 0.01}},
            "raw/dream/lora1": {100: {"ndcg@10": 0.03}, 250: {"ndcg@10": 0.02}},
        },
        "scifact": {"warm/dream": {"100": {"ndcg@10": 0.64}}},
    }
    png = plot_metric_by_step(curves, tmp_path / "by_step.png", groups={"raw/dream/lora1": "raw/dream"})
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(KeyError, match="mrr@10"):
        plot_metric_by_step(curves, tmp_path / "missing.png", metric="mrr@10")
    assert not (tmp_path / "missing.png").exists()
