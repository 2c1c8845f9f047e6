"""Building the Factbook retrieval task (corpus, evaluation questions, training and calibration files)."""

from __future__ import annotations

import importlib
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreamir.data.beir import BeirDataset, Document, write_beir
from dreamir.data.training import TrainingExample, write_training_file
from dreamir.datasets.factbook.cleaning import finish_answer
from dreamir.datasets.factbook.fields import FIELDS, passage_text
from dreamir.datasets.factbook.package import PACKAGE, Country, field_value, load_countries, name_in_sentence
from dreamir.io import check_output_file, write_json_atomic


@dataclass(frozen=True)
class FactbookQuestion:
    query_id: str
    query: str
    answer: str
    gold_id: str
    country: str
    field: str


@dataclass(frozen=True)
class FactbookPaths:
    out_dir: Path
    corpus: Path
    queries: Path
    qrels: Path
    train: Path
    calibration: Path
    meta: Path
    num_passages: int
    num_countries: int
    num_train: int
    num_eval: int
    num_calibration: int
    train_fields: tuple[str, ...]
    eval_fields: tuple[str, ...]


def build_passages(countries: Iterable[Country], max_words: int = 120) -> dict[str, Document]:
    """One Document per (country, field) that the country has: id "fr/capital"."""
    corpus: dict[str, Document] = {}
    for country in countries:
        for spec in FIELDS:
            value = field_value(country, spec)
            if value is None:
                continue
            text = passage_text(value, spec, max_words)
            if text:
                doc_id = f"{country.code}/{spec.key}"
                corpus[doc_id] = Document(doc_id, f"{country.name} - {spec.label}", text)
    return corpus


def build_questions(
    countries: Iterable[Country], field_keys: Iterable[str], corpus: dict[str, Document]
) -> list[FactbookQuestion]:
    """Every answerable templated question about ``countries`` x ``field_keys``, in a fixed order."""
    wanted = set(field_keys)
    questions: list[FactbookQuestion] = []
    for country in countries:
        for spec in FIELDS:
            gold_id = f"{country.code}/{spec.key}"
            value = field_value(country, spec)
            if spec.key not in wanted or value is None or gold_id not in corpus:
                continue
            for number, question in enumerate(spec.questions):
                answer = finish_answer(question.answer(value))
                if answer is None:
                    continue
                questions.append(
                    FactbookQuestion(
                        query_id=f"{gold_id}/{number}",
                        query=question.template.format(country=name_in_sentence(country.name)),
                        answer=answer,
                        gold_id=gold_id,
                        country=country.code,
                        field=spec.key,
                    )
                )
    return questions


def _split(items: list[str], eval_fraction: float, rng: random.Random) -> tuple[list[str], list[str]]:
    shuffled = sorted(items)
    rng.shuffle(shuffled)
    num_eval = min(len(shuffled) - 1, max(1, round(len(shuffled) * eval_fraction)))
    return sorted(shuffled[num_eval:]), sorted(shuffled[:num_eval])


# Every file build_factbook writes, relative to its output directory.
OUTPUT_FILES = (
    "corpus.jsonl",
    "queries.jsonl",
    "qrels/test.tsv",
    "train.jsonl",
    "calibration.jsonl",
    "meta.json",
)


def build_factbook(
    out_dir: str | Path,
    seed: int = 0,
    max_train: int | None = None,
    num_calibration: int = 64,
    eval_field_fraction: float = 1 / 3,
    eval_country_fraction: float = 0.25,
    eval_questions_per_passage: int | None = 1,
    max_passage_words: int = 120,
    data_dir: str | Path | None = None,
) -> FactbookPaths:
    """Build the Factbook retrieval task under ``out_dir``; the same seed gives the same files.

    Writes ``corpus.jsonl``, ``queries.jsonl`` + ``qrels/test.tsv`` (evaluation questions, BEIR
    layout), ``train.jsonl`` and ``calibration.jsonl`` (training-file format with gold_id) and
    ``meta.json``. Calibration questions come from the training split but are held out of
    ``train.jsonl``. ``eval_questions_per_passage`` (None: all) limits how many templates ask about
    each evaluation passage, so no passage dominates the average.
    """
    if not 0 < eval_field_fraction < 1 or not 0 < eval_country_fraction < 1:
        raise ValueError("eval_field_fraction and eval_country_fraction must lie strictly between 0 and 1")
    out_dir = Path(out_dir)
    # Refuse before building anything, so a bad --out leaves no half-written task behind.
    for name in OUTPUT_FILES:
        check_output_file(out_dir / name)
    countries = load_countries(Path(data_dir) if data_dir is not None else None)
    corpus = build_passages(countries, max_passage_words)

    rng = random.Random(seed)
    train_fields, eval_fields = _split([spec.key for spec in FIELDS], eval_field_fraction, rng)
    codes_with_passages = sorted({doc_id.split("/", 1)[0] for doc_id in corpus})
    train_codes, eval_codes = _split(codes_with_passages, eval_country_fraction, rng)
    by_code = {country.code: country for country in countries}

    train_pool = build_questions([by_code[c] for c in train_codes], train_fields, corpus)
    eval_questions = build_questions([by_code[c] for c in eval_codes], eval_fields, corpus)
    if eval_questions_per_passage is not None:
        eval_questions = _limit_per_passage(eval_questions, eval_questions_per_passage, rng)

    rng.shuffle(train_pool)  # training reads the file in order: mix fields and countries
    calibration = train_pool[:num_calibration]
    train = train_pool[num_calibration:]
    if max_train is not None:
        train = train[:max_train]

    paths = FactbookPaths(
        out_dir=out_dir,
        corpus=out_dir / "corpus.jsonl",
        queries=out_dir / "queries.jsonl",
        qrels=out_dir / "qrels" / "test.tsv",
        train=out_dir / "train.jsonl",
        calibration=out_dir / "calibration.jsonl",
        meta=out_dir / "meta.json",
        num_passages=len(corpus),
        num_countries=len(codes_with_passages),
        num_train=len(train),
        num_eval=len(eval_questions),
        num_calibration=len(calibration),
        train_fields=tuple(train_fields),
        eval_fields=tuple(eval_fields),
    )
    eval_dataset = BeirDataset(
        name="factbook",
        corpus=corpus,
        queries={q.query_id: q.query for q in eval_questions},
        qrels={q.query_id: {q.gold_id: 1} for q in eval_questions},
    )
    write_beir(
        out_dir,
        eval_dataset,
        split="test",
        query_metadata={
            q.query_id: {"answer": q.answer, "country": q.country, "field": q.field} for q in eval_questions
        },
    )
    write_training_file(paths.train, (_as_example(q) for q in train))
    write_training_file(paths.calibration, (_as_example(q) for q in calibration))
    write_json_atomic(paths.meta, _meta(paths, seed, by_code, train_codes, eval_codes, train, eval_questions))
    return paths


def _limit_per_passage(
    questions: list[FactbookQuestion], limit: int, rng: random.Random
) -> list[FactbookQuestion]:
    by_gold: dict[str, list[FactbookQuestion]] = {}
    for question in questions:
        by_gold.setdefault(question.gold_id, []).append(question)
    kept = {
        question.query_id
        for group in by_gold.values()
        for question in (rng.sample(group, limit) if len(group) > limit else group)
    }
    return [question for question in questions if question.query_id in kept]


def _as_example(question: FactbookQuestion) -> TrainingExample:
    return TrainingExample(
        query=question.query, target=question.answer, gold_id=question.gold_id, query_id=question.query_id
    )


def _meta(
    paths: FactbookPaths,
    seed: int,
    by_code: dict[str, Country],
    train_codes: list[str],
    eval_codes: list[str],
    train: list[FactbookQuestion],
    eval_questions: list[FactbookQuestion],
) -> dict[str, Any]:
    def per_field(questions: list[FactbookQuestion]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for question in questions:
            counts[question.field] = counts.get(question.field, 0) + 1
        return dict(sorted(counts.items()))

    try:
        version = importlib.import_module(PACKAGE).__version__
    except (ImportError, AttributeError):
        version = None
    return {
        "source": f"{PACKAGE} {version}",
        "seed": seed,
        "fields": {"train": list(paths.train_fields), "eval": list(paths.eval_fields)},
        "countries": {
            "train": {code: by_code[code].name for code in train_codes},
            "eval": {code: by_code[code].name for code in eval_codes},
        },
        "counts": {
            "passages": paths.num_passages,
            "countries": paths.num_countries,
            "train": paths.num_train,
            "eval": paths.num_eval,
            "calibration": paths.num_calibration,
            "train_per_field": per_field(train),
            "eval_per_field": per_field(eval_questions),
        },
    }
