"""The trainer: AdamW with warmup, gradient accumulation, periodic atomic checkpoints, exact resume, and a
JSONL log per optimiser step. It only knows objectives (loss modules over the retriever)."""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from dreamir.data.beir import Document
from dreamir.data.training import TrainingExample
from dreamir.io import atomic_path, read_log_rows, write_json_atomic, write_jsonl_atomic
from dreamir.objectives.base import Objective, TrainingInstance

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.pt"


@dataclass
class TrainingArguments:
    output_dir: str
    max_steps: int = 200
    batch_size: int = 2
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    num_candidates: int = 8
    # Per example, against the LLM's position bias (sequential layout); in the parallel layout the order
    # changes nothing the LLM computes, so shuffling is harmless there and changes only the logged order.
    shuffle_candidates: bool = True
    save_steps: int = 50
    save_total_limit: int = 2
    seed: int = 0
    show_progress: bool = True


@dataclass
class TrainingResult:
    steps: int
    final_dir: Path
    log_file: Path
    resumed_from: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


class Trainer:
    def __init__(
        self,
        objective: Objective,
        examples: Sequence[TrainingExample],
        corpus: dict[str, Document],
        args: TrainingArguments,
    ) -> None:
        if not examples:
            raise ValueError("no training examples")
        missing = [i for i, e in enumerate(examples) if not e.candidate_ids]
        if missing:
            raise ValueError(
                f"{len(missing)} training examples have no candidate_ids (first: #{missing[0]}); mine them first"
            )
        self.objective = objective
        self.examples = list(examples)
        self.corpus = corpus
        self.args = args
        self.output_dir = Path(args.output_dir)
        self.parameters = [p for p in objective.parameters() if p.requires_grad]
        if not self.parameters:
            raise ValueError("the objective has no trainable parameters")
        self.optimizer = torch.optim.AdamW(
            self.parameters, lr=args.learning_rate, weight_decay=args.weight_decay
        )
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, int(args.warmup_ratio * args.max_steps), args.max_steps
        )
        self.step = 0

    # ---- data order: a deterministic function of (seed, step), so a resumed run sees the same batches ----
    def _examples_for_step(self, step: int) -> list[TrainingInstance]:
        per_step = self.args.batch_size * self.args.gradient_accumulation_steps
        instances = []
        for position in range(step * per_step, (step + 1) * per_step):
            epoch, index = divmod(position, len(self.examples))
            order = np.random.default_rng([self.args.seed, epoch]).permutation(len(self.examples))
            instances.append(self._instance(self.examples[order[index]], epoch))
        return instances

    def _instance(self, example: TrainingExample, epoch: int) -> TrainingInstance:
        ids = list(example.candidate_ids or [])[: self.args.num_candidates]
        if self.args.shuffle_candidates:
            random.Random(f"{self.args.seed}/{epoch}/{example.query}").shuffle(ids)
        gold = ids.index(example.gold_id) if example.gold_id in ids else None
        gold_document = self.corpus.get(example.gold_id) if example.gold_id else None
        return TrainingInstance(
            example.query, example.target, [self.corpus[i] for i in ids], gold, gold_document
        )

    # ---- checkpoints ---------------------------------------------------------------------------------
    def _trainable_state(self) -> dict[str, torch.Tensor]:
        names = {id(p): n for n, p in self.objective.named_parameters()}
        return {names[id(p)]: p.detach().clone() for p in self.parameters}

    def save_checkpoint(self) -> Path:
        target = self.output_dir / CHECKPOINTS / f"step-{self.step:06d}"
        with atomic_path(target) as tmp:
            tmp.mkdir()
            torch.save(
                {
                    "step": self.step,
                    "parameters": self._trainable_state(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "args": asdict(self.args),
                },
                tmp / STATE_FILE,
            )
        checkpoints = sorted((self.output_dir / CHECKPOINTS).glob("step-*"))
        for old in checkpoints[: -self.args.save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
        return target

    def latest_checkpoint(self) -> Path | None:
        checkpoints = sorted(
            p for p in (self.output_dir / CHECKPOINTS).glob("step-*") if (p / STATE_FILE).exists()
        )
        return checkpoints[-1] if checkpoints else None

    def load_checkpoint(self, path: Path) -> None:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        named = dict(self.objective.named_parameters())
        with torch.no_grad():
            for name, value in state["parameters"].items():
                named[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])

    # ---- the loop ------------------------------------------------------------------------------------
    def train(self) -> TrainingResult:
        args = self.args
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.output_dir / "training_args.json", asdict(args))
        log_file = self.output_dir / "log.jsonl"
        checkpoint = self.latest_checkpoint()
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)
        resumed_from = self.step
        history = self._read_log(log_file, upto=self.step)
        self.objective.train()
        bar = tqdm(total=args.max_steps, initial=self.step, desc="training", disable=not args.show_progress)
        with log_file.open("a", encoding="utf-8") as log:
            while self.step < args.max_steps:
                row = self._optimizer_step()
                history.append(row)
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}", grad=f"{row['grad_norm']:.2e}")
                if self.step % args.save_steps == 0 or self.step == args.max_steps:
                    self.save_checkpoint()
        bar.close()
        final_dir = self.output_dir / "final"
        self.objective.retriever.save(final_dir)
        return TrainingResult(self.step, final_dir, log_file, resumed_from, history)

    def _optimizer_step(self) -> dict[str, float]:
        args = self.args
        started = time.perf_counter()
        # Seeding every step (dropout) makes a resumed run identical to an uninterrupted one.
        torch.manual_seed(args.seed * 1_000_003 + self.step)
        instances = self._examples_for_step(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        losses, logs = [], []
        for start in range(0, len(instances), args.batch_size):
            output = self.objective(instances[start : start + args.batch_size])
            (output.loss / args.gradient_accumulation_steps).backward()
            losses.append(float(output.loss.detach()))
            logs.append(output.logs)
        # The norm before clipping is what reached the retriever from the loss.
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.parameters, args.max_grad_norm))
        learning_rate = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        row: dict[str, float] = {
            "step": self.step,
            "loss": sum(losses) / len(losses),
            "grad_norm": grad_norm,
            "tau": float(self.objective.temperature.value.detach()),
            "lr": learning_rate,
            "step_seconds": time.perf_counter() - started,
        }
        for key in sorted({k for entry in logs for k in entry}):
            values = [entry[key] for entry in logs if key in entry]
            row[key] = sum(values) / len(values)
        return row

    @staticmethod
    def _read_log(log_file: Path, upto: int) -> list[dict[str, float]]:
        """Keep the log rows of steps already in the checkpoint; drop those a crash will redo."""
        if not log_file.exists():
            return []
        kept = [row for row in read_log_rows(log_file) if row.get("step", 0) <= upto]
        write_jsonl_atomic(log_file, kept)
        return kept
