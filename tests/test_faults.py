"""Faults a user can cause or suffer: diverging runs, kills, corrupt checkpoints, changed settings and
broken input files. Nothing must be lost, and a broken run must never look like a good one."""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dreamir.checkpoints import CheckpointError, with_defaults
from dreamir.cli import main
from dreamir.data.beir import read_corpus, read_qrels, read_queries
from dreamir.data.errors import DataFormatError
from dreamir.data.sampling import SamplingArguments
from dreamir.data.training import read_training_file
from dreamir.guards import NonFiniteError
from dreamir.llm.heads import HeadSet
from dreamir.objectives import InfoNCELoss
from dreamir.retriever import Retriever, RetrieverConfig
from dreamir.trainer import CHECKPOINTS, STATE_FILE, RetrieverSnapshots, Trainer, TrainingArguments
from tests.test_dream_objective import CORPUS, EXAMPLES


def _objective(bert_dir: str, temperature: float = 0.05) -> InfoNCELoss:
    torch.manual_seed(0)
    retriever = Retriever.from_pretrained(bert_dir, RetrieverConfig(pooling="mean", max_length=32))
    return InfoNCELoss(retriever, temperature=temperature)


SAMPLING = SamplingArguments(num_candidates=3)


def _args(output_dir: Path, **overrides) -> TrainingArguments:
    settings = {
        "max_steps": 6,
        "batch_size": 2,
        "learning_rate": 1e-3,
        "warmup_ratio": 0.25,
        "save_steps": 2,
        "show_progress": False,
    }
    return TrainingArguments(output_dir=str(output_dir), **{**settings, **overrides})


def _train(bert_dir: str, output_dir: Path, temperature: float = 0.05, **overrides):
    objective = _objective(bert_dir, temperature)
    return objective, Trainer(
        objective, EXAMPLES, CORPUS, _args(output_dir, **overrides), sampling=SAMPLING
    ).train()


def _log_rows(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]


# ---- non-finite losses, gradients, weights and embeddings ---------------------------------------------
def test_a_diverging_run_stops_with_a_clear_message_and_saves_no_nonfinite_weights(tmp_path, tiny_bert_dir):
    with pytest.raises(NonFiniteError, match=r"3 steps in a row.*--learning-rate"):
        _train(tiny_bert_dir, tmp_path / "run", learning_rate=1e30)
    assert not (tmp_path / "run" / "final").exists()
    for checkpoint in (tmp_path / "run" / CHECKPOINTS).glob("step-*"):
        state = torch.load(checkpoint / STATE_FILE, weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["parameters"].values())
    skipped = [row.get("skipped", 0) for row in _log_rows(tmp_path / "run")]
    assert skipped[0] == 0 and skipped[-2:] == [1, 1]  # the third, which stops training, is not logged


class _OneNaNStep(InfoNCELoss):
    """Gives a NaN loss on one forward call, as a rare numerical accident would."""

    nan_call = 3
    calls = 0

    def forward(self, instances):
        output = super().forward(instances)
        type(self).calls += 1
        if type(self).calls == self.nan_call:
            output.loss = output.loss * float("nan")
        return output


def test_a_single_nonfinite_step_is_skipped_counted_and_training_goes_on(tmp_path, tiny_bert_dir):
    torch.manual_seed(0)
    retriever = Retriever.from_pretrained(tiny_bert_dir, RetrieverConfig(pooling="mean", max_length=32))
    _OneNaNStep.calls = 0
    objective = _OneNaNStep(retriever, temperature=0.05)
    result = Trainer(objective, EXAMPLES, CORPUS, _args(tmp_path / "run"), sampling=SAMPLING).train()
    assert [row.get("skipped", 0) for row in result.history] == [0, 0, 1, 0, 0, 0]
    assert all(torch.isfinite(p).all() for p in Retriever.load(result.final_dir).parameters())


def test_an_exactly_zero_gradient_is_warned_about(tmp_path, tiny_bert_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="dreamir.guards"):
        _train(tiny_bert_dir, tmp_path / "run", temperature=1e-9, max_steps=2)
    assert "gradient is exactly zero" in caplog.text


def test_eval_refuses_a_model_whose_embeddings_are_not_finite(tmp_path, tiny_bert_dir, capsys):
    retriever = Retriever.from_pretrained(tiny_bert_dir, RetrieverConfig(pooling="mean"))
    with torch.no_grad():
        for parameter in retriever.parameters():
            parameter.fill_(float("nan"))
    retriever.save(tmp_path / "broken")
    beir = tmp_path / "beir"
    beir.mkdir()
    (beir / "corpus.jsonl").write_text(
        "".join(
            json.dumps({"_id": d.doc_id, "title": d.title, "text": d.text}) + "\n" for d in CORPUS.values()
        )
    )
    (beir / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "capital of france"}) + "\n")
    (beir / "qrels").mkdir()
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td0\t1\n")
    argv = ["eval", "--model", str(tmp_path / "broken"), "--beir", str(beir), "--no-show-progress"]
    assert main(argv) == 2
    assert "NaN or infinite" in capsys.readouterr().err


# ---- kills, corrupt checkpoints, changed settings ------------------------------------------------------
class _Killed(BaseException):
    """Stands for a kill: nothing after it runs, nothing catches it."""


class _KilledTrainer(Trainer):
    kill_at: int | None = None  # dies inside this (1-based) step, before it is applied

    def _optimizer_step(self):
        if self.step + 1 == self.kill_at:
            raise _Killed
        return super()._optimizer_step()


def _weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return dict(Retriever.load(output_dir / "final").named_parameters())


@pytest.fixture(scope="module")
def reference(tiny_bert_dir, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The final weights of an uninterrupted run, for exact comparison."""
    output_dir = tmp_path_factory.mktemp("reference")
    _train(tiny_bert_dir, output_dir)
    return _weights(output_dir)


def _assert_same_weights(output_dir: Path, reference: dict[str, torch.Tensor]) -> None:
    weights = _weights(output_dir)
    assert weights.keys() == reference.keys()
    assert all(torch.equal(weights[name], reference[name]) for name in reference)


def _leave_partial_writes(output_dir: Path) -> None:
    """What a kill during an atomic write leaves: hidden half-written siblings."""
    (output_dir / CHECKPOINTS / ".step-000009.kx3" / "step-000009").mkdir(parents=True)
    (output_dir / CHECKPOINTS / ".step-000009.kx3" / "step-000009" / STATE_FILE).write_bytes(b"\x80half")
    (output_dir / ".final.ab1" / "final").mkdir(parents=True)


# Five random kill points (of six steps, checkpoints every two); seeded so a failure can be replayed.
KILL_POINTS = sorted(random.Random(16).sample(range(1, 7), 5))


@pytest.mark.parametrize("kill_at", KILL_POINTS)
def test_kill_and_resume_gives_bit_identical_weights(kill_at, tiny_bert_dir, tmp_path, reference):
    trainer = _KilledTrainer(
        _objective(tiny_bert_dir), EXAMPLES, CORPUS, _args(tmp_path / "run"), sampling=SAMPLING
    )
    trainer.kill_at = kill_at
    with pytest.raises(_Killed):
        trainer.train()
    _leave_partial_writes(tmp_path / "run")
    _, result = _train(tiny_bert_dir, tmp_path / "run")
    assert result.resumed_from == 2 * ((kill_at - 1) // 2)
    assert [row["step"] for row in _log_rows(tmp_path / "run")] == [1, 2, 3, 4, 5, 6]
    _assert_same_weights(tmp_path / "run", reference)
    assert not list((tmp_path / "run").glob(".final.*"))
    assert not list((tmp_path / "run" / CHECKPOINTS).glob(".step-*"))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for offset in range(len(data) // 2, len(data) // 2 + 64):
        data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "truncated": _truncate,
    "empty": lambda path: path.write_bytes(b""),
    "garbage": lambda path: path.write_bytes(b"not a checkpoint at all" * 100),
    "64 flipped bytes": _flip_bytes,
    "missing": lambda path: path.unlink(),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_corrupt_checkpoint_falls_back_to_the_older_one(
    corruption, tiny_bert_dir, tmp_path, reference, caplog
):
    _train(tiny_bert_dir, tmp_path / "run")
    newest = tmp_path / "run" / CHECKPOINTS / "step-000006"
    CORRUPTIONS[corruption](newest / STATE_FILE)
    shutil.rmtree(tmp_path / "run" / "final")  # as if killed while saving it
    with caplog.at_level(logging.WARNING, logger="dreamir.checkpoints"):
        _, result = _train(tiny_bert_dir, tmp_path / "run")
    assert result.resumed_from == 4
    assert "step-000006 skipped" in caplog.text
    _assert_same_weights(tmp_path / "run", reference)


def test_resume_with_other_settings_is_refused_with_the_differences(tiny_bert_dir, tmp_path):
    _train(tiny_bert_dir, tmp_path / "run", max_steps=4)
    recorded = (tmp_path / "run" / "training_args.json").read_text()
    with pytest.raises(
        CheckpointError, match=r"batch_size: checkpoint 2, now 1; training\.seed: checkpoint 0, now 1"
    ):
        _train(tiny_bert_dir, tmp_path / "run", max_steps=4, seed=1, batch_size=1)
    with pytest.raises(CheckpointError, match=r"max_steps: checkpoint 4, now 6"):
        _train(tiny_bert_dir, tmp_path / "run", max_steps=6)
    assert (tmp_path / "run" / "training_args.json").read_text() == recorded  # never records unused settings
    objective = _objective(tiny_bert_dir)
    with pytest.raises(CheckpointError, match="data: the training rows or their passages differ"):
        Trainer(
            objective, EXAMPLES[:2], CORPUS, _args(tmp_path / "run", max_steps=4), sampling=SAMPLING
        ).train()
    _, result = _train(tiny_bert_dir, tmp_path / "run", max_steps=6, allow_longer_run=True)
    assert result.resumed_from == 4 and result.steps == 6


def _flat(settings: dict) -> dict:
    return settings


def _sectioned(settings: dict) -> dict:
    # train_retriever records its settings in sections ("model", "objective"): a default fills a section.
    return {"model": {"lora": False}, "objective": settings}


@pytest.mark.parametrize("layout", [_flat, _sectioned])
def test_a_run_setting_newer_than_the_checkpoint_counts_as_its_default(tiny_bert_dir, tmp_path, layout):
    def train(run_settings: dict, max_steps: int):
        trainer = Trainer(
            _objective(tiny_bert_dir),
            EXAMPLES,
            CORPUS,
            _args(tmp_path / "run", max_steps=max_steps, allow_longer_run=True),
            sampling=SAMPLING,
            run_settings=layout(run_settings),
            run_setting_defaults=layout({"target": "kept"}),
        )
        return trainer.train()

    train({"recipe": "ict"}, max_steps=2)
    # An option added since, left at its default: the run resumes.
    result = train({"recipe": "ict", "target": "kept"}, max_steps=4)
    assert result.resumed_from == 2 and result.steps == 4
    # The same option set to something else: refused, naming it.
    with pytest.raises(CheckpointError, match=r"run\.(objective\.)?target: checkpoint 'kept', now 'removed'"):
        train({"recipe": "ict", "target": "removed"}, max_steps=6)


def test_with_defaults_fills_only_what_the_saved_settings_lack():
    saved = {"a": 1, "section": {"x": 1}}
    defaults = {"a": 0, "b": 2, "section": {"x": 0, "y": 3}, "other": {"z": 4}}
    assert with_defaults(saved, defaults) == {"a": 1, "b": 2, "section": {"x": 1, "y": 3}, "other": {"z": 4}}


# ---- loaders fed random and mutated files --------------------------------------------------------------
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
_fields = st.sampled_from(["_id", "title", "text", "query", "target", "candidate_ids", "gold_id", "query_id"])
_records = st.dictionaries(_fields, _json_values | st.text(min_size=1, max_size=8), max_size=6)
_lines = st.one_of(
    _records.map(lambda record: json.dumps(record).encode()),
    st.binary(max_size=30),
    st.text(max_size=30).map(str.encode),
)
_files = st.lists(_lines, max_size=6).map(lambda lines: b"\n".join(lines))
LOADERS = {
    "corpus": read_corpus,
    "queries": read_queries,
    "qrels": read_qrels,
    "training": read_training_file,
}


@pytest.mark.parametrize("kind", list(LOADERS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=_files)
def test_loaders_return_valid_records_or_raise_the_projects_own_error(kind, content, tmp_path):
    path = tmp_path / f"{kind}.data"
    path.write_bytes(content)
    try:
        loaded = LOADERS[kind](path)
    except DataFormatError as error:
        assert str(path) in str(error)
        return
    if kind == "corpus":
        assert all(isinstance(d.text, str) and d.doc_id for d in loaded.values())
    elif kind == "training":
        assert all(e.query.strip() and e.target.strip() for e in loaded)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=_files, position=st.integers(0, 200), byte=st.integers(0, 255))
def test_head_file_loader_raises_a_value_error_naming_the_file(content, position, byte, tmp_path):
    sound = json.dumps({"model": "m", "heads": [{"layer": 0, "head": 1, "score": 0.5}]}).encode()
    for data in (content, sound[:position] + bytes([byte]) + sound[position + 1 :]):
        path = tmp_path / "heads.json"
        path.write_bytes(data)
        try:
            HeadSet.load(path)
        except ValueError as error:
            assert str(path) in str(error)


def test_snapshots_keep_the_retriever_at_the_steps_asked_and_survive_a_resume(tiny_bert_dir, tmp_path):
    snapshots = RetrieverSnapshots([2, 4, 6], tmp_path / "snapshots")
    snapshots.path(4).mkdir(parents=True)  # as a run interrupted after saving step 4's snapshot left it
    (snapshots.path(4) / "modules.json").write_text("kept")
    objective = _objective(tiny_bert_dir)
    Trainer(
        objective, EXAMPLES, CORPUS, _args(tmp_path / "run"), sampling=SAMPLING, callbacks=[snapshots]
    ).train()
    assert (snapshots.path(4) / "modules.json").read_text() == "kept"
    texts = [doc.full_text for doc in list(CORPUS.values())[:4]]

    def encode(path: Path) -> torch.Tensor:
        return torch.as_tensor(Retriever.from_pretrained(str(path)).eval().encode_documents(texts))

    final = encode(tmp_path / "run" / "final")
    assert torch.equal(encode(snapshots.path(6)), final)
    assert not torch.allclose(encode(snapshots.path(2)), final)
    assert sorted(p.name for p in snapshots.directory.iterdir()) == [f"step-00000{s}" for s in (2, 4, 6)]
