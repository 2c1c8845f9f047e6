"""The trainer: AdamW with warmup, gradient accumulation, periodic atomic checkpoints, exact resume, and a
JSONL log per optimiser step. It only knows objectives (loss modules over the retriever)."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from dreamir import checkpoints as integrity
from dreamir.data.beir import Document
from dreamir.data.training import TrainingExample
from dreamir.guards import NonFiniteStepGuard, check_finite_parameters
from dreamir.io import atomic_path, read_log_rows, write_json_atomic, write_jsonl_atomic
from dreamir.objectives.base import Objective, TrainingInstance
from dreamir.options import at_least, fraction, non_negative, positive

logger = logging.getLogger(__name__)

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
    max_nonfinite_steps: int = 3  # NaN/inf steps in a row (each skipped) before training stops
    allow_longer_run: bool = False  # resume with a larger max_steps than the checkpoint's

    def __post_init__(self) -> None:
        at_least(self, 1, "max_steps", "batch_size", "gradient_accumulation_steps", "num_candidates")
        at_least(self, 1, "save_steps", "save_total_limit", "max_nonfinite_steps")
        positive(self, "learning_rate", "max_grad_norm")
        non_negative(self, "weight_decay")
        fraction(self, "warmup_ratio")


@dataclass
class TrainingResult:
    steps: int
    final_dir: Path
    log_file: Path
    resumed_from: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


class TrainerCallback(Protocol):
    """Hooks around the loop (validation, candidate refresh). ``on_step_end`` runs after the optimiser
    step and before the checkpoint of that step; what it returns is added to the step's log row."""

    def on_train_begin(self, trainer: Trainer) -> None: ...

    def on_step_end(self, trainer: Trainer) -> dict[str, float]: ...


class Trainer:
    def __init__(
        self,
        objective: Objective,
        examples: Sequence[TrainingExample],
        corpus: dict[str, Document],
        args: TrainingArguments,
        *,
        run_settings: dict[str, Any] | None = None,
        callbacks: Sequence[TrainerCallback] = (),
    ) -> None:
        """``run_settings``: what else defines the run (model, objective); a resume must match it.
        ``callbacks``: hooks called at the start and after every optimiser step."""
        if not examples:
            raise ValueError("no training examples")
        missing = [i for i, e in enumerate(examples) if not e.candidate_ids]
        if missing:
            raise ValueError(
                f"{len(missing)} training examples have no candidate_ids (first: #{missing[0]}); mine them first"
            )
        _check_candidate_counts(examples, args.num_candidates)
        self.objective = objective
        self.examples = list(examples)
        self.corpus = corpus
        self.args = args
        self.run_settings = run_settings or {}
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
        self.callbacks = list(callbacks)
        self.guard = NonFiniteStepGuard(args.max_nonfinite_steps)

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
        check_finite_parameters(self._trainable_state().items(), str(target))
        with atomic_path(target, replace_directory=True) as tmp:  # our own checkpoints directory
            tmp.mkdir()
            torch.save(
                {
                    "step": self.step,
                    "parameters": self._trainable_state(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "args": asdict(self.args),
                    "settings": self._settings(),
                },
                tmp / STATE_FILE,
            )
            integrity.write_manifest(tmp)
        checkpoints = sorted((self.output_dir / CHECKPOINTS).glob("step-*"))
        for old in checkpoints[: -self.args.save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
        return target

    def _settings(self) -> dict[str, Any]:
        return {"training": asdict(self.args), "run": self.run_settings, "data": self._data_fingerprint}

    @functools.cached_property
    def _data_fingerprint(self) -> str:
        """SHA-256 of the training rows and the passages they use: another --train or corpus changes it."""
        digest = hashlib.sha256()
        for example in self.examples:
            documents = [(self.corpus[i].title, self.corpus[i].text) for i in example.candidate_ids or []]
            digest.update(json.dumps([example.to_record(), documents]).encode())
        return digest.hexdigest()

    def latest_checkpoint(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint whose checksums verify and which loads (older ones are fallbacks)."""
        found = integrity.newest_valid(
            (self.output_dir / CHECKPOINTS).glob("step-*"),
            STATE_FILE,
            lambda path: torch.load(path / STATE_FILE, map_location="cpu", weights_only=True),
        )
        if found is not None:
            self._refuse_other_settings(*found)
        return found

    def _refuse_other_settings(self, path: Path, state: dict[str, Any]) -> None:
        if "settings" not in state:
            return  # written before settings were recorded
        saved, current = state["settings"], self._settings()
        differences = integrity.settings_differences(saved, current)
        if self.args.allow_longer_run and self.args.max_steps >= saved["training"]["max_steps"]:
            differences = [d for d in differences if not d.startswith("training.max_steps:")]
        if differences:
            raise integrity.CheckpointError(
                f"{self.output_dir} holds a run trained with other settings ({path.name}): "
                + "; ".join(differences)
                + ". Use another --output-dir (or --allow-longer-run to raise --max-steps only)."
            )

    def load_checkpoint(self, path: Path, state: dict[str, Any] | None = None) -> None:
        if state is None:
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
        integrity.remove_temporaries(self.output_dir, self.output_dir / CHECKPOINTS)
        log_file = self.output_dir / "log.jsonl"
        checkpoint = self.latest_checkpoint()  # refuses other settings before anything is written
        if checkpoint is not None:
            self.load_checkpoint(*checkpoint)
        write_json_atomic(self.output_dir / "training_args.json", asdict(args))
        resumed_from = self.step
        history = self._read_log(log_file, upto=self.step)
        for callback in self.callbacks:
            callback.on_train_begin(self)
        self.objective.train()
        bar = tqdm(total=args.max_steps, initial=self.step, desc="training", disable=not args.show_progress)
        with log_file.open("a", encoding="utf-8") as log:
            while self.step < args.max_steps:
                row = self._optimizer_step()
                for callback in self.callbacks:
                    row.update(callback.on_step_end(self))
                history.append(row)
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}", grad=f"{row['grad_norm']:.2e}")
                if self.step % args.save_steps == 0 or self.step == args.max_steps:
                    self.save_checkpoint()
        bar.close()
        final_dir = self.output_dir / "final"
        check_finite_parameters(self.objective.retriever.named_parameters(), str(final_dir))
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
        loss = sum(losses) / len(losses)
        # A NaN/inf step is skipped (the schedule still advances, so the steps keep their places).
        applied = self.guard.allows(self.step + 1, loss, grad_norm)
        if applied:
            self.optimizer.step()
        with warnings.catch_warnings():
            # torch warns when the schedule moves without an optimiser step: here that is the point.
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        self.step += 1
        row: dict[str, float] = {
            "step": self.step,
            "loss": loss,
            "grad_norm": grad_norm,
            "tau": float(self.objective.temperature.value.detach()),
            "lr": learning_rate,
            "step_seconds": time.perf_counter() - started,
        }
        for key in sorted({k for entry in logs for k in entry}):
            values = [entry[key] for entry in logs if key in entry]
            row[key] = sum(values) / len(values)
        if not applied:
            row["skipped"] = 1
        return row

    @staticmethod
    def _read_log(log_file: Path, upto: int) -> list[dict[str, float]]:
        """Keep the log rows of steps already in the checkpoint; drop those a crash will redo."""
        if not log_file.exists():
            return []
        kept = [row for row in read_log_rows(log_file) if row.get("step", 0) <= upto]
        write_jsonl_atomic(log_file, kept)
        return kept


def _check_candidate_counts(examples: Sequence[TrainingExample], num_candidates: int) -> None:
    """A softmax over one candidate is constant: such an example gives the retriever no gradient at all.
    Refuse a run where every example is like that, warn (with the lines) when some are."""
    single = [i for i, e in enumerate(examples) if len((e.candidate_ids or [])[:num_candidates]) < 2]
    if not single:
        return
    where = ", ".join(
        f"line {examples[i].source_line}" if examples[i].source_line else f"#{i}" for i in single[:5]
    )
    reason = "a single candidate gives a constant softmax and so a zero gradient"
    if len(single) == len(examples):
        raise ValueError(
            f"every training example has a single candidate ({where}, ...; --num-candidates {num_candidates}):"
            f" {reason}; training would not change the model. Give 2 or more candidates"
        )
    logger.warning(
        "%d of %d training examples have a single candidate (%s%s): %s, they add nothing to training",
        len(single),
        len(examples),
        where,
        ", ..." if len(single) > 5 else "",
        reason,
    )
