"""The commands that take a retriever to where users work: index, search, eval (run files, mteb), export,
mine --retriever; on tiny models and a small generated BEIR directory, offline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dreamir.cli import main
from dreamir.data.beir import load_beir
from dreamir.data.training import read_training_file
from dreamir.evaluation import evaluate_encoder
from dreamir.export import ExportArguments, export_model
from dreamir.retriever import LoraSettings, Retriever, RetrieverConfig
from dreamir.search.runs import read_trec_run
from tests.tiny_beir import make_tiny_beir


@pytest.fixture(scope="module")
def beir_dir(tmp_path_factory):
    return make_tiny_beir(tmp_path_factory.mktemp("beir") / "tinyfact")


def test_index_then_search_prints_ids_scores_and_titles(tmp_path, beir_dir, tiny_bert_dir, capsys):
    corpus = load_beir(beir_dir).corpus
    for kind in ("flat", "hnsw", "exact"):
        out = tmp_path / f"index-{kind}"
        assert (
            main(
                [
                    "index",
                    tiny_bert_dir,
                    str(beir_dir),
                    "--out",
                    str(out),
                    "--faiss",
                    kind,
                    "--no-show-progress",
                ]
            )
            == 0
        )
        info = json.loads((out / "index.json").read_text())
        assert info["model"] == tiny_bert_dir and info["documents"] == len(corpus)
    capsys.readouterr()
    query = corpus["d3"].text
    assert main(["search", str(tmp_path / "index-flat"), query, "capital city", "-k", "3", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    results = [json.loads(line) for line in lines]
    assert [r["query"] for r in results] == [query, "capital city"]
    first = results[0]["hits"]
    assert len(first) == 3 and first[0]["id"] == "d3" and first[0]["title"] == corpus["d3"].title
    assert first[0]["score"] >= first[1]["score"] >= first[2]["score"]
    # Every kind of index agrees with exact search on the top hit here.
    for kind in ("hnsw", "exact"):
        main(["search", str(tmp_path / f"index-{kind}"), query, "-k", "3", "--json"])
        assert json.loads(capsys.readouterr().out)["hits"][0]["id"] == "d3"
    main(["search", str(tmp_path / "index-flat"), query, "-k", "2"])
    text = capsys.readouterr().out
    assert text.startswith(f"query: {query}") and "d3" in text and corpus["d3"].title in text


def test_bm25_index_and_bad_index_directory(tmp_path, beir_dir, capsys):
    assert main(["index", "bm25", str(beir_dir), "--out", str(tmp_path / "bm25")]) == 0
    capsys.readouterr()
    assert main(["search", str(tmp_path / "bm25"), "capital", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["hits"]) == 10
    assert main(["search", str(tmp_path), "capital"]) == 2
    assert "no index.json" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("keep")
    assert main(["index", "bm25", str(beir_dir), "--out", str(tmp_path)]) == 2
    assert "is not an index written by `dreamir index`" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "keep"


def test_eval_names_dataset_and_model_and_writes_metrics_and_a_run(tmp_path, beir_dir, tiny_bert_dir, capsys):
    out = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                "--model",
                tiny_bert_dir,
                "--beir",
                str(beir_dir),
                "--out-dir",
                str(out),
                "--no-show-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "tinyfact test (12 queries, 40 documents)" in printed and tiny_bert_dir in printed
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["dataset"] == "tinyfact" and summary["model"] == tiny_bert_dir
    run = read_trec_run(out / "run.trec")
    assert len(run) == 12 and all(len(hits) == 40 for hits in run.values())
    # The same numbers as the evaluation library computes from the same model.
    retriever = Retriever.from_pretrained(tiny_bert_dir).eval()
    expected = evaluate_encoder(
        load_beir(beir_dir),
        retriever.encode_queries,
        lambda t: retriever.encode_documents(t, show_progress=False),
    )
    assert summary["metrics"] == pytest.approx(expected, abs=1e-9)
    # An index evaluates the same way.
    main(["index", tiny_bert_dir, str(beir_dir), "--out", str(tmp_path / "idx"), "--no-show-progress"])
    main(
        ["eval", "--index", str(tmp_path / "idx"), "--beir", str(beir_dir), "--out-dir", str(tmp_path / "e2")]
    )
    assert json.loads((tmp_path / "e2" / "metrics.json").read_text())["metrics"] == pytest.approx(
        expected, abs=1e-6
    )


def test_mteb_engine_agrees_with_dreamir_offline(tmp_path, beir_dir, tiny_bert_dir, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ours, theirs = tmp_path / "dreamir", tmp_path / "mteb"
    common = ["--model", tiny_bert_dir, "--beir", str(beir_dir), "--no-show-progress"]
    assert main(["eval", *common, "--out-dir", str(ours)]) == 0
    assert main(["eval", *common, "--out-dir", str(theirs), "--engine", "mteb"]) == 0
    a = json.loads((ours / "metrics.json").read_text())["metrics"]
    b = json.loads((theirs / "metrics.json").read_text())["metrics"]
    assert b == pytest.approx(a, abs=1e-4)
    results = list((theirs / "mteb" / "results").rglob("LocalTinyfact.json"))
    assert results, "mteb's result JSON"
    scores = json.loads(results[0].read_text())["scores"]["test"][0]
    assert scores["ndcg_at_10"] == pytest.approx(a["ndcg@10"], abs=1e-4)
    assert read_trec_run(theirs / "run.trec").keys() == read_trec_run(ours / "run.trec").keys()


def _st_embeddings(path, texts, **kwargs) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu").encode(texts, convert_to_numpy=True, **kwargs)


TEXTS = ["the capital of france is paris", "a red cat sat on the mat", "water"]


def test_export_writes_a_sentence_transformers_directory_with_a_card(tmp_path, tiny_bert_dir, beir_dir):
    # A LoRA-trained retriever whose adapters moved away from zero, saved as training saves it.
    retriever = Retriever.from_pretrained(
        tiny_bert_dir, RetrieverConfig(lora=LoraSettings(r=4, alpha=8, target_modules=["query", "value"]))
    )
    with torch.no_grad():
        for name, parameter in retriever.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    expected = retriever.eval().encode(TEXTS)
    run = tmp_path / "runs" / "dream"
    retriever.save(run / "final")
    (run / "training_args.json").write_text(
        json.dumps({"max_steps": 7, "batch_size": 2, "learning_rate": 1e-5})
    )
    (run / "log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3)))
    main(
        [
            "eval",
            "--model",
            str(run / "final"),
            "--beir",
            str(beir_dir),
            "--out-dir",
            str(tmp_path / "ev" / "x"),
        ]
    )

    out = export_model(
        ExportArguments(model=str(run / "final"), out=str(tmp_path / "export"), eval_dir=str(tmp_path / "ev"))
    )
    assert np.abs(_st_embeddings(out, TEXTS) - expected).max() <= 1e-6
    card = (out / "README.md").read_text()
    assert "library_name: sentence-transformers" in card
    assert "steps: 3 of 2, learning rate 1e-05" in card
    assert "| tinyfact | test | dreamir |" in card
    assert not any(
        "lora" in k for k in __import__("safetensors.torch").torch.load_file(out / "model.safetensors")
    )
    # Exporting again replaces the earlier export; a foreign directory is refused.
    assert main(["export", str(run / "final"), "--out", str(out)]) == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main(["export", str(run / "final"), "--out", str(tmp_path / "mine")]) == 2


def test_export_merges_a_peft_adapter_into_its_base(tmp_path, tiny_llama_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    base = AutoModel.from_pretrained(tiny_llama_dir)
    adapted = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    adapted.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = tiny_llama_dir
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(config))

    out = export_model(
        ExportArguments(model=str(tmp_path / "adapter"), out=str(tmp_path / "export"), max_length=64)
    )
    merged = Retriever.from_pretrained(out)
    assert merged.config.pooling == "last" and merged.config.normalize
    assert np.abs(_st_embeddings(out, TEXTS) - merged.encode(TEXTS)).max() <= 1e-6
    plain = Retriever.from_pretrained(tiny_llama_dir, RetrieverConfig(pooling="last", max_length=64))
    assert np.abs(plain.encode(TEXTS) - merged.encode(TEXTS)).max() > 1e-3  # the adapter changed something


def test_mine_with_a_retriever_replaces_candidates_with_its_top_k(tmp_path, beir_dir, tiny_bert_dir):
    corpus = load_beir(beir_dir).corpus
    train = tmp_path / "train.jsonl"
    rows = [
        {"query": corpus[d].text, "target": "x", "gold_id": d, "candidate_ids": ["d0"]} for d in ("d1", "d5")
    ]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "mined.jsonl"
    args = ["mine", "--train", str(train), "--corpus", str(beir_dir), "--out", str(out), "--k", "4"]
    assert main([*args, "--retriever", tiny_bert_dir, "--no-show-progress"]) == 0
    mined = read_training_file(out)
    assert [len(e.candidate_ids or []) for e in mined] == [4, 4]
    assert [(e.candidate_ids or [])[0] for e in mined] == ["d1", "d5"]  # its own text ranks first
