"""DREAM objective and trainer on a tiny BERT retriever and a tiny Llama."""

import json

import pytest
import torch

from dreamir.data.beir import Document
from dreamir.data.sampling import SamplingArguments
from dreamir.data.training import TrainingExample
from dreamir.llm.frozen import FrozenLLM
from dreamir.objectives import DreamLoss, TrainingInstance
from dreamir.retriever import Retriever, RetrieverConfig
from dreamir.trainer import Trainer, TrainingArguments

CORPUS = {
    f"d{i}": Document(f"d{i}", title, text)
    for i, (title, text) in enumerate(
        [
            ("france", "paris is the capital of france"),
            ("germany", "berlin is the capital of germany"),
            ("italy", "rome is the capital of italy"),
            ("spain", "madrid is the capital of spain"),
            ("river", "the river is in the north"),
            ("moon", "the moon and the sun"),
        ]
    )
}
EXAMPLES = [
    TrainingExample("what is the capital of france?", "paris", ["d0", "d1", "d4"], gold_id="d0"),
    TrainingExample("what is the capital of spain?", "madrid", ["d3", "d2", "d5"], gold_id="d3"),
    TrainingExample("what is the capital of italy?", "rome", ["d2", "d0", "d4", "d5"], gold_id="d2"),
]


def _objective(bert_dir, llama_dir, **kwargs):
    torch.manual_seed(0)
    retriever = Retriever.from_pretrained(bert_dir, RetrieverConfig(pooling="mean", max_length=32))
    llm = FrozenLLM.from_pretrained(llama_dir, heads=[(0, 1), (1, 2)])
    return DreamLoss(retriever, llm, **kwargs)


def test_gradients_reach_the_retriever_and_never_the_llm(tiny_bert_dir, tiny_llama_dir):
    objective = _objective(tiny_bert_dir, tiny_llama_dir)
    llm_before = {n: p.clone() for n, p in objective.llm.named_parameters()}
    instances = [TrainingInstance(e.query, e.target, [CORPUS[i] for i in e.candidate_ids]) for e in EXAMPLES]
    output = objective(instances)
    assert torch.isfinite(output.loss)
    output.loss.backward()
    retriever_grads = [p.grad for p in objective.retriever.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in retriever_grads)
    assert all(p.grad is None for p in objective.llm.parameters())
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=1e-2)
    optimizer.step()
    for name, param in objective.llm.named_parameters():
        torch.testing.assert_close(param, llm_before[name], rtol=0, atol=0)


def test_learnable_temperature_receives_a_gradient(tiny_bert_dir, tiny_llama_dir):
    objective = _objective(tiny_bert_dir, tiny_llama_dir, learn_temperature=True, temperature=0.5)
    instances = [
        TrainingInstance(e.query, e.target, [CORPUS[i] for i in e.candidate_ids]) for e in EXAMPLES[:2]
    ]
    objective(instances).loss.backward()
    assert objective.temperature.log_tau.grad is not None and objective.temperature.log_tau.grad != 0


def test_dream_needs_heads(tiny_bert_dir, tiny_llama_dir):
    retriever = Retriever.from_pretrained(tiny_bert_dir)
    with pytest.raises(ValueError, match="head"):
        DreamLoss(retriever, FrozenLLM.from_pretrained(tiny_llama_dir))


class _Crash(RuntimeError):
    pass


class _CrashingTrainer(Trainer):
    """Dies in the middle of the given step, as a killed process would."""

    crash_at: int | None = None

    def _optimizer_step(self):
        if self.step + 1 == self.crash_at:
            raise _Crash
        return super()._optimizer_step()


def _train(tmp_path, bert, llama, max_steps, name="run", crash_at=None):
    objective = _objective(bert, llama)
    args = TrainingArguments(
        output_dir=str(tmp_path / name),
        max_steps=max_steps,
        batch_size=2,
        gradient_accumulation_steps=1,
        learning_rate=1e-3,
        warmup_ratio=0.25,
        save_steps=2,
        show_progress=False,
    )
    trainer = _CrashingTrainer(
        objective, EXAMPLES, CORPUS, args, sampling=SamplingArguments(num_candidates=3)
    )
    trainer.crash_at = crash_at
    return objective, trainer.train()


def test_trainer_logs_checkpoints_and_resumes_exactly(tmp_path, tiny_bert_dir, tiny_llama_dir):
    whole, result = _train(tmp_path, tiny_bert_dir, tiny_llama_dir, max_steps=4, name="whole")
    rows = [json.loads(line) for line in result.log_file.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for row in rows:
        assert row["grad_norm"] > 0 and row["step_seconds"] > 0 and row["tau"] == pytest.approx(0.05)
    assert (result.final_dir / "modules.json").exists()

    # Killed during step 4 (checkpoint at 2, step 3 logged but not checkpointed), then resumed.
    with pytest.raises(_Crash):
        _train(tmp_path, tiny_bert_dir, tiny_llama_dir, max_steps=4, name="split", crash_at=4)
    with (tmp_path / "split" / "log.jsonl").open("a") as log:
        log.write('{"step": 4, "loss": 1.0')  # a line cut short by the crash
    resumed, result2 = _train(tmp_path, tiny_bert_dir, tiny_llama_dir, max_steps=4, name="split")
    assert result2.resumed_from == 2
    rows2 = [json.loads(line) for line in result2.log_file.read_text().splitlines()]
    assert [r["step"] for r in rows2] == [1, 2, 3, 4]
    assert [r["loss"] for r in rows2] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    for a, b in zip(whole.retriever.parameters(), resumed.retriever.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_trainer_rejects_examples_without_candidates(tmp_path, tiny_bert_dir, tiny_llama_dir):
    objective = _objective(tiny_bert_dir, tiny_llama_dir)
    with pytest.raises(ValueError, match="candidate_ids"):
        Trainer(objective, [TrainingExample("q", "a")], CORPUS, TrainingArguments(output_dir=str(tmp_path)))


@pytest.mark.parametrize("example_index", range(len(EXAMPLES)))
def test_dream_moves_retriever_mass_to_the_document_the_llm_prefers(
    example_index, tiny_bert_dir, tiny_llama_dir
):
    """Planted task: the candidate whose one-hot injection gives the frozen LLM its lowest target loss is
    the one DREAM must learn to rank first, whatever the labels say (none are used)."""
    objective = _objective(tiny_bert_dir, tiny_llama_dir, temperature=0.5)
    objective.retriever.eval()  # no dropout, so that the fixed batch is a deterministic function
    example = EXAMPLES[example_index]
    instance = TrainingInstance(example.query, example.target, [CORPUS[i] for i in example.candidate_ids])
    k = len(instance.documents)
    llm = objective.llm
    batch = llm.collate(
        [llm.encode(instance.query, [(d.title, d.text) for d in instance.documents], instance.target)]
    )
    with torch.no_grad():
        one_hot_losses = torch.stack([llm.target_loss(batch, torch.eye(k)[[i]]) for i in range(k)])
    preferred = int(one_hot_losses.argmin())

    def preferred_probability() -> float:
        with torch.no_grad():
            scores, mask = objective.candidate_scores([instance])
            return float(objective.candidate_distribution(scores, mask)[0, preferred])

    before = preferred_probability()
    optimizer = torch.optim.Adam([p for p in objective.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(15):
        optimizer.zero_grad()
        objective([instance]).loss.backward()
        optimizer.step()
    after = preferred_probability()
    assert after > before + 0.05, (one_hot_losses.tolist(), before, after)
    assert after > 0.5
