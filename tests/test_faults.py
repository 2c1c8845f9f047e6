"""Faults a user can cause or suffer: diverging runs, kills, corrupt checkpoints, changed settings and
broken input files. Nothing must be lost, and a broken run must never look like a good one."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from dreamir.cli import main
from dreamir.guards import NonFiniteError
from dreamir.objectives import InfoNCELoss
from dreamir.retriever import Retriever, RetrieverConfig
from dreamir.trainer import CHECKPOINTS, STATE_FILE, Trainer, TrainingArguments
from tests.test_dream_objective import CORPUS, EXAMPLES


def _objective(bert_dir: str, temperature: float = 0.05) -> InfoNCELoss:
    torch.manual_seed(0)
    retriever = Retriever.from_pretrained(bert_dir, RetrieverConfig(pooling="mean", max_length=32))
    return InfoNCELoss(retriever, temperature=temperature)


def _args(output_dir: Path, **overrides) -> TrainingArguments:
    settings = {
        "max_steps": 6,
        "batch_size": 2,
        "learning_rate": 1e-3,
        "warmup_ratio": 0.25,
        "save_steps": 2,
        "num_candidates": 3,
        "show_progress": False,
    }
    return TrainingArguments(output_dir=str(output_dir), **{**settings, **overrides})


def _train(bert_dir: str, output_dir: Path, temperature: float = 0.05, **overrides):
    objective = _objective(bert_dir, temperature)
    return objective, Trainer(objective, EXAMPLES, CORPUS, _args(output_dir, **overrides)).train()


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
    result = Trainer(objective, EXAMPLES, CORPUS, _args(tmp_path / "run")).train()
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
