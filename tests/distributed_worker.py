"""One process of a multi-process training run, as `accelerate launch` would start it (the test sets the
process group's environment: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).

    python -m tests.distributed_worker OBJECTIVE BERT_DIR LLAMA_DIR OUTPUT_DIR BATCH_SIZE MAX_STEPS [CRASH_AT]

Exit codes: 0 trained, 3 killed at CRASH_AT as planned, 4 a checkpoint refused the run's settings.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch import nn

from dreamir.checkpoints import CheckpointError
from dreamir.data.sampling import SamplingArguments
from dreamir.data.training import TrainingExample
from dreamir.llm.frozen import FrozenLLM
from dreamir.llm.prompt import PromptSettings
from dreamir.objectives import DreamLoss, InfoNCELoss
from dreamir.retriever import Retriever, RetrieverConfig
from dreamir.trainer import Trainer, TrainingArguments
from tests.test_dream_objective import CORPUS, EXAMPLES

# "dream-batch": in-batch candidates (the pool of every process's queries).
# "dream-proximal": DREAM's proximal target (KL towards the starting distribution moved by the LLM).
# "dream-uniform": DREAM's target at uniform p (KL towards the LLM's judgement at a fixed point).
# "dream-uneven": targets of very different lengths, so each process's mean covers another number of tokens.
UNEVEN_EXAMPLES = [
    TrainingExample(e.query, e.target + " is the capital" * (3 * i), e.candidate_ids, gold_id=e.gold_id)
    for i, e in enumerate(EXAMPLES)
]


class Crash(RuntimeError):
    pass


class CrashingTrainer(Trainer):
    crash_at: int | None = None

    def _optimizer_step(self):
        if self.step + 1 == self.crash_at:
            raise Crash(f"killed during step {self.crash_at}")
        return super()._optimizer_step()


def build(objective: str, bert_dir: str, llama_dir: str):
    torch.manual_seed(0)
    retriever = Retriever.from_pretrained(bert_dir, RetrieverConfig(pooling="mean", max_length=32))
    # Dropout draws other masks in each process: without it one process with the whole batch and two
    # with half of it each must compute the same gradient.
    for module in retriever.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    if objective == "infonce":
        return InfoNCELoss(retriever)
    if objective == "dream-batch":
        # In-batch candidates in the layout they are meant for: every process's queries' candidates in
        # every prompt, read from the document cache.
        parallel = PromptSettings(document_layout="parallel")
        llm = FrozenLLM.from_pretrained(llama_dir, heads=[(0, 1), (1, 2)], prompt=parallel)
        return DreamLoss(retriever, llm, candidates="batch")
    if objective == "dream-proximal":
        llm = FrozenLLM.from_pretrained(llama_dir, heads=[(0, 1), (1, 2)])
        return DreamLoss(retriever, llm, target="proximal", proximal_step=30.0)
    if objective == "dream-uniform":
        llm = FrozenLLM.from_pretrained(llama_dir, heads=[(0, 1), (1, 2)])
        return DreamLoss(retriever, llm, target="uniform", proximal_step=30.0)
    return DreamLoss(retriever, FrozenLLM.from_pretrained(llama_dir, heads=[(0, 1), (1, 2)]))


def main(argv: list[str]) -> int:
    objective, bert_dir, llama_dir, output_dir, batch_size, max_steps, *rest = argv
    torch.set_num_threads(1)
    args = TrainingArguments(
        output_dir=output_dir,
        max_steps=int(max_steps),
        batch_size=int(batch_size),
        learning_rate=1e-3,
        warmup_ratio=0.0,
        save_steps=2,
        show_progress=False,
    )
    examples = UNEVEN_EXAMPLES if objective == "dream-uneven" else EXAMPLES
    trainer = CrashingTrainer(
        build(objective, bert_dir, llama_dir), examples, CORPUS, args, sampling=SamplingArguments(3)
    )
    trainer.crash_at = int(rest[0]) if rest else None
    try:
        trainer.train()
    except Crash:
        return 3
    except CheckpointError as error:
        print(error, file=sys.stderr)
        return 4
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
