"""Training from a corpus alone: the example builders, the pseudo-gold validation signal, the candidate
refresh and `dreamir adapt` end to end on tiny models."""

import dataclasses
import json
import math
import random

import numpy as np
import pytest
import torch

from dreamir.adapt import AdaptArguments, adapt, split_by_source
from dreamir.cli import main
from dreamir.data.beir import Document
from dreamir.data.corpus_examples import (
    CorpusExampleSettings,
    build_generated_examples,
    build_ict_examples,
    copied_verbatim,
    read_query_examples,
    split_sentences,
    with_pseudo_gold,
)
from dreamir.data.errors import DataFormatError
from dreamir.data.training import TrainingExample, read_training_file
from dreamir.evaluation import pseudo_gold_success
from dreamir.retriever import Retriever
from tests.tiny_models import make_tiny_gemma3

WORDS = [
    "capital",
    "city",
    "country",
    "river",
    "mountain",
    "language",
    "president",
    "people",
    "water",
    "fire",
    "sun",
    "moon",
    "cat",
    "dog",
]


def make_corpus(count: int = 40, seed: int = 0) -> dict[str, Document]:
    rng = random.Random(seed)
    corpus = {}
    for i in range(count):
        sentences = [" ".join(["The", *rng.sample(WORDS, 6), f"number{i}x{s}"]) + "." for s in range(4)]
        # Every other passage has a title long enough to validate with.
        title = f"title {i}" if i % 2 else f"the title of passage {i}"
        corpus[f"p{i}"] = Document(f"p{i}", title, " ".join(sentences))
    return corpus


def write_corpus(directory, corpus) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "corpus.jsonl").open("w") as f:
        for doc in corpus.values():
            f.write(json.dumps({"_id": doc.doc_id, "title": doc.title, "text": doc.text}) + "\n")


def test_sentences_split_at_full_stops_before_capitals():
    assert split_sentences("One two. Three four! 5 six? lower case. Seven") == [
        "One two.",
        "Three four!",
        "5 six? lower case.",
        "Seven",
    ]


def test_ict_examples_remove_the_query_sentence_and_keep_the_target_in_the_derived_passage():
    corpus = make_corpus(10)
    corpus["short"] = Document("short", "", "Only one sentence here with words.")
    built = build_ict_examples(corpus, CorpusExampleSettings(max_passages=100, examples_per_passage=2))
    assert built.dropped["passage under 3 sentences, no usable title"] == 1
    assert len(built.examples) == 20 and built.passages_sampled == 11
    for example in built.examples:
        derived = built.derived[example.gold_id]
        source = corpus[built.source_of[example.gold_id]]
        assert example.query in source.text and example.query not in derived.text
        assert derived.text.startswith(example.target.split()[0]) or example.target.split()[0] in derived.text
        assert example.target.split()[:3] == source.text.split(example.query)[1].split()[:3]
    # Two examples of one passage use different sentences.
    assert len({e.query for e in built.examples}) == 20


def test_ict_gives_a_short_passage_its_title_as_the_query_and_the_untitled_passage_as_pseudo_gold():
    corpus = {
        "aw/pop": Document("aw/pop", "Aruba - Population", "total: 125,063 (2024 est.). male: 59,101"),
        "aw/area": Document("aw/area", "Area", "total: 180 sq km. land: 180 sq km"),  # title too short
        "aw/dup": Document("aw/dup", "Aruba - Population", "the same title again, words enough"),
    }
    built = build_ict_examples(corpus, CorpusExampleSettings(max_passages=10, target_words=4))
    assert [e.query for e in built.examples] == ["Aruba - Population"]
    example = built.examples[0]
    derived = built.derived[example.gold_id]
    assert built.source_of[example.gold_id] in {"aw/pop", "aw/dup"}
    assert derived.title == "" and derived.text == corpus[built.source_of[example.gold_id]].text
    assert example.target == " ".join(derived.text.split()[:4])
    assert built.dropped["passage under 3 sentences, no usable title"] == 2


def test_ict_examples_with_the_target_removed_keep_neither_query_nor_target_in_the_derived_passage():
    corpus = make_corpus(10)
    settings = CorpusExampleSettings(max_passages=100, target_words=6, ict_target="removed")
    built = build_ict_examples(corpus, settings)
    assert built.examples
    for example in built.examples:
        derived = built.derived[example.gold_id]
        source = corpus[built.source_of[example.gold_id]]
        assert example.query not in derived.text and example.target not in derived.text
        assert example.target in source.text and derived.text
        # Only the query sentence and the sentences the target runs into are gone.
        removed = [s for s in split_sentences(source.text) if s not in derived.text]
        assert removed[0] == example.query and example.target.startswith(removed[1].split()[0])
        assert len(" ".join(removed[1:-1]).split()) < len(example.target.split())


def test_generated_examples_drop_and_count_degenerate_queries():
    corpus = make_corpus(6)
    passages = sorted(corpus.values(), key=lambda d: d.doc_id)
    replies = {
        "p0": "",  # empty
        "p1": "which river country",  # too short
        "p2": passages[2].title,  # the title, copied
        "p3": " ".join(passages[3].text.split()[:9]),  # a copied run of words
        "p4": "where do the people of the mountain city live",
        "p5": "where do the people of the mountain city live",  # duplicate
    }
    built = build_generated_examples(
        corpus,
        CorpusExampleSettings(recipe="genq", max_passages=6),
        lambda docs: [replies[d.doc_id] for d in docs],
    )
    assert [e.gold_id for e in built.examples] == ["p4"] or [e.gold_id for e in built.examples] == ["p5"]
    assert built.dropped == {
        "empty query": 1,
        "query too short": 1,
        "query copied from the passage": 2,
        "duplicate query": 1,
    }
    assert copied_verbatim(passages[2].title, passages[2])
    example = built.examples[0]
    assert corpus[example.gold_id].text.startswith(example.target)


def test_generated_examples_give_short_titled_passages_their_title_and_generate_for_the_rest():
    corpus = make_corpus(4)
    corpus["rec"] = Document("rec", "Aruba - Population", "total: 125,063 (2024 est.). male: 59,101")
    corpus["untitled"] = Document("untitled", "", "one sentence only, with no title to use")
    asked: list[list[str]] = []

    def generate(docs):
        asked.append([d.doc_id for d in docs])
        return [f"what do we know about the {d.doc_id} passage here" for d in docs]

    built = build_generated_examples(corpus, CorpusExampleSettings(recipe="genq", max_passages=10), generate)
    # The record's title is its query; only the others reach the generator (the untitled one too).
    assert sorted(asked[0]) == ["p0", "p1", "p2", "p3", "untitled"]
    title_example = next(e for e in built.examples if e.query_id.startswith("title-"))
    assert title_example.query == "Aruba - Population"
    assert (
        built.source_of[title_example.gold_id] == "rec" and built.derived[title_example.gold_id].title == ""
    )
    assert len(built.examples) == 6
    asked.clear()
    every = build_generated_examples(
        corpus, CorpusExampleSettings(recipe="genq", max_passages=10, short_passage_titles=False), generate
    )
    assert "rec" in asked[0] and not any(e.query_id.startswith("title-") for e in every.examples)


def test_pseudo_gold_replaces_its_source_and_is_forced_in_when_missing():
    examples = [TrainingExample("q1", "t", gold_id="a#ict0"), TrainingExample("q2", "t", gold_id="b#ict0")]
    source_of = {"a#ict0": "a", "b#ict0": "b"}
    ranked = [["x", "a", "y", "z"], ["x", "y", "z", "w"]]
    forced = with_pseudo_gold(examples, ranked, source_of, k=3, force=True, seed=0)
    assert forced[0].candidate_ids == ["x", "a#ict0", "y"]
    assert "b#ict0" in forced[1].candidate_ids and len(forced[1].candidate_ids) == 3
    assert set(forced[1].candidate_ids) - {"b#ict0"} <= {"x", "y"}
    free = with_pseudo_gold(examples, ranked, source_of, k=3, force=False, seed=0)
    assert free[1].candidate_ids == ["x", "y", "z"]


def test_pseudo_gold_success_counts_ranks_with_the_derived_passage_standing_in():
    docs = np.eye(4, dtype=np.float32)
    queries = np.array([[1, 0.1, 0, 0], [0, 0, 0.2, 1], [0.9, 1, 0, 0]], dtype=np.float32)
    # Query 0's gold is row 0 (rank 0); query 1's gold row 2, beaten by row 3 (rank 1); query 2's gold is
    # row 0 but its derived passage points elsewhere (rank 3).
    golds = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float32)
    assert pseudo_gold_success(queries, docs, [0, 2, 0], golds, k=1) == {"success@1": 1 / 3, "mrr@1": 1 / 3}
    result = pseudo_gold_success(queries, docs, [0, 2, 0], golds, k=2)
    assert result == pytest.approx({"success@2": 2 / 3, "mrr@2": (1 + 0.5) / 3})


def test_no_training_example_shares_a_passage_with_a_held_out_one():
    examples = [TrainingExample(query=f"q{i}", target="t", gold_id=f"p{i % 3}-derived{i}") for i in range(9)]
    source_of = {e.gold_id: e.gold_id.split("-")[0] for e in examples}
    validation, train = split_by_source(examples, source_of, 2)
    assert validation == examples[:2]
    held_out = {source_of[e.gold_id] for e in validation}
    assert held_out == {"p0", "p1"}
    assert [e.query for e in train] == ["q2", "q5", "q8"]


def _adapt_args(tmp_path, tiny_bert_dir, tiny_llama_dir, **overrides) -> AdaptArguments:
    settings = dict(
        corpus=str(tmp_path / "corpus"),
        out=str(tmp_path / "out"),
        retriever=tiny_bert_dir,
        llm=tiny_llama_dir,
        recipe="ict",  # a tiny random LLM writes no usable query; genq runs with a stand-in generator below
        max_passages=30,
        validation_examples=6,
        head_examples=4,
        num_heads=2,
        num_candidates=4,
        max_steps=4,
        batch_size=2,
        validate_every=2,
        threads=1,
        show_progress=False,
        precision="float32",
    )
    settings.update(overrides)
    return AdaptArguments(**settings)


def test_adapt_end_to_end_reads_only_the_corpus_and_resumes(tmp_path, tiny_bert_dir, tiny_llama_dir):
    write_corpus(tmp_path / "corpus", make_corpus(30))
    # Queries and qrels next to the corpus are never read: unreadable ones change nothing.
    (tmp_path / "corpus" / "queries.jsonl").write_text("not json\n")
    (tmp_path / "corpus" / "qrels").mkdir()
    args = _adapt_args(tmp_path, tiny_bert_dir, tiny_llama_dir)
    report = adapt(args)
    out = tmp_path / "out"
    assert (out / "model" / "modules.json").exists() and (out / "curves.png").exists()
    assert report["examples"]["train"] == 24 and report["examples"]["validation"] == 6
    assert set(report["validation"]["by_step"]) == {2, 4}
    log = [json.loads(line) for line in (out / "work" / "train" / "log.jsonl").open()]
    assert {"val_success@10", "val_mrr@10", "val_title_success@10"} <= set(log[1])
    assert 0 <= report["validation"]["best"] <= 1 and report["steps"] == 4
    assert json.loads((out / "work" / "heads.json").read_text())["settings"]["method"] == "qrhead-pseudo-gold"
    assert "validation" in (out / "report.md").read_text()
    rates, seconds = report["throughput"], report["stage_seconds"]
    assert rates["steps_per_s"] == pytest.approx(4 / seconds["training"], rel=1e-12)
    # In-batch candidates (the default): each query reads both queries' 4 candidates, deduplicated (each
    # query's own pseudo-gold is a derived passage, so the pool holds more than one query's 4).
    pools = [row["pool_size"] for row in log if "pool_size" in row]
    assert len(pools) == 4 and all(4 < pool <= 8 for pool in pools)
    assert rates["candidates_per_s"] == pytest.approx(rates["steps_per_s"] * 2 * np.mean(pools), rel=1e-12)
    assert rates["passages_per_s_examples"] == pytest.approx(30 / seconds["examples"], rel=1e-12)
    assert report["search"] is None  # ict: the pseudo-gold is not a corpus passage
    # The injected heads' share of the source passage, before and after, next to the checkpoints.
    picture = out / "work" / "train" / "head_attention.png"
    assert report["head_attention"] == str(picture) and (out / "work" / "train" / "checkpoints").is_dir()
    shares = json.loads(picture.with_suffix(".json").read_text())
    assert len(shares["heads"]) == 2 and set(shares["injected"]) == {"before", "after"}
    # The export's model card is built from the report beside the model.
    from dreamir.export import ExportArguments, export_model

    card = (
        export_model(ExportArguments(model=str(out / "model"), out=str(tmp_path / "export"))) / "README.md"
    ).read_text()
    assert "objective: dream" in card and "label-free adaptation" in card and "steps: 4 of 2" in card
    assert "checkpoint kept: the last of a fixed schedule, step 4" in card
    train = read_training_file(out / "work" / "train.jsonl")
    assert all(e.gold_id in e.candidate_ids for e in train)
    # Finished stages are reused: a second run trains nothing and reports the same.
    log_lines = (out / "work" / "train" / "log.jsonl").read_text()
    again = adapt(args)
    assert again["validation"] == report["validation"]
    assert "steps_per_s" not in again["throughput"]  # no step was run this time
    assert (out / "work" / "train" / "log.jsonl").read_text() == log_lines


def test_a_checkpoint_from_before_dream_candidates_existed_counts_as_own_candidates():
    """The default became "batch" after the option was added with "own": an older checkpoint lacks the
    setting, and a resume must take it for what it trained with, not for today's default."""
    from dreamir.adapt.arguments import run_setting_defaults, run_settings
    from dreamir.checkpoints import settings_differences, with_defaults

    default = AdaptArguments(corpus="c", out="o")
    assert default.dream_candidates == "batch"
    older = {k: v for k, v in run_settings(default).items() if k != "dream_candidates"}
    filled = with_defaults(older, run_setting_defaults(default))
    assert settings_differences(filled, run_settings(default)) == [
        "dream_candidates: checkpoint 'own', now 'batch'"
    ]
    own = AdaptArguments(corpus="c", out="o", dream_candidates="own")
    assert settings_differences(filled, run_settings(own)) == []


def test_a_checkpoint_from_before_adapt_had_lora_counts_as_all_weights():
    """LoRA became adapt's default after runs that trained all weights lacked the setting: a resume of one
    must take it for all weights, and the learning rate each run recorded is kept."""
    from dreamir.adapt.arguments import run_setting_defaults, run_settings
    from dreamir.checkpoints import settings_differences, with_defaults

    default = AdaptArguments(corpus="c", out="o")
    assert default.lora and default.learning_rate == 2e-4
    all_weights = AdaptArguments(corpus="c", out="o", lora=False)
    assert all_weights.learning_rate == 2e-5
    assert AdaptArguments(corpus="c", out="o", lora=False, learning_rate=1e-5).learning_rate == 1e-5
    older = {k: v for k, v in run_settings(all_weights).items() if k != "lora"}
    filled = with_defaults(older, run_setting_defaults(default))
    assert settings_differences(filled, run_settings(all_weights)) == []
    assert "lora: checkpoint False, now True" in settings_differences(filled, run_settings(default))


def test_adapt_keeps_the_validated_checkpoint_after_a_fall_and_what_keep_names_otherwise(
    tmp_path, tiny_bert_dir, tiny_llama_dir, monkeypatch
):
    from safetensors.torch import load_file

    from dreamir.adapt.validation import PseudoGoldValidator

    # A validation that only falls: the best checkpoint stays the starting retriever, the last one is trained.
    measure, falling = PseudoGoldValidator.measure, iter([0.9, 0.8, 0.7])

    def falling_measure(self):
        score = next(falling)
        return {**measure(self), "val_success@10": score, "val_mrr@10": score}

    monkeypatch.setattr(PseudoGoldValidator, "measure", falling_measure)
    write_corpus(tmp_path / "corpus", make_corpus(30))
    args = _adapt_args(tmp_path, tiny_bert_dir, tiny_llama_dir)
    report = adapt(args)  # --keep auto
    out, train_dir = tmp_path / "out", tmp_path / "out" / "work" / "train"
    weights = lambda directory: load_file(directory / "model.safetensors")  # noqa: E731
    last, best = weights(train_dir / "final"), weights(train_dir / "best")
    assert any(not torch.equal(last[name], best[name]) for name in last)
    assert report["validation"] | {"by_step": None} == {
        "metric": "val_success@10",
        "start": 0.9,
        "best": 0.9,
        "best_step": 0,
        "keep": "auto",
        "kept": "best",
        "kept_step": 0,
        "by_step": None,
    }
    written = weights(out / "model")
    assert all(torch.equal(written[name], best[name]) for name in best)
    said = (out / "report.md").read_text()
    assert "best 0.900 at step 0; it ended below its start (0.700), so its best is kept" in said
    # Which checkpoint is written changes no training: each --keep reuses it.
    log = (train_dir / "log.jsonl").read_text()
    again = adapt(dataclasses.replace(args, keep="last"))
    assert (train_dir / "log.jsonl").read_text() == log
    assert again["validation"]["kept"] == "last" and again["validation"]["kept_step"] == 4
    written = weights(out / "model")
    assert all(torch.equal(written[name], last[name]) for name in last)
    said = (out / "report.md").read_text()
    assert "best 0.900 at step 0 (advice only); kept: the last checkpoint, step 4" in said
    assert "Warning: the validation ended below its start (0.700)" in said
    again = adapt(dataclasses.replace(args, keep="best"))
    assert again["validation"]["kept"] == "best" and again["validation"]["kept_step"] == 0
    assert all(torch.equal(weights(out / "model")[name], best[name]) for name in best)
    assert "best 0.900 at step 0 (kept)" in (out / "report.md").read_text()


def test_auto_keeps_the_last_checkpoint_unless_the_validation_ended_below_its_start():
    from dreamir.adapt.pipeline import kept_checkpoint

    assert kept_checkpoint("auto", 0.30, 0.31) == "last"
    assert kept_checkpoint("auto", 0.30, 0.30) == "last"  # level is no fall
    assert kept_checkpoint("auto", 0.30, 0.29) == "best"
    assert kept_checkpoint("auto", 0.30, None) == "last"  # no validation at the last step
    assert kept_checkpoint("last", 0.30, 0.10) == "last" and kept_checkpoint("best", 0.30, 0.9) == "best"


def test_adapt_end_to_end_with_generated_queries(tmp_path, tiny_bert_dir, tiny_llama_dir, monkeypatch):
    import dreamir.llm.generate

    corpus = make_corpus(30)
    corpus["rec"] = Document("rec", "Aruba - Population", "total: 125,063 (2024 est.). male: 59,101")
    write_corpus(tmp_path / "corpus", corpus)
    made_for: list[str] = []

    class StandInGenerator:  # a query naming its passage, as a real generator's would
        def __init__(self, llm, settings, show_progress=True):
            assert llm == tiny_llama_dir and settings.seed == 0

        def __call__(self, passages):
            made_for.extend(p.doc_id for p in passages)
            return [f"which facts are recorded about item {p.doc_id} here" for p in passages]

    monkeypatch.setattr(dreamir.llm.generate, "QueryGenerator", StandInGenerator)
    report = adapt(_adapt_args(tmp_path, tiny_bert_dir, tiny_llama_dir, recipe="genq", max_passages=31))
    examples = report["examples"]
    assert examples["recipe"] == "genq" and examples["passages_sampled"] == 31
    assert examples["examples"] == 31 and examples["title_queries"] == 1 and "rec" not in made_for
    assert examples["train"] == 25 and report["steps"] == 4
    train = read_training_file(tmp_path / "out" / "work" / "train.jsonl")
    generated = [e for e in train if e.query_id.startswith("genq-")]
    assert generated and all(e.query.endswith(f"item {e.gold_id} here") for e in generated)
    assert all(e.gold_id in e.candidate_ids for e in train)
    assert (tmp_path / "out" / "model" / "modules.json").exists()
    # The report's search rows: BM25, base, adapted and both fused, on the held-out generated queries.
    search = report["search"]
    validation_ids = [e.gold_id for e in read_training_file(tmp_path / "out" / "work" / "validation.jsonl")]
    assert set(search["systems"]) == {"bm25", "base", "adapted", "bm25+base", "bm25+adapted"}
    # Five held-out generated queries; the sixth held-out example is the titled record's title, whose
    # pseudo-gold (the untitled passage) is not a corpus passage, so it is left out.
    assert search["queries"] == 5 and search["passages"] == 31
    # The base row, from ranked hit lists, equals the validation's own rank count on the same encodings
    # (each held-out example has its own passage, and those passages come first among the searched ones).
    start = np.load(tmp_path / "out" / "work" / "train" / "validation_step0.npz")
    kept = [i for i, gold in enumerate(validation_ids) if gold in corpus]  # the record's gold is derived
    assert len(kept) == 5
    expected = pseudo_gold_success(start["queries"][kept], start["docs"], kept, start["golds"][kept])
    assert search["systems"]["base"]["success@10"] == pytest.approx(expected["success@10"], rel=1e-12)
    assert search["systems"]["base"]["mrr@10"] == pytest.approx(expected["mrr@10"], rel=1e-12)
    # The adapted row is the model adapt wrote, by default the last checkpoint: the last validation's encodings.
    last = np.load(tmp_path / "out" / "work" / "train" / "last_encodings.npz")
    expected = pseudo_gold_success(last["queries"][kept], last["docs"], kept, last["golds"][kept])
    assert search["systems"]["adapted"]["mrr@10"] == pytest.approx(expected["mrr@10"], rel=1e-12)
    assert "| bm25+adapted |" in (tmp_path / "out" / "report.md").read_text()


def test_adapt_generates_with_its_generator_and_judges_with_its_llm(
    tmp_path, tiny_bert_dir, tiny_llama_dir, monkeypatch
):
    import dreamir.llm.generate

    write_corpus(tmp_path / "corpus", make_corpus(30))
    generators: list[str] = []

    class StandInGenerator:
        def __init__(self, llm, settings, show_progress=True):
            generators.append(llm)

        def __call__(self, passages):
            return [f"which facts are recorded about item {p.doc_id} here" for p in passages]

    monkeypatch.setattr(dreamir.llm.generate, "QueryGenerator", StandInGenerator)
    writer = str(tmp_path / "another-llm")  # never loaded: the stand-in only records its name
    args = _adapt_args(
        tmp_path, tiny_bert_dir, tiny_llama_dir, recipe="genq", max_passages=31, generator=writer
    )
    report = adapt(args)
    assert generators == [writer]
    assert report["settings"]["generator"] == writer and report["settings"]["llm"] == tiny_llama_dir
    assert json.loads((tmp_path / "out" / "work" / "heads.json").read_text())["model"] == tiny_llama_dir


def test_adapt_refreshes_candidates_with_the_retriever(tmp_path, tiny_bert_dir, tiny_llama_dir):
    write_corpus(tmp_path / "corpus", make_corpus(30))
    args = _adapt_args(
        tmp_path, tiny_bert_dir, tiny_llama_dir, objective="infonce", refresh_every=2, refresh_after=2
    )
    adapt(args)
    refreshed = tmp_path / "out" / "work" / "train" / "candidates" / "candidates-step-000002.jsonl"
    examples = read_training_file(refreshed)
    bm25 = read_training_file(tmp_path / "out" / "work" / "train.jsonl")
    assert len(examples) == len(bm25)
    assert all(e.gold_id in e.candidate_ids and len(e.candidate_ids) == 4 for e in examples)
    assert [e.candidate_ids for e in examples] != [e.candidate_ids for e in bm25]
    log = [json.loads(line) for line in (tmp_path / "out" / "work" / "train" / "log.jsonl").open()]
    assert "refresh_pseudo_gold_found" in log[1]


@pytest.mark.parametrize("layout", ["parallel", "sequential"])
def test_adapt_in_either_layout_keeps_no_document_cache_on_disk(
    tmp_path, tiny_bert_dir, tiny_llama_dir, layout
):
    write_corpus(tmp_path / "corpus", make_corpus(30))
    args = _adapt_args(tmp_path, tiny_bert_dir, tiny_llama_dir, document_layout=layout, precision="float32")
    report = adapt(args)
    work = tmp_path / "out" / "work"
    assert report["steps"] == 4 and (tmp_path / "out" / "model" / "modules.json").exists()
    log = [json.loads(line) for line in (work / "train" / "log.jsonl").open()]
    assert all(math.isfinite(entry["loss"]) for entry in log if "loss" in entry)
    # By default (--document-cache-gb 0) keys and values stay in memory: nothing written to disk.
    assert not [p for p in work.rglob("*") if "document_cache" in p.parts or p.name.startswith("shard-")]
    if layout == "parallel":
        cache = report["document_cache"]
        assert cache["bound_gb"] is None and cache["disk_gb"] == 0 and cache["built"] > 0
        assert "kept in memory only" in (tmp_path / "out" / "report.md").read_text()
    else:
        assert report["document_cache"] is None


def test_adapt_with_a_bounded_disk_cache_trains_the_same_model_within_the_bound(
    tmp_path, tiny_bert_dir, tiny_llama_dir
):
    """Keys and values kept on disk (float32, exact) train the very model memory-only does; the directory
    stays within its bound, one shard aside; the report says what was read, found and dropped."""
    write_corpus(tmp_path / "corpus", make_corpus(30))
    plain = adapt(_adapt_args(tmp_path, tiny_bert_dir, tiny_llama_dir, out=str(tmp_path / "plain")))
    bound_gb = 2e-5  # 20 kB: a few of the tiny LLM's passages, so the bound is reached and shards dropped
    cached = adapt(
        _adapt_args(
            tmp_path, tiny_bert_dir, tiny_llama_dir, out=str(tmp_path / "disk"), document_cache_gb=bound_gb
        )
    )
    shards = list((tmp_path / "disk" / "work" / "document_cache").rglob("shard-*.safetensors"))
    largest = max(p.stat().st_size for p in shards)
    assert sum(p.stat().st_size for p in shards) <= bound_gb * 1e9 + largest
    record = cached["document_cache"]
    assert record["bound_gb"] == bound_gb and record["evicted_shards"] > 0
    assert (
        record["built"] + record["found"]
        == plain["document_cache"]["built"] + plain["document_cache"]["found"]
    )
    assert f"bound {bound_gb:g} GB" in (tmp_path / "disk" / "report.md").read_text()
    trained = Retriever.from_pretrained(tmp_path / "disk" / "model").state_dict()
    for name, value in Retriever.from_pretrained(tmp_path / "plain" / "model").state_dict().items():
        torch.testing.assert_close(trained[name], value, rtol=0, atol=0)


def test_adapt_cli_names_a_missing_corpus(tmp_path, capsys):
    assert main(["adapt", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert "corpus.jsonl" in capsys.readouterr().err


def test_query_generator_is_seeded_batched_and_cleaned(tiny_llama_dir):
    from dreamir.llm.generate import GenerationSettings, QueryGenerator, clean_query

    passages = list(make_corpus(5).values())
    settings = GenerationSettings(max_new_tokens=6, batch_size=2, precision="float32")
    first = QueryGenerator(tiny_llama_dir, settings, show_progress=False)(passages)
    again = QueryGenerator(tiny_llama_dir, settings, show_progress=False)(passages)
    assert len(first) == 5 and first == again
    assert all("\n" not in query for query in first)
    assert clean_query('\n Query: "rivers of france"\nmore') == "rivers of france"


def test_query_generator_samples_reproducibly_and_a_tiny_nucleus_is_greedy(tiny_llama_dir):
    from dreamir.llm.generate import GenerationSettings, QueryGenerator

    passages = list(make_corpus(4).values())

    def write(**sampling):
        settings = GenerationSettings(max_new_tokens=6, batch_size=2, precision="float32", **sampling)
        return QueryGenerator(tiny_llama_dir, settings, show_progress=False)(passages)

    sampled = write(temperature=0.7, top_p=0.9)
    assert sampled == write(temperature=0.7, top_p=0.9)
    # a nucleus too small for any second token keeps only the most likely one: greedy decoding
    assert write(temperature=0.7, top_p=1e-9) == write(temperature=0.0)


def test_query_generator_shows_its_worked_examples_before_the_passage(tiny_llama_dir):
    from dreamir.llm.generate import DEFAULT_QUERY_EXAMPLES, GenerationSettings, QueryGenerator

    passage = next(iter(make_corpus(1).values()))
    with_examples = QueryGenerator(
        tiny_llama_dir, GenerationSettings(precision="float32"), show_progress=False
    )
    prompt = with_examples._prompt(passage).lower()  # the tiny test tokenizer lower-cases the passage
    example_passage, example_query = DEFAULT_QUERY_EXAMPLES[0]
    # a worked example comes before the passage, its query as the assistant's reply
    position = prompt.index
    assert (
        position(example_passage[:40].lower()) < position(example_query) < position(passage.text[:30].lower())
    )
    assert prompt.count("passage:") == len(DEFAULT_QUERY_EXAMPLES) + 1
    bare = QueryGenerator(
        tiny_llama_dir, GenerationSettings(precision="float32", examples=()), show_progress=False
    )
    assert bare._prompt(passage).count("Passage:") == 1


def test_query_examples_file_is_read_and_its_errors_name_line_and_field(tmp_path):
    good = tmp_path / "shots.jsonl"
    good.write_text(
        json.dumps({"passage": "Aspirin. Aspirin lowers fever.", "query": "does aspirin lower fever"})
        + "\n\n",
        encoding="utf-8",
    )
    assert read_query_examples(good) == (("Aspirin. Aspirin lowers fever.", "does aspirin lower fever"),)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"passage": "x", "query": "y"}) + "\n" + json.dumps({"passage": "x"}) + "\n")
    with pytest.raises(DataFormatError, match=r"bad.jsonl:2: field 'query': missing"):
        read_query_examples(bad)
    typo = tmp_path / "typo.jsonl"
    typo.write_text(json.dumps({"passage": "x", "querry": "y"}) + "\n")
    with pytest.raises(DataFormatError, match=r"typo.jsonl:1: field 'querry': unknown field"):
        read_query_examples(typo)


def test_adapt_cli_names_the_bad_line_of_a_query_examples_file(tmp_path, capsys):
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    write_corpus(corpus_dir, make_corpus(10))
    shots = tmp_path / "shots.jsonl"
    shots.write_text(json.dumps({"passage": "", "query": "y"}) + "\n")
    arguments = ["adapt", str(corpus_dir), "--out", str(tmp_path / "out"), "--recipe", "genq"]
    assert main([*arguments, "--query-examples", str(shots)]) == 2
    assert "shots.jsonl:1: field 'passage': must not be empty" in capsys.readouterr().err
    assert not (tmp_path / "out" / "work" / "examples.json").exists()


@pytest.mark.parametrize("model", ["llama", "gemma3 window 6", "gemma3 window 128"])
def test_query_generator_continuing_the_shared_prefix_equals_generating_each_prompt_whole(
    model, tiny_llama_dir, tmp_path
):
    """Also for sliding-window attention layers (Gemma 3's), with a window shorter than every prompt
    (6 tokens) and one longer (128)."""
    import torch

    from dreamir.llm.generate import GenerationSettings, QueryGenerator

    if model == "llama":
        directory = tiny_llama_dir
    else:
        directory = make_tiny_gemma3(tmp_path / "gemma3", sliding_window=int(model.split()[-1]))
    settings = GenerationSettings(max_new_tokens=8, batch_size=4, precision="float32")
    generator = QueryGenerator(directory, settings, show_progress=False)
    words = ["the", "river", "city", "mountain", "country", "moon", "fire", "water", "people", "language"]
    # passages of different lengths, so that a batch pads its shorter suffixes
    passages = [Document(f"d{n}", f"title {n}", " ".join(words[: 2 + 2 * n]) + ".") for n in range(4)]
    head, tail = generator._render_around_passage()
    shared_text = head.rstrip(" ")
    tokenize = generator.tokenizer
    shared = tokenize(shared_text, add_special_tokens=False)["input_ids"]
    suffixes = [
        tokenize(head[len(shared_text) :] + generator._passage_text(p) + tail, add_special_tokens=False)[
            "input_ids"
        ]
        for p in passages
    ]
    assert len({len(s) for s in suffixes}) == 4
    with torch.no_grad():
        shared_cache = generator._read_shared_prefix(torch.tensor([shared]))
        batched = generator._continue(len(shared), shared_cache, suffixes)
        assert all(len(reply) > 1 for reply in batched)
        for suffix, reply in zip(suffixes, batched, strict=True):
            whole = generator.model.generate(
                input_ids=torch.tensor([shared + suffix]),
                attention_mask=torch.ones(1, len(shared) + len(suffix), dtype=torch.long),
                max_new_tokens=len(reply),
                min_new_tokens=len(reply),
                do_sample=False,
                pad_token_id=tokenize.pad_token_id,
            )[0, len(shared) + len(suffix) :].tolist()
            assert reply == whole


def test_generated_queries_are_written_only_for_the_passages_the_budget_reads():
    budget = dict(corpus="c", out="o", max_steps=10, batch_size=4, validation_examples=20)
    # 10 steps of 4 and 20 held out: 60 examples, a fifth more for dropped queries
    assert AdaptArguments(recipe="genq", **budget).passages_to_sample() == 72
    assert AdaptArguments(recipe="genq", examples_per_passage=2, **budget).passages_to_sample() == 36
    assert AdaptArguments(recipe="ict", **budget).passages_to_sample() == 1000
    assert AdaptArguments(recipe="genq", max_passages=50, **budget).passages_to_sample() == 50


def test_the_seed_changes_the_sampled_passages_the_held_out_split_and_the_training_order(
    tmp_path, tiny_bert_dir, tiny_llama_dir
):
    """benchmarks/adapt.py --seeds relies on it: each seed is another sample, split and order."""
    from dreamir.data.sampling import example_order

    write_corpus(tmp_path / "corpus", make_corpus(40))
    runs = {}
    for seed in (0, 1):

        class Seen:  # what the trainer was built with
            def on_train_begin(self, trainer):
                self.seed = trainer.args.seed
                self.order = example_order(len(trainer.examples), trainer.args.seed, 0)
                self.examples = [e.query_id for e in trainer.examples]

            def on_step_end(self, trainer):
                return {}

        seen = Seen()
        out = tmp_path / f"seed{seed}"
        args = _adapt_args(
            tmp_path, tiny_bert_dir, tiny_llama_dir, out=str(out), objective="infonce", max_steps=2, seed=seed
        )
        adapt(args, [seen])
        validation = read_training_file(out / "work" / "validation.jsonl")
        runs[seed] = {
            "passages": {json.loads(line)["source"] for line in (out / "work" / "derived.jsonl").open()},
            "validation": [e.query_id for e in validation],
            "seen": seen,
        }
        assert seen.seed == seed
    # 30 of 40 passages sampled: another seed, another sample.
    assert runs[0]["passages"] != runs[1]["passages"]
    assert runs[0]["validation"] != runs[1]["validation"]
    first, second = runs[0]["seen"], runs[1]["seen"]
    assert [first.examples[i] for i in first.order] != [second.examples[i] for i in second.order]


def test_adapt_warns_when_the_held_out_examples_outnumber_the_training_ones(
    tmp_path, tiny_bert_dir, tiny_llama_dir, capsys
):
    write_corpus(tmp_path / "corpus", make_corpus(30))
    args = _adapt_args(tmp_path, tiny_bert_dir, tiny_llama_dir, validation_examples=18, max_steps=1)
    report = adapt(args)
    assert report["examples"]["train"] < report["examples"]["validation"] == 18
    printed = capsys.readouterr().out
    assert f"fewer training examples ({report['examples']['train']}) than held-out ones (18)" in printed
    assert "lower --validation-examples" in printed


def test_adapt_with_the_query_as_target_asks_the_llm_for_the_query_from_the_candidates_alone(
    tmp_path, tiny_bert_dir, tiny_llama_dir
):
    """--target-text query: the same examples, each training target replaced by its query, and the frozen
    LLM's prompt holds no question; the stages before training are shared with the default's."""
    from dreamir.llm.prompt import QUERY_TARGET_INSTRUCTION

    write_corpus(tmp_path / "corpus", make_corpus(30))

    class Seen:
        def on_train_begin(self, trainer):
            self.pairs = [(e.query, e.target) for e in trainer.examples]
            self.prompt = trainer.objective.llm.prompt

        def on_step_end(self, trainer):
            return {}

    seen = {}
    for target_text in ("passage", "query"):
        seen[target_text] = Seen()
        out = tmp_path / target_text
        adapt(
            _adapt_args(
                tmp_path, tiny_bert_dir, tiny_llama_dir, out=str(out), target_text=target_text, max_steps=2
            ),
            [seen[target_text]],
        )
    passage, query = seen["passage"], seen["query"]
    assert passage.prompt.show_query and not query.prompt.show_query
    assert query.prompt.instruction == QUERY_TARGET_INSTRUCTION != passage.prompt.instruction
    assert [q for q, _ in query.pairs] == [q for q, _ in passage.pairs]
    assert all(target == q for q, target in query.pairs)
    assert any(target != q for q, target in passage.pairs)
    # The example and head stages are the same files: only the training differs.
    for name in ("train.jsonl", "heads.json"):
        assert (tmp_path / "query" / "work" / name).read_text() == (
            tmp_path / "passage" / "work" / name
        ).read_text()
