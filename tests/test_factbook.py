from __future__ import annotations

import json
from pathlib import Path

import pytest

from dreamir.data.beir import load_beir
from dreamir.data.training import read_training_file, validate_against_corpus
from dreamir.datasets.factbook import (
    FIELDS,
    OUTPUT_FILES,
    FactbookPaths,
    build_factbook,
    clean_html,
    finish_answer,
    name_in_sentence,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> FactbookPaths:
    return build_factbook(tmp_path_factory.mktemp("factbook") / "out", seed=0)


def _country(query_id: str) -> str:
    return query_id.split("/")[0]


def _field(query_id: str) -> str:
    return query_id.split("/")[1]


def test_sizes_are_in_the_intended_range(built: FactbookPaths) -> None:
    assert 30 <= len(FIELDS) <= 45
    assert built.num_countries > 200
    assert built.num_passages > 8000
    assert built.num_train >= 3000
    assert 300 <= built.num_eval <= 1500
    assert built.num_calibration == 64
    assert len(built.train_fields) + len(built.eval_fields) == len(FIELDS)
    assert len(built.eval_fields) == round(len(FIELDS) / 3)


def test_eval_is_beir_loadable_and_every_gold_exists(built: FactbookPaths) -> None:
    dataset = load_beir(built.out_dir)
    assert len(dataset.corpus) == built.num_passages
    assert len(dataset.queries) == built.num_eval
    for query_id, judged in dataset.qrels.items():
        assert list(judged.values()) == [1]
        (gold_id,) = judged
        assert gold_id in dataset.corpus
        # The gold is the (country, field) passage the question asks about.
        assert gold_id == query_id.rsplit("/", 1)[0]
    france_capital = dataset.corpus["fr/capital"]
    assert france_capital.title == "France - Capital"
    assert france_capital.text.startswith("name: Paris. geographic coordinates:")
    assert "<" not in france_capital.text and "&" not in france_capital.text


def test_split_never_shares_fields_or_countries(built: FactbookPaths) -> None:
    dataset = load_beir(built.out_dir)
    train = read_training_file(built.train)
    calibration = read_training_file(built.calibration)
    meta = json.loads(built.meta.read_text())

    train_side = train + calibration
    train_countries = {_country(e.query_id or "") for e in train_side}
    train_fields = {_field(e.query_id or "") for e in train_side}
    eval_countries = {_country(q) for q in dataset.queries}
    eval_fields = {_field(q) for q in dataset.queries}

    assert train_countries.isdisjoint(eval_countries)
    assert train_fields.isdisjoint(eval_fields)
    assert train_fields <= set(built.train_fields) == set(meta["fields"]["train"])
    assert eval_fields <= set(built.eval_fields) == set(meta["fields"]["eval"])
    assert train_countries <= set(meta["countries"]["train"])
    assert eval_countries <= set(meta["countries"]["eval"])
    assert set(meta["countries"]["train"]).isdisjoint(meta["countries"]["eval"])
    # The corpus still covers every field of every country (eval fields for train countries too).
    assert any(_country(d) in train_countries and _field(d) in eval_fields for d in dataset.corpus)


def test_training_files_have_answers_and_valid_gold(built: FactbookPaths) -> None:
    dataset = load_beir(built.out_dir)
    train = read_training_file(built.train)
    calibration = read_training_file(built.calibration)
    assert len(train) == built.num_train
    validate_against_corpus(train, dataset.corpus, built.train)
    validate_against_corpus(calibration, dataset.corpus, built.calibration)
    assert {e.query_id for e in calibration}.isdisjoint(e.query_id for e in train)
    for example in train + calibration:
        assert example.candidate_ids is None
        assert example.gold_id == (example.query_id or "").rsplit("/", 1)[0]
        assert 1 <= len(example.target.split()) <= 12
        assert "{country}" not in example.query and example.query.endswith(("?", "."))
    by_id = {e.query_id: e for e in train + calibration}
    if "fr/capital/0" in by_id:  # France may land in either split depending on the seed
        assert by_id["fr/capital/0"].target == "Paris"


def test_same_seed_same_bytes_and_other_seed_differs(built: FactbookPaths, tmp_path: Path) -> None:
    again = build_factbook(tmp_path / "again", seed=0)
    for name in OUTPUT_FILES:
        assert (again.out_dir / name).read_bytes() == (built.out_dir / name).read_bytes(), name
    other = build_factbook(tmp_path / "other", seed=1)
    assert (other.train_fields, other.eval_fields) != (built.train_fields, built.eval_fields)


def test_max_train_and_calibration_size(tmp_path: Path) -> None:
    paths = build_factbook(tmp_path / "small", seed=3, max_train=100, num_calibration=10)
    assert paths.num_train == 100 and len(read_training_file(paths.train)) == 100
    assert paths.num_calibration == 10 and len(read_training_file(paths.calibration)) == 10
    assert not list(tmp_path.glob("small/.*")), "atomic writes left temporary files behind"


def test_answer_and_text_cleaning() -> None:
    assert clean_html("<strong>note:</strong> a &amp; b<br><br>c") == "note: a & b; c"
    assert finish_answer(' "Paris". ') == "Paris"
    assert finish_answer("none") is None
    assert finish_answer("word " * 13) is None
    assert name_in_sentence("United Kingdom") == "the United Kingdom"
    assert name_in_sentence("The Gambia") == "the Gambia"
    assert name_in_sentence("France") == "France"


def test_field_specs_name_the_factbook_field_only_where_it_is_not_the_label():
    renamed = [spec for spec in FIELDS if spec.factbook_name is not None]
    assert renamed and all(spec.factbook_name != spec.label for spec in renamed)
    assert all(spec.name == (spec.factbook_name or spec.label) for spec in FIELDS)
    assert len({spec.key for spec in FIELDS}) == len(FIELDS)
