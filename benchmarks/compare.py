"""DREAM against InfoNCE (labels), REPLUG-LSR (label-free, same LLM), AutoRegEmbed (the other frozen-decoder
method), BM25 and the untrained retriever, on identical data, candidate pools, steps, batch, learning-rate
schedule and seeds.

Two retriever set-ups:
  warm: all-minilm-l6-v2 (already contrastively trained), all weights trained;
  raw:  SmolLM2-135M cut to its first layers, LoRA, last-token pooling (never trained for retrieval).
Evaluates on the held-out Factbook questions (fields and countries unseen in training) and on SciFact.

The objective "autoregembed" (raw set-up only: the frozen decoder reads the retriever's states, so they
must have its width) is two runs: information compression (label-free) on the training questions'
candidates, then conditional distribution alignment (gold passage against mined negatives) from that
model; each stage takes --steps steps. Both stages get a row (raw/autoregembed-ic, raw/autoregembed), on
the raw backbone with compress pooling (5 learnt tokens, the paper's templates) instead of last-token.

    python benchmarks/compare.py --quick     # smoke run, minutes
    python benchmarks/compare.py             # the full run (about 80 minutes on 2 CPU cores)
    python benchmarks/compare.py --setups raw --lora-seeds 0,1,2 --out results/compare_lora_seeds.json
                                             # the raw set-up from three LoRA initialisations
    python benchmarks/compare.py --setups raw --steps 1000 --lora-seeds 0,1 --document-layout parallel \
        --precision bfloat16 --retriever-precision bfloat16 --no-eval-scifact --work runs/compare-raw-long \
        --jobs 2 --threads 1 --out results/compare_raw_long.json
                                             # make compare-raw-long: the raw set-up for 1,000 steps
    python benchmarks/compare.py --setups raw --objectives dream,infonce,replug,autoregembed
                                             # AutoRegEmbed beside the others
    python benchmarks/compare.py --setups raw --steps 1000 --lora-seeds 0,1 --eval-steps 100,250,500 \
        --objectives dream-batch-uniform,replug --paired-against replug --paired-from-step 100 ...
                                             # and each row's gain over REPLUG-LSR (and over its own
                                             # 100 steps), paired by query, with bootstrap intervals
    python benchmarks/compare.py --jobs 2 --threads 1
                                             # two systems at a time, one core each

Writes results/compare.json and results/compare_curves.png; every stage is cached under --work, so an
interrupted run resumes.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from dreamir.arguments import (
    DataArguments,
    HeadSelectionArguments,
    LLMArguments,
    ModelArguments,
    ObjectiveArguments,
    RuntimeArguments,
    SamplingArguments,
    TrainingArguments,
    field_defaults,
)
from dreamir.checkpoints import settings_differences, with_defaults
from dreamir.cli import ArgumentParser
from dreamir.data.beir import load_beir
from dreamir.data.training import write_training_file
from dreamir.datasets.factbook import build_factbook
from dreamir.evaluation import format_results_table, mean_metrics, paired_bootstrap_gain, per_query_metrics
from dreamir.io import read_log_rows, write_json_atomic
from dreamir.models import MINILM, SMOLLM2
from dreamir.objectives import options_classes
from dreamir.plots import plot_metric_by_step, plot_training_curves
from dreamir.stages import Stages
from dreamir.trainer import RetrieverSnapshots
from dreamir.workflow import (
    load_corpus,
    load_retriever,
    objective_record_classes,
    objective_settings,
    prepare_training_examples,
    read_json,
    retrieval_run,
    select_heads,
    train_retriever,
)

SETUPS = {
    "warm": ModelArguments(retriever=MINILM),
    "raw": ModelArguments(
        retriever=SMOLLM2, pooling="last", retriever_layers=6, lora=True, lora_r=16, max_length=256
    ),
}
# AutoRegEmbed's retriever: the raw backbone with compress pooling (its stages need the LLM's width).
COMPRESS_SETUPS = {"raw": replace(SETUPS["raw"], pooling="compress")}
AUTOREGEMBED = "autoregembed"
# Objectives with another candidate pool: each query's prompt (DREAM) or pool (REPLUG-LSR) holds every distinct
# candidate of the batch (issue 29's in-batch candidates); rows "<setup>/dream-batch", "<setup>/replug-batch".
# "-uniform": DREAM's loss is KL towards the LLM's judgement at uniform p (--dream-target uniform).
# "-learnt-tau": the softmax temperature is trained with the retriever (--learn-temperature); "-tau02": fixed
# at 0.02 instead of 0.05. Issue 29's temperature lever: the raw backbone's embeddings are anisotropic, so tau
# bounds how peaked p can get for the score gaps they give.
OBJECTIVE_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "dream-batch": ("dream", {"dream_candidates": "batch"}),
    "replug-batch": ("replug", {"replug_candidates": "batch"}),
    "dream-uniform": ("dream", {"dream_target": "uniform"}),
    "dream-batch-uniform": ("dream", {"dream_candidates": "batch", "dream_target": "uniform"}),
    "dream-batch-uniform-learnt-tau": (
        "dream",
        {"dream_candidates": "batch", "dream_target": "uniform", "learn_temperature": True},
    ),
    "dream-batch-uniform-tau02": (
        "dream",
        {"dream_candidates": "batch", "dream_target": "uniform", "temperature": 0.02},
    ),
    # InfoNCE at DREAM's raw-backbone tau, so the two meet at one temperature.
    "infonce-tau02": ("infonce", {"temperature": 0.02}),
}
# Learning rates per set-up (full fine-tuning of a trained model vs fresh LoRA adapters); identical across
# objectives so that only the objective differs.
LEARNING_RATES = {"warm": 2e-5, "raw": 5e-4}
# Every stage below is named by its output under --work and skipped when that output exists.
STAGES = Stages()


def option(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class Settings:
    work: str = option("runs/compare", "cache of every stage (data, heads, runs, evaluations)")
    out: str = option("results/compare.json", "results file; the curves go beside it")
    beir: str = option("../shared/data/beir/scifact", "SciFact (BEIR layout)")
    steps: int = option(100, "optimiser steps per system")
    batch_size: int = option(2, "examples per step")
    num_candidates: int = option(8, "BM25 candidates per question")
    num_heads: int = option(16, "query-focused heads DREAM injects into")
    calibration_examples: int = option(32, "labelled questions the heads are scored on")
    seed: int = option(0, "seeds data, heads and training")
    threads: int = option(2, "CPU threads torch may use per system (the shared stages: threads x jobs)")
    setups: str = option("warm,raw", "retriever set-ups, comma-separated: warm, raw")
    objectives: str = option(
        "dream,infonce,replug",
        "objectives, comma-separated; dream-batch, replug-batch: in-batch candidates; dream-uniform, "
        "dream-batch-uniform: DREAM's target at uniform p; dream-batch-uniform-learnt-tau, -tau02: and tau "
        "trained, or fixed at 0.02; infonce-tau02: InfoNCE at tau 0.02; autoregembed: its two stages (raw "
        "set-up)",
    )
    eval_scifact: bool = option(True, "also evaluate on SciFact")
    # The raw set-up's 6-layer decoder is ~2.3x slower to encode than all-MiniLM-L6-v2 (3 vs 1.3 min per
    # Factbook pass on 2 CPU cores), so SciFact would add an estimated 10-15 min per raw system; add "raw"
    # here for the complete grid.
    scifact_setups: str = option("warm", "set-ups evaluated on SciFact, comma-separated")
    # Smoke runs search only the passages of the held-out countries (a smaller, easier corpus).
    eval_subset: bool = option(False, "search only the held-out countries' passages (smoke runs)")
    # LoRA initialisations to train the LoRA set-ups (raw) from, comma-separated. Seed 0 gives the rows
    # "raw/<objective>"; any other seed s adds the rows "raw/<objective>/lora<s>".
    lora_seeds: str = option("0", "LoRA initialisations of the raw set-up, comma-separated")
    # "parallel" reads each candidate after the instruction alone and caches its keys and values under
    # <work>/document_cache; heads are then scored in the same layout (heads_qr_parallel.json). Use another
    # --work directory than the sequential runs'.
    document_layout: str = option(
        "sequential", "how the frozen LLM reads the candidates: sequential, parallel"
    )
    precision: str = option("float32", "the frozen LLM's precision: float32, bfloat16")
    retriever_precision: str = option("float32", "the retriever's forward precision: float32, bfloat16")
    # Each system (objective x LoRA seed) is then trained and evaluated by its own process, --jobs at a
    # time, each with --threads threads; the shared stages (data, candidates, heads, BM25 and base
    # evaluations) are done first, once. Keep jobs x threads at the number of cores.
    jobs: int = option(1, "systems trained at once, each in its own process")
    # Each run keeps its retriever at these steps (runs/<name>/snapshots/) and each is evaluated: the curve
    # shows a peak the final model hides. Runs trained (and cached) without them are refused.
    eval_steps: str = option("", "also evaluate every run at these steps, comma-separated (e.g. 100,250,500)")
    # Intervals, not only means: two LoRA seeds of one raw row differ by more than most rows do. Models
    # evaluated before per-query scores were cached are scored again (one pass over the corpus each).
    paired_against: str = option(
        "",
        "an objective (e.g. replug): every other objective's final nDCG@10 against its final, paired by "
        "query (bootstrap 95%% intervals, over the LoRA seeds together and each seed alone)",
    )
    paired_from_step: int = option(
        0,
        "with --paired-against, also each objective's final against its own model at this --eval-steps step",
    )
    resamples: int = option(10_000, "bootstrap resamples of the --paired-against intervals")


def prepare(settings: Settings) -> tuple[Path, Path, Path]:
    """Factbook data, BM25 candidates and the head file, each built once under the work directory."""
    work = Path(settings.work)
    data = work / "factbook"
    STAGES.run("factbook", data / "meta.json", lambda: build_factbook(data, seed=settings.seed))
    train = candidates_file(settings, data, settings.num_candidates)
    parallel = settings.document_layout == "parallel"
    heads = work / ("heads_qr_parallel.json" if parallel else "heads_qr.json")
    if "dream" not in {base_objective(o)[0] for o in settings.objectives.split(",")}:
        return data, train, heads  # only DREAM reads the heads: not scored for nothing
    STAGES.run(
        "heads",
        heads,
        lambda: select_heads(
            HeadSelectionArguments(
                calibration=str(data / "calibration.jsonl"),
                corpus=str(data),
                out=str(heads),
                top_k=max(settings.num_heads, 64),
                num_candidates=settings.num_candidates,
                max_examples=settings.calibration_examples,
                seed=settings.seed,
                **({"document_layout": "parallel"} if parallel else {}),
            )
        ),
    )
    return data, train, heads


def base_objective(objective: str) -> tuple[str, dict[str, Any]]:
    """The registered objective a row trains with and the options its variant sets."""
    return OBJECTIVE_VARIANTS.get(objective, (objective, {}))


def eval_steps(settings: Settings) -> list[int]:
    steps = sorted({int(s) for s in settings.eval_steps.split(",") if s.strip()})
    if any(not 0 < s < settings.steps for s in steps):
        raise SystemExit(
            f"--eval-steps must lie between 0 and --steps {settings.steps} (the final step is always evaluated)"
        )
    return steps


def candidates_file(settings: Settings, data: Path, num_candidates: int) -> Path:
    """The training questions with their BM25 top-``num_candidates`` pools, mined once per K."""
    path = Path(settings.work) / f"train_k{num_candidates}.jsonl"

    def mine() -> None:
        examples = prepare_training_examples(
            data / "train.jsonl", load_corpus(data), num_candidates, settings.steps * settings.batch_size
        )
        write_training_file(path, examples)

    return STAGES.run(f"candidates k{num_candidates}", path, mine)


@dataclass
class SystemArguments:
    """What one system trains with beside the retriever set-up and the loop: data, objective, frozen LLM,
    every objective's own options and the thread count."""

    data: DataArguments
    objective: ObjectiveArguments = field(default_factory=ObjectiveArguments)
    llm: LLMArguments = field(default_factory=LLMArguments)
    options: list[Any] = field(default_factory=lambda: [cls() for cls in options_classes()])
    runtime: RuntimeArguments = field(default_factory=RuntimeArguments)

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> SystemArguments:
        """From one flat mapping of option names (as on the command line) to values."""
        unknown = set(values) - {f.name for part in SYSTEM_PARTS for f in fields(part)}
        if unknown:
            raise ValueError(f"unknown system settings {sorted(unknown)}")

        def build(part: type) -> Any:
            return part(**{f.name: values[f.name] for f in fields(part) if f.name in values})

        return cls(
            build(DataArguments),
            build(ObjectiveArguments),
            build(LLMArguments),
            [build(c) for c in options_classes()],
            build(RuntimeArguments),
        )

    def record(self) -> dict[str, Any]:
        return objective_settings(self.data, self.objective, self.llm, self.options, self.runtime)


SYSTEM_PARTS = list(objective_record_classes())


def train_system(
    settings: Settings,
    name: str,
    setup: str,
    system: SystemArguments,
    lora_seed: int = 0,
    model: ModelArguments | None = None,
    **training,
) -> tuple[Path, float]:
    """Train one system (cached) from the set-up's retriever, or from ``model`` with the set-up's learning
    rate; returns the final retriever directory and its training time."""
    model = replace(model or SETUPS[setup], lora_seed=lora_seed)
    out = Path(settings.work) / "runs" / name
    final = out / "final"
    sampling = SamplingArguments(num_candidates=training.pop("num_candidates", settings.num_candidates))
    arguments = TrainingArguments(
        output_dir=str(out),
        max_steps=training.pop("steps", settings.steps),
        batch_size=settings.batch_size,
        learning_rate=LEARNING_RATES[setup],
        seed=settings.seed,
        # Often enough that an interruption loses at most 100 steps (a long raw run: about 5 minutes here).
        save_steps=max(min(settings.steps // 4, 100), 1),
        **training,
    )
    check_cached_run(
        out / "run_settings.json",
        {
            "setup": asdict(model),
            "dream": system.record(),
            "training": {**asdict(arguments), **asdict(sampling)},
        },
    )
    snapshots = RetrieverSnapshots(eval_steps(settings), out / "snapshots")
    missing = [s for s in snapshots.steps if not (snapshots.path(s) / "modules.json").exists()]
    if missing and (final / "modules.json").exists():
        raise SystemExit(
            f"{out} was trained without snapshots at steps {sorted(missing)}; pass another --work"
        )
    STAGES.run(
        f"train {name}",
        final / "modules.json",
        lambda: train_retriever(
            model,
            system.data,
            system.objective,
            arguments,
            sampling=sampling,
            llm=system.llm,
            options=system.options,
            runtime=system.runtime,
            callbacks=[snapshots],
        ),
    )
    # The logged step times, not a stopwatch around training: they also count the steps an interrupted
    # run did before its last checkpoint (the log keeps exactly the steps the final model went through).
    return final, sum(row["step_seconds"] for row in read_log_rows(out / "log.jsonl"))


def check_cached_run(path: Path, run_settings: dict) -> None:
    """A cached run is reused only when it was trained with these settings, up to those that do not change
    what is trained (how often it is checkpointed, where its files are: a resume ignores them too).

    A setting added to the arguments after the run was cached counts as having had its default value.
    """
    if path.exists():
        defaults = {section: field_defaults(*classes) for section, classes in RUN_SETTING_SECTIONS.items()}
        cached = _absolute_heads(with_defaults(read_json(path), defaults))
        differences = settings_differences(cached, _absolute_heads(json.loads(json.dumps(run_settings))))
        if differences:
            raise SystemExit(
                f"{path.parent} was trained with other settings ({path}: {'; '.join(differences)}); "
                "pass another --work directory"
            )
    else:
        write_json_atomic(path, run_settings)


def _absolute_heads(run_settings: dict) -> dict:
    """The head file named by its absolute path (from the working directory), so that a run cached by an
    invocation with an absolute --work is the same run for one with the relative path (and the reverse)."""
    heads = run_settings.get("dream", {}).get("heads")
    if heads:
        run_settings["dream"]["heads"] = os.path.abspath(heads)
    return run_settings


RUN_SETTING_SECTIONS = {
    "setup": [ModelArguments],
    "dream": SYSTEM_PARTS,
    "training": [TrainingArguments, SamplingArguments],
}


def save_untrained(
    setup: str, work: str, name: str | None = None, model: ModelArguments | None = None
) -> Path:
    """A set-up's starting retriever (or ``model``), saved once so that it is evaluated like the trained ones."""
    name = name or f"{setup}-base"
    final = Path(work) / "runs" / name / "final"
    STAGES.run(
        f"save {name}", final / "modules.json", lambda: load_retriever(model or SETUPS[setup]).save(final)
    )
    return final


def evaluate_system(settings: Settings, name: str, model: str, datasets: dict) -> dict[str, dict[str, float]]:
    return {
        dataset_name: STAGES.json(
            f"eval {dataset_name}-{name}",
            Path(settings.work) / "eval" / f"{dataset_name}-{name}.json",
            lambda dataset_name=dataset_name, dataset=dataset: mean_metrics(
                per_query_scores(settings, f"{dataset_name}-{name}", model, dataset)
            ),
        )
        for dataset_name, dataset in datasets.items()
    }


def per_query_scores(settings: Settings, key: str, model: str, dataset) -> dict[str, dict[str, float]]:
    """Every query's metrics of ``model`` (per_query_metrics), cached beside its mean as
    WORK/eval/<key>-per-query.json."""
    path = Path(settings.work) / "eval" / f"{key}-per-query.json"
    return STAGES.json(
        f"eval {path.stem}", path, lambda: per_query_metrics(dataset.qrels, retrieval_run(model, dataset))
    )


@dataclass(frozen=True)
class Evaluated:
    """A model evaluated under WORK/eval: the name its scores are cached by, where it is, and the datasets
    it was evaluated on (a set-up's, see --scifact-setups)."""

    name: str
    model: str
    datasets: tuple[str, ...]


# Row without its LoRA seed ("raw/dream-batch") -> LoRA seed -> step -> the model evaluated there.
Registry = dict[str, dict[int, dict[int, Evaluated]]]


def check_paired_options(settings: Settings) -> None:
    """Refuse --paired-against / --paired-from-step that cannot be served, before any training."""
    if settings.paired_from_step and not settings.paired_against:
        raise SystemExit("--paired-from-step needs --paired-against")
    if settings.paired_against and settings.paired_against not in settings.objectives.split(","):
        raise SystemExit(
            f"--paired-against {settings.paired_against}: not one of --objectives {settings.objectives}"
        )
    if settings.paired_from_step and settings.paired_from_step not in eval_steps(settings):
        raise SystemExit(f"--paired-from-step {settings.paired_from_step} is not one of --eval-steps")


def paired_comparisons(settings: Settings, registry: Registry) -> list[tuple[str, int, str, int]]:
    """(row, step, reference row, reference step) pairs --paired-against asks for: each row's final
    against the reference objective's final in its set-up, and with --paired-from-step each row's final
    against its model at that step (did training past it help?)."""
    pairs = []
    for row in registry:
        # check_paired_options made the reference one of --objectives: every set-up has its row.
        reference = f"{row.split('/')[0]}/{settings.paired_against}"
        if row != reference:
            pairs.append((row, settings.steps, reference, settings.steps))
        if settings.paired_from_step:
            pairs.append((row, settings.steps, row, settings.paired_from_step))
    return pairs


def paired_intervals(settings: Settings, registry: Registry, datasets: dict) -> dict[str, dict[str, dict]]:
    """``{dataset: {"row@step - reference@step": {...}}}``: the nDCG@10 gain's mean and paired bootstrap
    95% interval over the LoRA seeds both rows have (each query's score averaged over the seeds), and
    the same for each seed alone."""

    def scores(dataset_name: str, row: str, seed: int, step: int) -> dict[str, float]:
        evaluated = registry[row][seed][step]
        per_query = per_query_scores(
            settings, f"{dataset_name}-{evaluated.name}", evaluated.model, datasets[dataset_name]
        )
        return {query: metrics["ndcg@10"] for query, metrics in per_query.items()}

    def averaged(runs: list[dict[str, float]]) -> dict[str, float]:
        return {query: sum(run[query] for run in runs) / len(runs) for query in runs[0]}

    def interval(base: dict[str, float], systems: list[dict[str, float]]) -> dict:
        low, high = paired_bootstrap_gain(base, systems, resamples=settings.resamples, seed=settings.seed)
        gain = sum(averaged(systems).values()) / len(base) - sum(base.values()) / len(base)
        return {"gain": gain, "ci95": [low, high]}

    results: dict[str, dict[str, dict]] = {}
    for row, step, reference, reference_step in paired_comparisons(settings, registry):
        seeds = sorted(
            seed
            for seed in set(registry[row]) & set(registry[reference])
            if step in registry[row][seed] and reference_step in registry[reference][seed]
        )
        if not seeds:
            continue
        label = f"{row}@{step} - {reference}@{reference_step}"
        for dataset_name in registry[row][seeds[0]][step].datasets:
            systems = {seed: scores(dataset_name, row, seed, step) for seed in seeds}
            bases = {seed: scores(dataset_name, reference, seed, reference_step) for seed in seeds}
            entry = interval(averaged(list(bases.values())), list(systems.values()))
            entry["seeds"] = {str(seed): interval(bases[seed], [systems[seed]]) for seed in seeds}
            results.setdefault(dataset_name, {})[label] = entry
    return results


def paired_lines(paired: dict[str, dict[str, dict]]) -> list[str]:
    def gain(entry: dict) -> str:
        return f"{entry['gain']:+.4f} [{entry['ci95'][0]:+.4f}, {entry['ci95'][1]:+.4f}]"

    return [
        f"{dataset_name} {label} nDCG@10: {gain(entry)} over seeds {','.join(entry['seeds'])} ("
        + "; ".join(f"seed {seed} {gain(e)}" for seed, e in entry["seeds"].items())
        + ")"
        for dataset_name, comparisons in paired.items()
        for label, entry in comparisons.items()
    ]


def datasets_for(settings: Settings, data: Path) -> dict:
    factbook = load_beir(data)
    if settings.eval_subset:
        countries = {doc_id.split("/")[0] for judged in factbook.qrels.values() for doc_id in judged}
        factbook.corpus = {k: v for k, v in factbook.corpus.items() if k.split("/")[0] in countries}
    datasets = {"factbook": factbook}
    if settings.eval_scifact and Path(settings.beir).exists():
        datasets["scifact"] = load_beir(settings.beir)
    return datasets


def system_arguments(
    settings: Settings, train_file: Path, data: Path, head_file: Path, **overrides
) -> SystemArguments:
    """The arguments shared by every system; ``overrides`` (e.g. heads, train, objective) win."""
    base = {
        "train": str(train_file),
        "corpus": str(data),
        "heads": str(head_file),
        "num_heads": settings.num_heads,
        "threads": settings.threads,
        # Every row was cached when each question's own candidates were DREAM's default; a row that wants
        # in-batch candidates says so (OBJECTIVE_VARIANTS), so "dream" keeps its meaning in every table.
        "dream_candidates": "own",
    }
    # Only what differs from the defaults, so that runs cached before these options existed still match.
    if settings.document_layout != "sequential":
        base["document_layout"] = settings.document_layout
        base["document_cache"] = str(Path(settings.work) / "document_cache")
    for key in ("precision", "retriever_precision"):
        if getattr(settings, key) != "float32":
            base[key] = getattr(settings, key)
    return SystemArguments.from_flat({**base, **overrides})


def evaluated_models(settings: Settings, name: str, final: Path, datasets: dict) -> dict[int, Evaluated]:
    """A run's models by step: its snapshots (--eval-steps) and its final model."""
    snapshots = RetrieverSnapshots(eval_steps(settings), final.parent / "snapshots")
    models = {
        step: Evaluated(f"{name}@{step}", str(snapshots.path(step)), tuple(datasets))
        for step in sorted(snapshots.steps)
    }
    models[settings.steps] = Evaluated(name, str(final), tuple(datasets))
    return models


def evaluate_snapshots(
    settings: Settings, models: dict[int, Evaluated], datasets: dict
) -> dict[str, dict[str, dict[str, float]]]:
    """``{dataset: {step: metrics}}`` of a run's models by step (evaluated_models)."""
    curve: dict[str, dict[str, dict[str, float]]] = {d: {} for d in datasets}
    for step, evaluated in models.items():
        for dataset_name, metrics in evaluate_system(
            settings, evaluated.name, evaluated.model, datasets
        ).items():
            curve[dataset_name][str(step)] = metrics
    return curve


def report(
    settings: Settings,
    results: dict,
    train_seconds: dict,
    logs: dict,
    title: str,
    curves: dict | None = None,
    paired: dict | None = None,
) -> None:
    table = {
        d: {s: {**m, "train_s": train_seconds.get(s, 0.0)} for s, m in systems.items()}
        for d, systems in results.items()
    }
    print(format_results_table(table))
    for dataset_name, systems in (curves or {}).items():
        for system, by_step in systems.items():
            points = ", ".join(f"{step}: {m['ndcg@10']:.4f}" for step, m in by_step.items())
            print(f"{dataset_name} {system} nDCG@10 by step: {points}")
    if paired:
        print("paired by query, gain and bootstrap 95% interval:")
        print("\n".join(paired_lines(paired)))
    meta = {
        "settings": asdict(settings),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {settings.jobs} x {settings.threads} threads, torch {torch.__version__}",
    }
    document = {"results": results, "train_seconds": train_seconds, "meta": meta}
    if curves:
        document["by_step"] = curves
    if paired:
        document["paired"] = paired
    write_json_atomic(settings.out, document)
    if logs:
        png = Path(settings.out).with_name(Path(settings.out).stem + "_curves.png")
        # A system's LoRA seeds ("raw/dream/lora1") share its colour.
        plot_training_curves(logs, png, groups={name: name.split("/lora")[0] for name in logs})
        print(f"{title}: {settings.out}, {png}")
    if curves:
        by_step = Path(settings.out).with_name(Path(settings.out).stem + "_by_step.png")
        systems = {system for by_system in curves.values() for system in by_system}
        plot_metric_by_step(curves, by_step, groups={name: name.split("/lora")[0] for name in systems})
        print(f"{title}: held-out nDCG@10 by step in {by_step}")


def parse(settings_class=Settings, description: str | None = __doc__) -> Settings:
    parser = ArgumentParser([settings_class], description=description)
    parser.add_argument("--quick", action="store_true", help="smoke run: few steps, Factbook only")
    settings, extra = parser.parse_args_into_dataclasses(look_for_args_file=False)
    quick = extra.quick
    if quick:
        settings.steps, settings.calibration_examples, settings.eval_scifact = 6, 8, False
        settings.eval_subset = True
        settings.work, settings.out = settings.work + "-quick", settings.out.replace(".json", "_quick.json")
    return settings


def main() -> None:
    settings = parse()
    check_paired_options(settings)
    # The shared stages (data, heads, BM25 and base evaluations) run here while no worker does: every core.
    torch.set_num_threads(settings.threads * settings.jobs)
    data, train, heads = prepare(settings)
    datasets = datasets_for(settings, data)
    results: dict[str, dict[str, dict[str, float]]] = {name: {} for name in datasets}
    train_seconds: dict[str, float] = {}
    logs: dict[str, Path] = {}
    curves: dict[str, dict[str, dict]] = {name: {} for name in datasets}
    registry: Registry = {}

    def record(system: str, metrics: dict) -> None:
        for dataset_name, values in metrics.items():
            results[dataset_name][system] = values

    record("bm25", evaluate_system(settings, "bm25", "bm25", datasets))
    for setup in settings.setups.split(","):
        on = {
            name: dataset
            for name, dataset in datasets.items()
            if name != "scifact" or setup in settings.scifact_setups.split(",")
        }
        base = SETUPS[setup].retriever
        if setup == "raw":
            base = str(save_untrained(setup, settings.work))
        record(f"{setup}/base", evaluate_system(settings, f"{setup}-base", base, on))
        if AUTOREGEMBED in settings.objectives.split(",") and setup in COMPRESS_SETUPS:
            # AutoRegEmbed's starting point: the same backbone with compress pooling, its tokens untrained.
            name = f"{setup}-compress-base"
            start = save_untrained(setup, settings.work, name, COMPRESS_SETUPS[setup])
            record(f"{setup}/compress-base", evaluate_system(settings, name, str(start), on))
        # Without LoRA nothing is drawn at random before training, so there is one run per objective.
        lora_seeds = [int(s) for s in settings.lora_seeds.split(",")] if SETUPS[setup].lora else [0]
        if settings.jobs > 1:
            train_in_workers(settings, setup, lora_seeds)  # the loop below then finds every run cached
        for lora_seed in lora_seeds:
            for objective in settings.objectives.split(","):
                suffix = (f"-lora{lora_seed}", f"/lora{lora_seed}") if lora_seed else ("", "")
                if objective == AUTOREGEMBED:
                    trained = train_autoregembed(settings, setup, (train, data, heads), lora_seed, suffix)
                else:
                    name, system = f"{setup}-{objective}{suffix[0]}", f"{setup}/{objective}{suffix[1]}"
                    trains, variant = base_objective(objective)
                    system_args = system_arguments(settings, train, data, heads, objective=trains, **variant)
                    final, seconds = train_system(settings, name, setup, system_args, lora_seed=lora_seed)
                    trained = [(name, system, final, seconds)]
                for name, system, final, seconds in trained:
                    train_seconds[system] = seconds
                    logs[system] = final.parent / "log.jsonl"
                    record(system, evaluate_system(settings, name, str(final), on))
                    models = evaluated_models(settings, name, final, on)
                    registry.setdefault(system.split("/lora")[0], {})[lora_seed] = models
                    if settings.eval_steps:
                        for dataset_name, by_step in evaluate_snapshots(settings, models, on).items():
                            curves[dataset_name][system] = by_step
    paired = paired_intervals(settings, registry, datasets) if settings.paired_against else None
    report(settings, results, train_seconds, logs, "compare", curves if settings.eval_steps else None, paired)


def train_in_workers(settings: Settings, setup: str, lora_seeds: list[int]) -> None:
    """Train and evaluate each (objective, LoRA seed) of a set-up by this script in its own process,
    ``settings.jobs`` at a time; each worker's output goes to <work>/jobs/<system>.log."""
    jobs_dir = Path(settings.work) / "jobs"
    jobs_dir.mkdir(parents=True, exist_ok=True)

    def run(objective: str, lora_seed: int) -> None:
        name = f"{setup}-{objective}" + (f"-lora{lora_seed}" if SETUPS[setup].lora else "")
        worker = {
            **asdict(settings),
            "setups": setup,
            "objectives": objective,
            "lora_seeds": str(lora_seed),
            "jobs": 1,
            "out": str(jobs_dir / f"{name}.json"),
            # A worker trains one objective; the parent pairs the systems once all are done.
            "paired_against": "",
            "paired_from_step": 0,
        }
        command = [sys.executable, __file__] + [
            item for key, value in worker.items() for item in (f"--{key}", str(value))
        ]
        log = jobs_dir / f"{name}.log"
        print(f"[compare] {name}: started, output in {log}", flush=True)
        with log.open("w", encoding="utf-8") as output:
            code = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT).returncode
        if code != 0:
            raise SystemExit(f"{name} failed (exit {code}); its output: {log}")
        print(f"[compare] {name}: done", flush=True)

    # Objective by objective, its seeds side by side: runs of one objective take about as long as each other,
    # so --jobs 2 with two seeds keeps both cores busy until the end.
    systems = [(o, seed) for o in settings.objectives.split(",") for seed in lora_seeds]
    with ThreadPoolExecutor(max_workers=settings.jobs) as pool:
        for finished in [pool.submit(run, objective, seed) for objective, seed in systems]:
            finished.result()


def train_autoregembed(
    settings: Settings, setup: str, files: tuple[Path, Path, Path], lora_seed: int, suffix: tuple[str, str]
) -> list[tuple[str, str, Path, float]]:
    """Information compression from the set-up's backbone, then conditional distribution alignment from
    its result (fresh LoRA adapters on the merged IC model); the second row's time counts both stages."""
    if setup not in COMPRESS_SETUPS:
        raise SystemExit(
            f"autoregembed needs a retriever of the frozen LLM's width: --setups {list(COMPRESS_SETUPS)}"
        )
    train, data, heads = files
    stages, start, seconds_so_far = [], COMPRESS_SETUPS[setup], 0.0
    for stage, row in (("autoregembed-ic", "autoregembed-ic"), ("autoregembed-cda", AUTOREGEMBED)):
        name, system = f"{setup}-{stage}{suffix[0]}", f"{setup}/{row}{suffix[1]}"
        system_args = system_arguments(settings, train, data, heads, objective=stage)
        final, seconds = train_system(settings, name, setup, system_args, lora_seed=lora_seed, model=start)
        seconds_so_far += seconds
        stages.append((name, system, final, seconds_so_far))
        start = ModelArguments(retriever=str(final), lora=start.lora, lora_r=start.lora_r)
    return stages


if __name__ == "__main__":
    main()
