"""The trainer: AdamW with warmup, gradient accumulation, periodic atomic checkpoints, exact resume, and a
JSONL log per optimiser step. It only knows objectives (loss modules over the retriever); what each step
trains on comes from ``dreamir.data.sampling``.

It runs in one process, or in several started by ``accelerate launch`` (``dreamir.distributed``): each
process trains on its own slice of every step's examples with its own dropout seed, the trainable gradients
are averaged over the processes before the optimiser step, and only the first process writes the log,
checkpoints and the final model."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from dreamir import checkpoints as integrity
from dreamir import distributed
from dreamir.data.beir import Document
from dreamir.data.sampling import SamplingArguments, TrainingInstance, check_examples, step_instances
from dreamir.data.training import TrainingExample
from dreamir.guards import NonFiniteStepGuard, check_finite_parameters
from dreamir.io import atomic_path, read_log_rows, write_json_atomic, write_jsonl_atomic
from dreamir.objectives.base import Objective
from dreamir.options import at_least, fraction, non_negative, positive
from dreamir.precision import describe_compute, machine_record

__all__ = ["SamplingArguments", "Trainer", "TrainerCallback", "TrainingArguments", "TrainingResult"]
logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.pt"


@dataclass
class TrainingArguments:
    _argument_group_name = "training loop"  # its heading in --help

    output_dir: str = field(metadata={"help": "run directory: log.jsonl, checkpoints/, final/"})
    max_steps: int = field(default=200, metadata={"help": "optimiser steps"})
    batch_size: int = field(
        default=2, metadata={"help": "examples per forward pass (per process when several run)"}
    )
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "forward passes per optimiser step"}
    )
    learning_rate: float = field(default=2e-5, metadata={"help": "AdamW peak learning rate"})
    warmup_ratio: float = field(
        default=0.1, metadata={"help": "share of the steps with a rising learning rate"}
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradients are clipped to this norm"})
    save_steps: int = field(default=50, metadata={"help": "checkpoint every N steps"})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints kept (older ones are deleted)"})
    seed: int = field(default=0, metadata={"help": "seeds the example order, candidate shuffles and dropout"})
    show_progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    max_nonfinite_steps: int = field(
        default=3, metadata={"help": "NaN/inf steps in a row (each skipped) before training stops"}
    )
    allow_longer_run: bool = field(
        default=False, metadata={"help": "resume with a larger --max-steps than the checkpoint's"}
    )

    def __post_init__(self) -> None:
        at_least(self, 1, "max_steps", "batch_size", "gradient_accumulation_steps")
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


class RetrieverSnapshots:
    """Saves the retriever at the given steps as ``directory/step-NNNNNN`` (a sentence-transformers
    directory each), so that a run's curve can be evaluated afterwards; a snapshot already there (written
    before an interruption) is kept."""

    def __init__(self, steps: Sequence[int], directory: str | Path) -> None:
        self.steps = set(steps)
        self.directory = Path(directory)

    def path(self, step: int) -> Path:
        return self.directory / f"step-{step:06d}"

    def on_train_begin(self, trainer: Trainer) -> None:
        pass

    def on_step_end(self, trainer: Trainer) -> dict[str, float]:
        target = self.path(trainer.step)
        if (
            trainer.step in self.steps
            and trainer.processes.is_main
            and not (target / "modules.json").exists()
        ):
            trainer.objective.retriever.save(target)
        return {}


class Trainer:
    def __init__(
        self,
        objective: Objective,
        examples: Sequence[TrainingExample],
        corpus: dict[str, Document],
        args: TrainingArguments,
        *,
        sampling: SamplingArguments | None = None,
        run_settings: dict[str, Any] | None = None,
        run_setting_defaults: dict[str, Any] | None = None,
        callbacks: Sequence[TrainerCallback] = (),
    ) -> None:
        """``sampling``: candidates per example and their shuffling. ``run_settings``: what else defines the
        run (model, objective); a resume must match it. ``callbacks``: hooks called at the start and after
        every optimiser step (on every process)."""
        self.sampling = sampling or SamplingArguments()
        check_examples(examples, self.sampling.num_candidates)
        self.objective = objective
        self.examples = list(examples)
        self.corpus = corpus
        self.args = args
        self.run_settings = run_settings or {}
        # A run setting an older checkpoint does not record (the option did not exist yet) counts as its
        # default there, so upgrading dreamir does not refuse to resume a run that used the defaults.
        self.run_setting_defaults = run_setting_defaults or {}
        self.output_dir = Path(args.output_dir)
        self.processes = distributed.join_processes()
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

    def _examples_for_step(self, step: int) -> list[TrainingInstance]:
        """This process's share of the step's examples (a function of seed, step, rank and process count)."""
        return step_instances(
            self.examples,
            self.corpus,
            self.sampling,
            seed=self.args.seed,
            step=step,
            per_process=self.args.batch_size * self.args.gradient_accumulation_steps,
            rank=self.processes.rank,
            processes=self.processes.count,
        )

    # ---- checkpoints ---------------------------------------------------------------------------------
    def _trainable_state(self) -> dict[str, torch.Tensor]:
        names = {id(p): n for n, p in self.objective.named_parameters()}
        return {names[id(p)]: p.detach().clone() for p in self.parameters}

    def save_checkpoint(self) -> Path:
        """Written by the first process; the others wait for it (they hold the same weights)."""
        target = self.output_dir / CHECKPOINTS / f"step-{self.step:06d}"
        check_finite_parameters(self._trainable_state().items(), str(target))
        if self.processes.is_main:
            self._write_checkpoint(target)
        distributed.barrier()
        return target

    def _write_checkpoint(self, target: Path) -> None:
        with atomic_path(target, replace_directory=True) as tmp:  # our own checkpoints directory
            tmp.mkdir()
            torch.save(
                {
                    "step": self.step,
                    "parameters": self._trainable_state(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "args": self._training_settings(),
                    "settings": self._settings(),
                },
                tmp / STATE_FILE,
            )
            integrity.write_manifest(tmp)
        checkpoints = sorted((self.output_dir / CHECKPOINTS).glob("step-*"))
        for old in checkpoints[: -self.args.save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)

    def _training_settings(self) -> dict[str, Any]:
        """How the loop runs: its arguments, the candidate sampling and, with several, the process count
        (another count gives each step other examples per process, so a resume must keep it)."""
        settings = {**asdict(self.args), **asdict(self.sampling)}
        if self.processes.count > 1:
            settings["processes"] = self.processes.count
        return settings

    def _settings(self) -> dict[str, Any]:
        return {
            "training": self._training_settings(),
            "run": self.run_settings,
            "data": self._data_fingerprint,
        }

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
        if isinstance(saved.get("run"), dict):
            saved = {**saved, "run": integrity.with_defaults(saved["run"], self.run_setting_defaults)}
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
        main = self.processes.is_main
        if main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            integrity.remove_temporaries(self.output_dir, self.output_dir / CHECKPOINTS)
        distributed.barrier()
        log_file = self.output_dir / "log.jsonl"
        checkpoint = self.latest_checkpoint()  # refuses other settings before anything is written
        if checkpoint is not None:
            self.load_checkpoint(*checkpoint)
        distributed.barrier()  # every process has read the checkpoint before the first one replaces it
        if main:
            write_json_atomic(self.output_dir / "training_args.json", self._training_settings())
            # Where this run's figures come from: the processor and the dtype each model computes in.
            machine = machine_record(**self.objective.compute_dtypes())
            write_json_atomic(self.output_dir / "machine.json", machine)
            logger.info("compute: %s", describe_compute(machine))
        resumed_from = self.step
        history = self._read_log(log_file, upto=self.step, rewrite=main)
        for callback in self.callbacks:
            callback.on_train_begin(self)
        self.objective.train()
        bar = tqdm(
            total=args.max_steps,
            initial=self.step,
            desc="training",
            disable=not (args.show_progress and main),
        )
        with log_file.open("a", encoding="utf-8") if main else _NoLog() as log:
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
        if main:
            self.objective.retriever.save(final_dir)
        distributed.barrier()
        return TrainingResult(self.step, final_dir, log_file, resumed_from, history)

    def _optimizer_step(self) -> dict[str, float]:
        args = self.args
        started = time.perf_counter()
        # Seeding every step (dropout) makes a resumed run identical to an uninterrupted one; each process
        # draws its own dropout masks (the first one those of a single-process run).
        torch.manual_seed(args.seed * 1_000_003 + self.step + self.processes.rank * 7_919)
        instances = self._examples_for_step(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        losses, logs = [], []
        for start in range(0, len(instances), args.batch_size):
            output = self.objective(instances[start : start + args.batch_size])
            (output.loss / args.gradient_accumulation_steps).backward()
            losses.append(float(output.loss.detach()))
            logs.append(output.logs)
        distributed.average_gradients(self.parameters)
        # The norm before clipping is what reached the retriever from the loss.
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.parameters, args.max_grad_norm))
        learning_rate = self.scheduler.get_last_lr()[0]
        # Every process decides on the same (averaged) figures, so all skip a step or none does.
        loss = distributed.mean_over_processes(sum(losses) / len(losses))
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
            "lr": learning_rate,
            "step_seconds": time.perf_counter() - started,
        }
        # What the objective reports (tau among it), averaged over the step's forward passes.
        for key in sorted({k for entry in logs for k in entry}):
            values = [entry[key] for entry in logs if key in entry]
            row[key] = sum(values) / len(values)
        if not applied:
            row["skipped"] = 1
        return row

    @staticmethod
    def _read_log(log_file: Path, upto: int, rewrite: bool = True) -> list[dict[str, float]]:
        """Keep the log rows of steps already in the checkpoint; drop those a crash will redo (``rewrite``:
        in the file too, which only the process writing the log does)."""
        if not log_file.exists():
            return []
        kept = [row for row in read_log_rows(log_file) if row.get("step", 0) <= upto]
        if rewrite:
            write_jsonl_atomic(log_file, kept)
        return kept


class _NoLog:
    """Stands in for the log file on the processes that do not write it."""

    def __enter__(self) -> _NoLog:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass
