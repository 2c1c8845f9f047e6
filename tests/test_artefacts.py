"""Artefacts you can trust (issue 31): one test per failure found by probing the commands as a hostile but
realistic user would. Indexes, exports and evaluations carry a manifest verified on load; outputs never
replace what is not theirs; damaged or mismatched files are one message naming the file, never a result."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dreamir import indexing
from dreamir.artefacts import MANIFEST_FILE, ArtefactError, read_manifest
from dreamir.cli import main
from dreamir.data.beir import read_corpus
from dreamir.data.errors import DataFormatError
from dreamir.retriever import Retriever
from dreamir.search import load_index
from dreamir.search.runs import read_trec_run
from tests.tiny_beir import make_tiny_beir

INDEX_KINDS = ("flat", "hnsw", "exact", "bm25")


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def error_line(capsys) -> str:
    """The one line a refused command printed (and nothing that looks like a traceback)."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def beir_dir(tmp_path_factory) -> Path:
    return make_tiny_beir(tmp_path_factory.mktemp("beir") / "tinyfact")


@pytest.fixture(scope="module")
def other_beir_dir(tmp_path_factory) -> Path:
    """Another corpus with the same document ids, other texts."""
    return make_tiny_beir(tmp_path_factory.mktemp("other") / "otherfact", seed=1)


@pytest.fixture(scope="module")
def indexes(tmp_path_factory, beir_dir, tiny_bert_dir) -> dict[str, Path]:
    """One index of each kind over ``beir_dir`` (dense ones with the tiny BERT)."""
    root = tmp_path_factory.mktemp("indexes")
    built = {}
    for kind in INDEX_KINDS:
        model = ["bm25"] if kind == "bm25" else [tiny_bert_dir, "--faiss", kind]
        assert (
            main(
                ["index", *model, "--corpus", str(beir_dir), "--out", str(root / kind), "--no-show-progress"]
            )
            == 0
        )
        built[kind] = root / kind
    return built


@pytest.fixture
def index_copy(indexes, tmp_path):
    def copy(kind: str, manifest: bool = True) -> Path:
        target = shutil.copytree(indexes[kind], tmp_path / f"copy-{kind}")
        if not manifest:  # as an index written before manifests: only the loaders' own checks are left
            (target / MANIFEST_FILE).unlink()
        return target

    return copy


def evaluate(beir_dir: Path, out_dir: Path, *extra: str) -> int:
    return main(["eval", "--beir", str(beir_dir), "--out-dir", str(out_dir), "--no-show-progress", *extra])


# ---- user files replaced or deleted ----------------------------------------------------------------------
def test_eval_out_inside_the_dataset_or_on_a_users_file_is_refused_untouched(beir_dir, tmp_path, capsys):
    queries = beir_dir / "queries.jsonl"
    before = queries.read_bytes()
    assert evaluate(beir_dir, tmp_path / "e", "--model", "bm25", "--out", str(queries)) == 2
    assert str(queries) in error_line(capsys) and queries.read_bytes() == before
    notes = tmp_path / "user_file.txt"
    notes.write_text("mine")
    assert evaluate(beir_dir, tmp_path / "e", "--model", "bm25", "--out", str(notes)) == 2
    assert "--overwrite" in error_line(capsys) and notes.read_text() == "mine"
    assert not (tmp_path / "e").exists()  # refused before any work
    # A metrics file it wrote itself is replaced; --overwrite replaces anything else on request.
    metrics = tmp_path / "metrics-out.json"
    assert evaluate(beir_dir, tmp_path / "e", "--model", "bm25", "--out", str(metrics)) == 0
    assert evaluate(beir_dir, tmp_path / "e", "--model", "bm25", "--out", str(metrics)) == 0
    assert evaluate(beir_dir, tmp_path / "e", "--model", "bm25", "--out", str(notes), "--overwrite") == 0
    assert set(json.loads(notes.read_text())) == {"ndcg@10", "recall@100", "mrr@10"}


def test_eval_out_dir_keeps_a_users_run_and_metrics_unless_overwrite(beir_dir, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "run.trec").write_text("my own run\n")
    (out / "metrics.json").write_text("{}")
    (out / "NOTES.md").write_text("notes")
    before = snapshot(out)
    assert evaluate(beir_dir, out, "--model", "bm25") == 2
    assert str(out) in error_line(capsys) and snapshot(out) == before
    assert evaluate(beir_dir, out, "--model", "bm25", "--overwrite") == 0
    assert (out / "NOTES.md").read_text() == "notes" and read_trec_run(out / "run.trec")
    assert read_manifest(out)["kind"] == "eval"


@pytest.mark.parametrize("command", ["index", "export"])
def test_replacing_an_earlier_artefact_keeps_the_files_a_user_added(
    command, beir_dir, tiny_bert_dir, tmp_path
):
    out = tmp_path / "artefact"
    argv = (
        ["index", "bm25", "--corpus", str(beir_dir), "--out", str(out)]
        if command == "index"
        else ["export", tiny_bert_dir, "--out", str(out), "--eval-dir", str(tmp_path / "none")]
    )
    assert main(argv) == 0
    (out / "NOTES.md").write_text("what this index is for")
    (out / "mine").mkdir()
    (out / "mine" / "data.bin").write_bytes(bytes(range(256)))
    assert main(argv) == 0
    assert (out / "NOTES.md").read_text() == "what this index is for"
    assert (out / "mine" / "data.bin").read_bytes() == bytes(range(256))
    assert "NOTES.md" not in read_manifest(out)["sha256"]  # the user's, not the artefact's


def test_an_index_or_export_over_a_users_directory_is_refused_before_any_work(
    tiny_bert_dir, beir_dir, tmp_path, capsys, monkeypatch
):
    user = tmp_path / "user"
    user.mkdir()
    (user / "NOTES.md").write_text("keep")
    monkeypatch.setattr(indexing, "encode_corpus", lambda *a, **k: pytest.fail("encoded before refusing"))
    assert main(["index", tiny_bert_dir, "--corpus", str(beir_dir), "--out", str(user)]) == 2
    assert str(user) in error_line(capsys)
    assert main(["export", tiny_bert_dir, "--out", str(user)]) == 2
    assert "not an export" in error_line(capsys)
    assert snapshot(user) == {"NOTES.md": b"keep"}
    blocked = tmp_path / "a-file"
    blocked.write_text("x")
    assert main(["index", tiny_bert_dir, "--corpus", str(beir_dir), "--out", str(blocked / "idx")]) == 2
    assert "is a file" in error_line(capsys)


# ---- silently wrong results ------------------------------------------------------------------------------
def test_eval_refuses_an_index_of_another_model_and_records_the_indexs_own(
    indexes, beir_dir, tmp_path, capsys
):
    assert evaluate(beir_dir, tmp_path / "e", "--model", "bm25", "--index", str(indexes["flat"])) == 2
    assert "was built with the model" in error_line(capsys) and not (tmp_path / "e").exists()
    assert evaluate(beir_dir, tmp_path / "e", "--index", str(indexes["bm25"])) == 0
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["model"] == "bm25"
    assert {line.split()[-1] for line in (tmp_path / "e" / "run.trec").read_text().splitlines()} == {"bm25"}


@pytest.mark.parametrize("kind", ["flat", "bm25"])
def test_eval_refuses_an_index_built_over_another_corpus(kind, indexes, other_beir_dir, tmp_path, capsys):
    assert evaluate(other_beir_dir, tmp_path / "e", "--index", str(indexes[kind])) == 2
    assert "another version of" in error_line(capsys)  # same ids, other texts
    smaller = make_tiny_beir(tmp_path / "smaller", documents=30)
    assert evaluate(smaller, tmp_path / "e", "--index", str(indexes[kind])) == 2
    assert "another corpus" in error_line(capsys)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(INDEX_KINDS), choice=st.integers(0, 10**9), bit=st.integers(0, 7))
def test_any_flipped_bit_in_any_index_file_is_refused_naming_the_file(indexes, tmp_path, kind, choice, bit):
    target = tmp_path / "flipped"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(indexes[kind], target)
    files = sorted(p for p in target.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    damaged = files[choice % len(files)]
    data = bytearray(damaged.read_bytes())
    data[(choice // len(files)) % len(data)] ^= 1 << bit
    damaged.write_bytes(bytes(data))
    with pytest.raises(ArtefactError, match=rf"{damaged.name}: does not match its checksum"):
        load_index(target)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "exact"])
def test_a_nan_in_a_stored_vector_is_refused_even_without_a_manifest(kind, index_copy):
    import faiss

    directory = index_copy(kind, manifest=False)
    if kind == "exact":
        vectors = np.load(directory / "embeddings.npy")
        vectors[3, 0] = np.nan
        np.save(directory / "embeddings.npy", vectors)
    else:
        index = faiss.read_index(str(directory / "faiss.index"))
        vectors = index.reconstruct_n(0, index.ntotal)
        vectors[3, 0] = np.nan
        rebuilt = (
            faiss.IndexFlatIP(index.d)
            if kind == "flat"
            else faiss.IndexHNSWFlat(index.d, 32, faiss.METRIC_INNER_PRODUCT)
        )
        rebuilt.add(vectors)
        faiss.write_index(rebuilt, str(directory / "faiss.index"))
    with pytest.raises(DataFormatError, match="1 of 40 stored vectors hold NaN or infinite values"):
        load_index(directory)


def test_a_bm25_matrix_with_impossible_scores_is_refused_even_without_a_manifest(index_copy):
    directory = index_copy("bm25", manifest=False)
    data_file = directory / "bm25s" / "data.csc.index.npy"
    data = np.load(data_file)
    data[0] = 7e36 * -1
    np.save(data_file, data)
    with pytest.raises(DataFormatError, match=r"data\.csc\.index\.npy: holds scores that are negative"):
        load_index(directory)


def test_duplicate_ids_and_short_titles_are_refused(index_copy, tmp_path, capsys):
    directory = index_copy("bm25", manifest=False)
    ids = json.loads((directory / "doc_ids.json").read_text())
    (directory / "doc_ids.json").write_text(json.dumps([ids[1], *ids[1:]]))
    with pytest.raises(
        DataFormatError, match=r"doc_ids\.json: field '\[1\]': duplicate document id 'd1' \(also at \[0\]\)"
    ):
        load_index(directory)
    (directory / "doc_ids.json").write_text(json.dumps(ids))
    titles = json.loads((directory / "titles.json").read_text())
    (directory / "titles.json").write_text(json.dumps(titles[:-1]))
    assert main(["search", str(directory), "capital"]) == 2
    assert "titles.json: 39 titles but 40 document ids" in error_line(capsys)


def test_an_export_with_flipped_sign_bits_is_refused_on_load(tiny_bert_dir, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", tiny_bert_dir, "--out", str(out), "--eval-dir", str(tmp_path / "none")]) == 0
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    for position in range(len(data) - 400, len(data), 4):
        data[position + 3] ^= 0x80  # the sign bit of a float32
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtefactError, match=r"model\.safetensors: does not match its checksum"):
        Retriever.from_pretrained(out)
    assert main(["index", str(out), "--corpus", str(tmp_path), "--out", str(tmp_path / "i")]) == 2


def test_search_config_with_one_query_as_a_string_searches_it_once(indexes, tmp_path, capsys):
    config = tmp_path / "search.json"
    config.write_text(json.dumps({"queries": "capital city", "k": 2, "json": True}))
    assert main(["search", str(indexes["bm25"]), "--config", str(config)]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["query"] for r in results] == ["capital city"]


# ---- tracebacks instead of a message ---------------------------------------------------------------------
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    option=st.sampled_from(["k", "threads"]),
    value=st.one_of(
        st.floats(allow_nan=False), st.text(max_size=3), st.booleans(), st.lists(st.integers(), max_size=2)
    ),
)
def test_a_config_value_of_the_wrong_type_names_the_file_and_option(indexes, tmp_path, capsys, option, value):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({option: value, "queries": ["capital"]}))
    assert main(["search", str(indexes["bm25"]), "--config", str(config)]) == 2
    line = error_line(capsys)
    assert f"{config}: field '{option}': expected an integer" in line


@pytest.mark.parametrize("content", [b"", b"garbage, not FAISS", "truncated"])
def test_an_unreadable_faiss_file_is_one_message(content, index_copy, capsys):
    directory = index_copy("flat", manifest=False)
    path = directory / "faiss.index"
    path.write_bytes(path.read_bytes()[:200] if content == "truncated" else content)
    assert main(["search", str(directory), "capital"]) == 2
    assert f"{path}: cannot be read by FAISS" in error_line(capsys)


def test_index_json_naming_hnsw_on_a_flat_index_is_one_message(index_copy, capsys):
    directory = index_copy("flat", manifest=False)
    info = json.loads((directory / "index.json").read_text())
    (directory / "index.json").write_text(json.dumps({**info, "faiss": "hnsw"}))
    assert main(["search", str(directory), "capital"]) == 2
    assert "index.json: field 'faiss': says 'hnsw', but faiss.index holds a flat index" in error_line(capsys)


@pytest.mark.parametrize(
    ("file", "field"),
    [("index.json", "k1"), ("bm25s/params.index.json", "k1"), ("bm25s/params.index.json", "num_docs")],
)
def test_bm25_parameters_of_the_wrong_type_are_named(file, field, index_copy, capsys):
    directory = index_copy("bm25", manifest=False)
    values = json.loads((directory / file).read_text())
    (directory / file).write_text(json.dumps({**values, field: "1.5"}))
    assert main(["search", str(directory), "capital"]) == 2
    assert f"{Path(file).name}: field '{field}': expected" in error_line(capsys)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_safetensors_file_is_one_message(damage, tiny_bert_dir, beir_dir, tmp_path, capsys):
    model = shutil.copytree(tiny_bert_dir, tmp_path / "model")
    weights = model / "model.safetensors"
    weights.write_bytes(
        {"truncated": weights.read_bytes()[:5000], "garbage": b"\x00" * 64, "empty": b""}[damage]
    )
    argv = [
        "index",
        str(model),
        "--corpus",
        str(beir_dir),
        "--out",
        str(tmp_path / "i"),
        "--no-show-progress",
    ]
    assert main(argv) == 2
    assert f"{weights}: cannot be read as safetensors" in error_line(capsys)


@pytest.mark.parametrize(
    ("file", "field", "value"),
    [
        ("dreamir_retriever.json", "max_length", "256"),
        ("dreamir_retriever.json", "normalize", 1),
        ("config.json", "hidden_size", "32"),
    ],
)
def test_model_settings_of_the_wrong_type_name_the_file_and_field(
    file, field, value, tiny_bert_dir, tmp_path, capsys
):
    model = tmp_path / "model"
    Retriever.from_pretrained(tiny_bert_dir).save(model)
    (model / MANIFEST_FILE).unlink()  # edited by hand: the loaders' checks, not the checksums, speak
    settings_file = model / file
    settings_file.write_text(json.dumps({**json.loads(settings_file.read_text()), field: value}))
    capsys.readouterr()
    assert main(["export", str(model), "--out", str(tmp_path / "x")]) == 2
    assert f"{settings_file}: field '{field}': expected" in error_line(capsys)


# ---- interrupted writes ----------------------------------------------------------------------------------
def test_eval_metrics_and_run_are_replaced_together_or_not_at_all(beir_dir, tmp_path, monkeypatch):
    out = tmp_path / "e"
    assert evaluate(beir_dir, out, "--model", "bm25") == 0
    before = snapshot(out)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # a kill after metrics.json was written in the temporary directory

    monkeypatch.setattr(indexing, "write_trec_run", killed)
    with pytest.raises(KeyboardInterrupt):
        evaluate(beir_dir, out, "--model", "bm25", "--split", "test")
    assert snapshot(out) == before


def test_the_temporaries_of_a_killed_write_are_cleaned_and_a_moved_aside_artefact_restored(
    beir_dir, tmp_path
):
    out = tmp_path / "idx"
    argv = ["index", "bm25", "--corpus", str(beir_dir), "--out", str(out)]
    stale = tmp_path / ".idx.abcd1234"
    (stale / "idx").mkdir(parents=True)
    (stale / "idx" / "half.npy").write_bytes(b"half")
    assert main(argv) == 0
    assert not stale.exists() and out.is_dir()
    # Killed between moving the old index aside and renaming the new one in: the old one comes back.
    moved = tmp_path / ".idx.wxyz5678"
    moved.mkdir()
    os.replace(out, moved / "idx.old")
    assert main(argv) == 0
    assert not moved.exists() and load_index(out).doc_ids


# ---- messages --------------------------------------------------------------------------------------------
def test_validate_names_the_users_file_for_an_empty_corpus_or_qrels(tmp_path, capsys):
    (tmp_path / "corpus.jsonl").write_text("")
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n")
    assert main(["validate", str(tmp_path / "corpus.jsonl"), str(tmp_path / "qrels.tsv")]) == 1
    out = capsys.readouterr().out
    assert f"{tmp_path / 'corpus.jsonl'}: holds no documents" in out
    assert f"{tmp_path / 'qrels.tsv'}: holds no judgements" in out
    assert "/tmp/tmp" not in out.replace(str(tmp_path), "")


def test_validate_verifies_an_artefact_directory(indexes, index_copy, capsys):
    assert main(["validate", str(indexes["flat"])]) == 0
    directory = index_copy("flat")
    (directory / "doc_ids.json").write_text((directory / "doc_ids.json").read_text().replace("d1", "d9"))
    assert main(["validate", str(directory)]) == 1
    assert "doc_ids.json: does not match its checksum" in capsys.readouterr().out


def test_beir_given_a_file_says_so(beir_dir, tmp_path, capsys):
    assert evaluate(beir_dir / "corpus.jsonl", tmp_path / "e", "--model", "bm25") == 2
    assert "corpus.jsonl: is a file: expected a BEIR directory" in error_line(capsys)


@pytest.mark.parametrize("file", ["config", "titles.json", "doc_ids.json", "dreamir_manifest.json"])
def test_malformed_json_names_its_file(file, index_copy, tmp_path, capsys):
    directory = index_copy("bm25", manifest=file == MANIFEST_FILE)
    path = tmp_path / "config.json" if file == "config" else directory / file
    path.write_text('{"k": 3,')
    argv = ["search", str(directory), "capital"] + (["--config", str(path)] if file == "config" else [])
    assert main(argv) == 2
    assert f"{path}:1: malformed JSON" in error_line(capsys)


def test_an_unknown_option_is_named_with_a_suggestion(indexes, capsys):
    assert main(["search", str(indexes["bm25"]), "capital", "--jsn"]) == 2
    assert "unknown option --jsn (did you mean --json?)" in error_line(capsys)


def test_bm25_logs_no_debug_line_by_default(beir_dir):
    from dreamir.search.bm25 import BM25Index

    BM25Index.from_corpus(read_corpus(beir_dir / "corpus.jsonl"))
    assert logging.getLogger("bm25s").getEffectiveLevel() == logging.getLogger().getEffectiveLevel()


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_a_utf16_file_is_one_message_naming_the_encoding(encoding, tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(
        "".join(json.dumps({"_id": f"d{i}", "text": "x"}) + "\n" for i in range(30)).encode(encoding)
    )
    assert main(["validate", str(corpus)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert (
        lines[0] == f"{corpus}: is encoded in {encoding[:6].upper()}, not UTF-8: save it as UTF-8"
        and len(lines) == 2
    )


def test_bm25_search_returns_only_matching_documents_and_refuses_an_empty_query(indexes, capsys):
    assert main(["search", str(indexes["bm25"]), "zzz unknown words", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"] == []
    assert main(["search", str(indexes["bm25"]), "capital", "-k", "100", "--json"]) == 0
    assert all(hit["score"] > 0 for hit in json.loads(capsys.readouterr().out)["hits"])
    assert main(["search", str(indexes["bm25"]), " "]) == 2
    assert "query 1 is empty" in error_line(capsys)


def test_exported_files_have_one_mode(tiny_bert_dir, tmp_path):
    out = tmp_path / "export"
    assert main(["export", tiny_bert_dir, "--out", str(out), "--eval-dir", str(tmp_path / "none")]) == 0
    mask = os.umask(0)
    os.umask(mask)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}
    assert modes == {0o666 & ~mask}


def test_adapt_output_carries_a_manifest_over_what_it_hands_over(tiny_bert_dir, beir_dir, tmp_path, capsys):
    from dreamir.adapt import AdaptArguments
    from dreamir.artefacts import write_adapt_manifest

    out = tmp_path / "adapted"
    Retriever.from_pretrained(tiny_bert_dir).save(out / "model")
    (out / "report.json").write_text("{}")
    (out / "work").mkdir()
    (out / "work" / "train.jsonl").write_text("state\n")
    corpus = read_corpus(beir_dir / "corpus.jsonl")
    write_adapt_manifest(
        out, AdaptArguments(corpus=str(beir_dir), out=str(out), retriever=tiny_bert_dir), corpus
    )
    manifest = read_manifest(out)
    assert manifest["kind"] == "adapt" and manifest["corpus"]["documents"] == len(corpus)
    assert "model/model.safetensors" in manifest["sha256"] and "work/train.jsonl" not in manifest["sha256"]
    assert main(["validate", str(out)]) == 0
    (out / "report.json").write_text('{"edited": 1}')
    assert main(["validate", str(out)]) == 1
    assert "report.json: does not match its checksum" in capsys.readouterr().out


@pytest.mark.parametrize(
    "file", ["modules.json", "config_sentence_transformers.json", "dreamir_retriever.json"]
)
def test_malformed_json_in_a_model_directory_names_its_file(file, tiny_bert_dir, tmp_path, capsys):
    model = tmp_path / "model"
    Retriever.from_pretrained(tiny_bert_dir).save(model)
    (model / MANIFEST_FILE).unlink()
    (model / file).write_text("[{")
    capsys.readouterr()
    assert main(["export", str(model), "--out", str(tmp_path / "x")]) == 2
    assert f"{model / file}:1: malformed JSON" in error_line(capsys)


def test_saving_a_retriever_again_keeps_the_files_a_user_added(tiny_bert_dir, tmp_path):
    retriever = Retriever.from_pretrained(tiny_bert_dir)
    retriever.save(tmp_path / "final")
    (tmp_path / "final" / "NOTES.md").write_text("run 3, the good one")
    retriever.save(tmp_path / "final")
    assert (tmp_path / "final" / "NOTES.md").read_text() == "run 3, the good one"
    assert read_manifest(tmp_path / "final")["kind"] == "model"
