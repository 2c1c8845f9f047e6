"""Label-free adaptation to a corpus: DREAM against QGen-style InfoNCE (the pseudo-gold passage as the
positive, mined negatives, in-batch), REPLUG-LSR, AutoRegEmbed's information compression (with
--objectives ...,autoregembed-ic), BM25 and the untrained base, on identical examples and budgets.
AutoRegEmbed needs a retriever of the frozen LLM's width: its row trains SmolLM2-135M cut to 6 layers with
LoRA (learning rate 5e-4, as compare.py's raw set-up) and compress pooling, on the candidate passages of
the same examples; the others keep adapt's default retriever. Two corpora: SciFact (evaluated on its test queries) and the Factbook passages (evaluated on the
held-out Factbook questions; no Factbook question is used in training).

    python benchmarks/adapt.py --quick    # smoke run: few steps, Factbook only
    python benchmarks/adapt.py            # the tables in docs/experiments.md

Every run is `dreamir adapt` with its defaults unless an option here says otherwise; the first objective's
examples are copied to the others, so all train on the very same examples and candidates. For DREAM on
each corpus, the labelled nDCG@10 is also measured at every validation step (never used for training or
for choosing the checkpoint) to show how well the label-free signal tracks it. Writes results/adapt.json
and results/adapt_curves.png; every stage is cached under --work, so an interrupted run resumes.
"""

from __future__ import annotations

import datetime
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamir import precision as compute
from dreamir.adapt import TIE_BREAKER, VALIDATION_METRIC, AdaptArguments, adapt
from dreamir.cli import ArgumentParser
from dreamir.data.beir import BeirDataset, load_beir
from dreamir.datasets.factbook import build_factbook
from dreamir.evaluation import evaluate_encoder, format_results_table
from dreamir.io import read_log_rows, write_json_atomic
from dreamir.models import MINILM, SMOLLM2
from dreamir.plots import plot_training_curves
from dreamir.stages import Stages
from dreamir.trainer import Trainer
from dreamir.workflow import evaluate_model, read_json

STAGES = Stages()
# Objectives whose frozen decoder reads the retriever's states: a retriever of the LLM's width (compare.py's
# raw set-up), with its learning rate unless --learning-rate says otherwise.
COMPRESS_RETRIEVER: dict[str, dict[str, Any]] = {
    "autoregembed-ic": {"retriever": SMOLLM2, "retriever_layers": 6, "lora": True, "learning_rate": 5e-4}
}
EXAMPLE_FILES = ("examples.json", "train.jsonl", "validation.jsonl", "derived.jsonl")


def option(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class Settings:
    work: str = option("runs/adapt", "cache of every stage")
    out: str = option("results/adapt.json", "results file; the curves go beside it")
    beir: str = option("../shared/data/beir/scifact", "SciFact (BEIR layout)")
    datasets: str = option("scifact,factbook", "corpora to adapt to, comma-separated")
    objectives: str = option(
        "dream,infonce,replug", "objectives, comma-separated (autoregembed-ic: information compression)"
    )
    recipe: str | None = option(None, "how examples are made from a corpus: genq, ict (default: adapt's)")
    max_steps: int | None = option(None, "default: adapt's")
    max_passages: int | None = option(None, "default: adapt's")
    learning_rate: float | None = option(None, "default: adapt's")
    refresh_every: int | None = option(None, "default: adapt's")
    refresh_after: int | None = option(None, "default: adapt's")
    examples_per_passage: int | None = option(None, "default: adapt's")
    target_words: int | None = option(None, "default: adapt's")
    max_target_tokens: int | None = option(None, "default: adapt's")
    ict_target: str | None = option(None, "default: adapt's")
    document_layout: str | None = option(None, "default: adapt's")
    heads: str | None = option(None, "head file; default: adapt's (scored on the generated examples)")
    precision: str | None = option(
        None, "compute dtype of every stage: auto, float32, bfloat16 (default: adapt's)"
    )
    track_labelled: bool = option(True, "measure the labelled nDCG@10 at each validation (DREAM only)")
    seed: int = option(0, "seeds every run")
    threads: int = option(2, "CPU threads torch may use")


class LabelledTracker:
    """Benchmark only: the labelled nDCG@10 at the steps the label-free validation runs (encoded in the run's
    compute dtype, as adapt's validation is)."""

    def __init__(self, dataset: BeirDataset, every: int, precision: str) -> None:
        self.dataset, self.every, self.precision = dataset, every, precision

    def measure(self, trainer: Trainer) -> dict[str, float]:
        retriever = trainer.objective.retriever
        with compute.autocast(self.precision, retriever.device):
            metrics = evaluate_encoder(
                self.dataset,
                lambda t: retriever.encode_queries(t, batch_size=64, show_progress=False),
                lambda t: retriever.encode_documents(t, batch_size=64, show_progress=False),
            )
        return {"labelled_ndcg@10": metrics["ndcg@10"]}

    def on_train_begin(self, trainer: Trainer) -> None:
        start = trainer.output_dir / "labelled_step0.json"
        if not start.exists():
            write_json_atomic(start, self.measure(trainer))

    def on_step_end(self, trainer: Trainer) -> dict[str, float]:
        if trainer.step % self.every and trainer.step != trainer.args.max_steps:
            return {}
        return self.measure(trainer)


def corpus_dir(settings: Settings, name: str) -> Path:
    if name == "scifact":
        return Path(settings.beir)
    directory = Path(settings.work) / "factbook-data"
    STAGES.run("factbook", directory / "meta.json", lambda: build_factbook(directory, seed=settings.seed))
    return directory


def adapt_arguments(settings: Settings, corpus: Path, out: Path, objective: str) -> AdaptArguments:
    overrides = {
        k: getattr(settings, k)
        for k in (
            "recipe",
            "max_steps",
            "max_passages",
            "learning_rate",
            "refresh_every",
            "refresh_after",
            "examples_per_passage",
            "target_words",
            "max_target_tokens",
            "ict_target",
            "document_layout",
            "heads",
            "precision",
        )
        if getattr(settings, k) is not None
    }
    if objective in COMPRESS_RETRIEVER:
        overrides = {**COMPRESS_RETRIEVER[objective], **overrides}
    return AdaptArguments(
        corpus=str(corpus),
        out=str(out),
        objective=objective,
        seed=settings.seed,
        threads=settings.threads,
        **overrides,
    )


def tracking_correlation(log: Path, start: dict, baseline: dict) -> dict:
    rows = [baseline] + [r for r in read_log_rows(log) if VALIDATION_METRIC in r and "labelled_ndcg@10" in r]
    steps = [0] + [int(r["step"]) for r in rows[1:]]
    label_free = [r[VALIDATION_METRIC] for r in rows]
    mrr = [r[TIE_BREAKER] for r in rows]
    labelled = [start["labelled_ndcg@10"]] + [r["labelled_ndcg@10"] for r in rows[1:]]
    pearson = float(np.corrcoef(mrr, labelled)[0, 1]) if len(steps) > 2 else float("nan")
    # The checkpoint adapt keeps: best (success@10, MRR@10), exact ties to the later step.
    chosen = max(range(len(rows)), key=lambda i: (label_free[i], mrr[i], i))
    return {
        "steps": steps,
        VALIDATION_METRIC: label_free,
        TIE_BREAKER: mrr,
        "labelled_ndcg@10": labelled,
        "pearson_mrr_vs_labelled": pearson,
        "chosen_step": steps[chosen],
        "labelled_at_chosen": labelled[chosen],
        "labelled_best": max(labelled),
    }


def main() -> None:
    parser = ArgumentParser([Settings], description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke run: 10 steps, Factbook only")
    settings, extra = parser.parse_args_into_dataclasses(look_for_args_file=False)
    if extra.quick:
        settings.datasets, settings.max_steps, settings.max_passages = "factbook", 10, 200
        settings.work, settings.out = settings.work + "-quick", settings.out.replace(".json", "_quick.json")
    torch.set_num_threads(settings.threads)
    work = Path(settings.work)
    results: dict[str, dict[str, dict[str, float]]] = {}
    tracking: dict[str, dict] = {}
    reports: dict[str, dict] = {}
    logs: dict[str, Path] = {}
    for name in settings.datasets.split(","):
        directory = corpus_dir(settings, name)
        dataset = load_beir(directory)
        results[name] = {}
        first: Path | None = None
        for objective in settings.objectives.split(","):
            out = work / name / objective
            if first is not None:
                for file in EXAMPLE_FILES:
                    if not (out / "work" / file).exists():
                        (out / "work").mkdir(parents=True, exist_ok=True)
                        shutil.copy(first / "work" / file, out / "work" / file)
            arguments = adapt_arguments(settings, directory, out, objective)
            every = arguments.validate_every or max(arguments.max_steps // 5, 1)
            extra = (
                [LabelledTracker(dataset, every, arguments.precision)]
                if settings.track_labelled and objective == "dream"
                else []
            )
            report = adapt(arguments, extra)
            first = first or out
            reports[f"{name}/{objective}"] = report
            logs[f"{name}/{objective}"] = out / "work" / "train" / "log.jsonl"
            if extra:
                train_dir = out / "work" / "train"
                tracking[name] = tracking_correlation(
                    train_dir / "log.jsonl",
                    read_json(train_dir / "labelled_step0.json"),
                    read_json(train_dir / "validation_step0.json"),
                )
        for system, model in {"bm25": "bm25", "base": MINILM}.items():
            results[name][system] = cached_eval(work / "eval" / f"{name}-{system}.json", model, dataset)
        for objective in settings.objectives.split(","):
            model = str(work / name / objective / "model")
            results[name][objective] = cached_eval(work / "eval" / f"{name}-{objective}.json", model, dataset)
    table = format_results_table(results)
    print(table)
    for name, track in tracking.items():
        print(
            f"{name}: label-free {VALIDATION_METRIC} vs labelled nDCG@10 over {len(track['steps'])} checkpoints: "
            f"pearson (val MRR@10) {track['pearson_mrr_vs_labelled']:.3f}; chosen step {track['chosen_step']} "
            f"(nDCG@10 {track['labelled_at_chosen']:.4f}, best checkpoint {track['labelled_best']:.4f})"
        )
    curves = plot_training_curves(
        logs,
        Path(settings.out).with_name(Path(settings.out).stem + "_curves.png"),
        metrics=("loss", "p_gold", VALIDATION_METRIC),
    )
    write_json_atomic(
        settings.out,
        {
            "settings": asdict(settings),
            "date": datetime.date.today().isoformat(),
            "machine": compute.machine_record(all_stages=settings.precision or AdaptArguments.precision),
            "results": results,
            "tracking": tracking,
            "adapt_reports": {
                k: {
                    "examples": r["examples"],
                    "validation": r["validation"],
                    "stage_seconds": r["stage_seconds"],
                }
                for k, r in reports.items()
            },
            "curves": str(curves),
        },
    )
    print(f"written {settings.out} and {curves}")


def cached_eval(path: Path, model: str, dataset: BeirDataset) -> dict[str, float]:
    return STAGES.json(path.stem, path, lambda: evaluate_model(model, dataset, show_progress=False))


if __name__ == "__main__":
    main()
