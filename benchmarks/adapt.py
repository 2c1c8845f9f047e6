"""Label-free adaptation to a corpus: DREAM against QGen-style InfoNCE (the pseudo-gold passage as the
positive, mined negatives, in-batch), REPLUG-LSR, AutoRegEmbed's information compression (with
--objectives ...,autoregembed-ic), BM25 and the untrained base, on identical examples and budgets.
AutoRegEmbed needs a retriever of the frozen LLM's width: its row trains SmolLM2-135M cut to 6 layers with
LoRA (learning rate 5e-4, as compare.py's raw set-up) and compress pooling, on the candidate passages of
the same examples; the others keep adapt's default retriever. Two corpora: SciFact (evaluated on its test queries) and the Factbook passages (evaluated on the
held-out Factbook questions; no Factbook question is used in training).

    python benchmarks/adapt.py --quick    # smoke run: few steps, Factbook only
    python benchmarks/adapt.py            # the tables in docs/experiments.md
    python benchmarks/adapt.py --seeds 0,1,2 --out results/adapt_seeds.json   # a gain told from noise
    python benchmarks/adapt.py --quick --seeds 0,1   # smoke run of the seeds protocol

Every run is `dreamir adapt` with its defaults unless an option here says otherwise; the first objective's
examples are copied to the others, so all train on the very same examples and candidates. For DREAM on
each corpus, the labelled nDCG@10 is also measured at every validation step (never used for training or
for choosing the checkpoint) to show how well the label-free signal tracks it. Writes results/adapt.json
and results/adapt_curves.png; every stage is cached under --work, so an interrupted run resumes.

With more than one seed (--seeds) it runs the seeds protocol instead: one objective (DREAM unless
--objectives names another), one adapt run per seed, each seed drawing its own passages, held-out
validation split and training order (the evaluation data stays the same: --data-seed fixes the Factbook
task). The base and every seed's adapted model are scored per query (cached under --work/eval), and the
nDCG@10 gain over the base gets a paired bootstrap 95% interval: each query's gain averaged over the seeds,
the queries resampled with replacement. Writes results/adapt_seeds.json, for each corpus (a corpus measured
by an earlier invocation with other --datasets is kept)
{"base", "seeds": {seed: metrics}, "mean", "gain_ci95": [low, high], "settings"}. Seed N runs in
WORK/CORPUS/seeds/OBJECTIVE-seedN, apart from the comparison's runs (WORK/CORPUS/OBJECTIVE; with one seed
N other than 0, WORK/CORPUS/OBJECTIVE-seedN). "seeds" are the checkpoints adapt kept (--keep; by default the last,
or the validated one where the validation ended below its start) as trained; averaged with the base they are
the variants "kept checkpoint, base weight W" (--base_weights), and --validated_too / --final_too add every
seed's validated / last checkpoint. --against WORK2 adds, for the seeds and each variant, the paired interval
of the gain over the same runs of another setting measured in WORK2 (e.g. --dream_target proximal against
adapt's default target).
"""

from __future__ import annotations

import datetime
import shutil
from dataclasses import asdict, dataclass, field, replace
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamir import precision as compute
from dreamir.adapt import TIE_BREAKER, VALIDATION_METRIC, AdaptArguments, adapt
from dreamir.adapt.averaging import average_checkpoint
from dreamir.cli import ArgumentParser
from dreamir.data.beir import BeirDataset, load_beir
from dreamir.datasets.factbook import build_factbook
from dreamir.evaluation import (
    evaluate_encoder,
    format_results_table,
    mean_metrics,
    paired_bootstrap_gain,
    per_query_metrics,
)
from dreamir.io import read_log_rows, write_json_atomic
from dreamir.models import MINILM, SMOLLM2
from dreamir.plots import plot_training_curves
from dreamir.stages import Stages
from dreamir.trainer import Trainer
from dreamir.workflow import evaluate_model, read_json, retrieval_run

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
    out: str | None = option(
        None,
        "results file; the curves go beside it (default: results/adapt.json, results/adapt_seeds.json with "
        "more than one seed)",
    )
    beir: str = option("../shared/data/beir/scifact", "SciFact (BEIR layout)")
    datasets: str = option("scifact,factbook", "corpora to adapt to, comma-separated")
    objectives: str | None = option(
        None,
        "objectives, comma-separated (autoregembed-ic: information compression); default: dream,infonce,"
        "replug, or with more than one seed the one objective the seeds measure, dream",
    )
    seeds: str = option(
        "0",
        "adapt seeds, comma-separated: each draws its own passages, held-out validation split and training "
        "order; more than one runs the seeds protocol (per-query nDCG@10, paired bootstrap interval)",
    )
    data_seed: int = option(0, "seeds the Factbook task (corpus split, evaluation questions), for every seed")
    resamples: int = option(10_000, "seeds protocol: bootstrap resamples of the queries")
    bootstrap_seed: int = option(0, "seeds protocol: seeds the bootstrap")
    recipe: str | None = option(None, "how examples are made from a corpus: genq, ict (default: adapt's)")
    max_steps: int | None = option(None, "default: adapt's")
    lora: bool | None = option(None, "train LoRA adapters instead of all weights (default: adapt's)")
    max_passages: int | None = option(None, "default: adapt's")
    learning_rate: float | None = option(None, "default: adapt's")
    refresh_every: int | None = option(None, "default: adapt's")
    refresh_after: int | None = option(None, "default: adapt's")
    examples_per_passage: int | None = option(None, "default: adapt's")
    batch_size: int | None = option(None, "default: adapt's")
    dream_candidates: str | None = option(None, "default: adapt's")
    anchor_weight: float | None = option(None, "default: adapt's")
    dream_target: str | None = option(None, "default: adapt's")
    proximal_step: float | None = option(None, "default: adapt's")
    target_text: str | None = option(None, "default: adapt's")
    query_examples: str | None = option(
        None, "genq: worked (passage, query) examples shown to the generator, JSONL (default: adapt's)"
    )
    query_instruction: str | None = option(
        None, "genq: the instruction asking for a query (default: adapt's)"
    )
    validation_examples: int | None = option(None, "default: adapt's")
    validation_docs: int | None = option(None, "default: adapt's")
    validate_every: int | None = option(None, "default: adapt's")
    head_examples: int | None = option(None, "default: adapt's")
    target_words: int | None = option(None, "default: adapt's")
    max_target_tokens: int | None = option(None, "default: adapt's")
    ict_target: str | None = option(None, "default: adapt's")
    document_layout: str | None = option(None, "default: adapt's")
    heads: str | None = option(None, "head file; default: adapt's (scored on the generated examples)")
    precision: str | None = option(
        None, "compute dtype of every stage: auto, float32, bfloat16 (default: adapt's)"
    )
    track_labelled: bool = option(
        True,
        "measure the labelled nDCG@10 at each validation (DREAM only; in the seeds protocol every seed's, "
        "and the Pearson correlation with the label-free validation over all their checkpoints)",
    )
    train_only: int | None = option(
        None,
        "seeds protocol: run this one of --seeds (its adapt run and its scores) and write no summary, so that "
        "seeds can run in separate processes, one a core; a last invocation without it reads them all back",
    )
    base_weights: str = option(
        "0.25",
        "seeds protocol: also score every seed's kept checkpoint averaged with the base at these weights "
        "(comma-separated; adapt's --base-weight), each with its own interval",
    )
    against: str | None = option(
        None,
        "seeds protocol: the --work of another setting's protocol on the same corpora and seeds: the paired "
        "interval of the gain over its runs, for the seeds and each variant",
    )
    against_variant: str | None = option(
        None,
        "seeds protocol, with --against: compare the seeds and every variant with this one of the other "
        "setting ('seeds', or e.g. 'kept checkpoint, base weight 0.5', which this run must score too) instead "
        "of with their namesakes",
    )
    keep: str | None = option(None, "the checkpoint adapt writes: auto, last, best (default: adapt's)")
    final_too: bool = option(
        False,
        "seeds protocol, unless --keep last: also score every seed's last checkpoint (what a fixed schedule "
        "keeps), and its averages with the base at --base_weights",
    )
    validated_too: bool = option(
        False,
        "seeds protocol, unless --keep best: also score every seed's validated checkpoint (the best by the "
        "label-free validation), and its averages with the base at --base_weights",
    )
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
    STAGES.run(
        "factbook", directory / "meta.json", lambda: build_factbook(directory, seed=settings.data_seed)
    )
    return directory


def run_dir(settings: Settings, name: str, objective: str, seed: int, protocol: bool = False) -> Path:
    """Each seed's own adapt directory, so each caches and resumes alone. The seeds protocol's runs are apart
    from the comparison's (those of DREAM carry the labelled tracking, measured while they train)."""
    if protocol:
        return Path(settings.work) / name / "seeds" / f"{objective}-seed{seed}"
    return Path(settings.work) / name / (objective if seed == 0 else f"{objective}-seed{seed}")


def adapt_arguments(settings: Settings, corpus: Path, out: Path, objective: str, seed: int) -> AdaptArguments:
    overrides = {
        k: getattr(settings, k)
        for k in (
            "recipe",
            "max_steps",
            "lora",
            "keep",
            "max_passages",
            "learning_rate",
            "refresh_every",
            "refresh_after",
            "examples_per_passage",
            "batch_size",
            "dream_candidates",
            "anchor_weight",
            "dream_target",
            "proximal_step",
            "target_text",
            "query_examples",
            "query_instruction",
            "validation_examples",
            "validation_docs",
            "validate_every",
            "head_examples",
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
        seed=seed,
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


def seeds_summary(base: dict, adapted: dict[int, dict], settings: Settings, metric: str) -> dict:
    """Every seed's mean metrics, their mean and the paired bootstrap interval of the gain over the base."""
    by_seed = {str(seed): mean_metrics(scores) for seed, scores in adapted.items()}
    first = next(iter(by_seed.values()))
    mean = {m: float(np.mean([scores[m] for scores in by_seed.values()])) for m in first}
    low, high = paired_bootstrap_gain(
        {q: s[metric] for q, s in base.items()},
        [{q: s[metric] for q, s in scores.items()} for scores in adapted.values()],
        resamples=settings.resamples,
        seed=settings.bootstrap_seed,
    )
    return {"seeds": by_seed, "mean": mean, "gain_ci95": [low, high]}


def over_reference(settings: Settings, runs: dict, metric: str, variants: dict) -> dict:
    """For the seeds and each variant: its mean, the reference setting's (--against, the same runs' cached
    per-query scores there, or those of --against_variant) and the paired bootstrap interval of the
    difference (each query's score averaged over the seeds in each setting). A variant the reference did not
    score is left out."""
    results = {}
    # The reference's cache names in the other --work: each label's own, or all those of --against_variant.
    fixed = runs[settings.against_variant][1] if settings.against_variant else None
    for label, (scores, systems) in runs.items():
        systems = fixed or systems
        files = {seed: Path(settings.against) / "eval" / f"{systems[seed]}-per-query.json" for seed in scores}
        if not all(f.exists() for f in files.values()):
            continue
        theirs = {seed: read_json(f) for seed, f in files.items()}
        reference = {
            q: float(np.mean([theirs[s][q][metric] for s in theirs])) for q in theirs[next(iter(theirs))]
        }
        low, high = paired_bootstrap_gain(
            reference,
            [{q: s[metric] for q, s in scores[seed].items()} for seed in scores],
            resamples=settings.resamples,
            seed=settings.bootstrap_seed,
        )
        mine = float(np.mean([np.mean([s[metric] for s in scores[seed].values()]) for seed in scores]))
        results[label] = {
            "reference": settings.against_variant or label,
            "mean": mine,
            "reference_mean": float(np.mean(list(reference.values()))),
            "gain_ci95": [low, high],
        }
        if label in variants:
            variants[label]["gain_over_reference_ci95"] = [low, high]
        print(
            f"against {settings.against} ({results[label]['reference']}), {label}: {mine:.4f} vs "
            f"{results[label]['reference_mean']:.4f}, "
            f"paired bootstrap 95% interval of the difference [{low:+.4f}, {high:+.4f}]"
        )
    return results


def pooled_tracking(tracks: list[dict]) -> dict:
    """How the label-free validation follows the labelled nDCG@10 over every seed's checkpoints: the Pearson
    correlation of the two over all of them (each seed's own as well, in its run), and how far the
    checkpoint each seed kept is from its best one."""
    mrr = [v for t in tracks for v in t[TIE_BREAKER]]
    labelled = [v for t in tracks for v in t["labelled_ndcg@10"]]
    return {
        "checkpoints": len(labelled),
        "pearson_mrr_vs_labelled": float(np.corrcoef(mrr, labelled)[0, 1])
        if len(labelled) > 2
        else float("nan"),
        "pearson_by_seed": [t["pearson_mrr_vs_labelled"] for t in tracks],
        "kept_below_best": [t["labelled_best"] - t["labelled_at_chosen"] for t in tracks],
    }


def main() -> None:
    parser = ArgumentParser([Settings], description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: Factbook only, 10 steps, 120 passages, 30 held out, validation over 500 passages",
    )
    settings, extra = parser.parse_args_into_dataclasses(look_for_args_file=False)
    try:
        seeds = [int(s) for s in settings.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds {settings.seeds}: comma-separated whole numbers, e.g. 0,1,2")
    if len(set(seeds)) != len(seeds):
        parser.error(f"--seeds {settings.seeds}: a seed is repeated")
    protocol = len(seeds) > 1
    if settings.train_only is not None and (not protocol or settings.train_only not in seeds):
        parser.error(f"--train_only {settings.train_only}: one of the protocol's --seeds {settings.seeds}")
    settings.objectives = settings.objectives or ("dream" if protocol else "dream,infonce,replug")
    settings.out = settings.out or ("results/adapt_seeds.json" if protocol else "results/adapt.json")
    if protocol and "," in settings.objectives:
        parser.error("the seeds protocol measures one objective: give one with --objectives")
    if protocol and settings.objectives in COMPRESS_RETRIEVER:
        parser.error(
            f"the seeds protocol compares with the base retriever; {settings.objectives} starts elsewhere"
        )
    if extra.quick:
        settings.datasets, settings.max_steps, settings.max_passages = "factbook", 10, 120
        # Small enough for a few minutes a seed on one thread (held-out examples must leave some to train).
        settings.validation_examples, settings.validation_docs, settings.validate_every = 30, 500, 5
        settings.head_examples = 8
        settings.work, settings.out = settings.work + "-quick", settings.out.replace(".json", "_quick.json")
    torch.set_num_threads(settings.threads)
    if protocol:
        seeds_protocol(settings, seeds)
    else:
        compare_objectives(settings, seeds[0])


def compare_objectives(settings: Settings, seed: int) -> None:
    """Every objective on the same examples, BM25 and the base beside them; the labelled tracking."""
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
            out = run_dir(settings, name, objective, seed)
            if first is not None:
                for file in EXAMPLE_FILES:
                    if not (out / "work" / file).exists():
                        (out / "work").mkdir(parents=True, exist_ok=True)
                        shutil.copy(first / "work" / file, out / "work" / file)
            arguments = adapt_arguments(settings, directory, out, objective, seed)
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
            out = run_dir(settings, name, objective, seed)
            results[name][objective] = cached_eval(
                work / "eval" / f"{name}-{out.name}.json", str(out / "model"), dataset
            )
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


def seeds_protocol(settings: Settings, seeds: list[int]) -> None:
    """One objective, one adapt run per seed; per-query nDCG@10 of the base and of every seed's model, and
    the paired bootstrap interval of the gain averaged over the seeds."""
    objective = settings.objectives
    metric = "ndcg@10"
    base_weights = [float(w) for w in settings.base_weights.split(",") if w.strip()]
    summary: dict[str, dict] = {}
    table: dict[str, dict[str, dict[str, float]]] = {}
    gains: dict[str, tuple[float, int]] = {}
    for name in settings.datasets.split(","):
        directory = corpus_dir(settings, name)
        dataset = load_beir(directory)
        base = cached_per_query(settings, f"{name}-base", MINILM, dataset)
        adapted: dict[int, dict[str, dict[str, float]]] = {}
        averages: dict[tuple[str, float], dict[int, dict[str, dict[str, float]]]] = {}
        scored: dict[object, dict[int, str]] = {}  # the cache name of every score above, by variant and seed
        runs = {}
        for seed in seeds if settings.train_only is None else [settings.train_only]:
            out = run_dir(settings, name, objective, seed, protocol=True)
            arguments = adapt_arguments(settings, directory, out, objective, seed)
            every = arguments.validate_every or max(arguments.max_steps // 5, 1)
            tracked = settings.track_labelled and objective == "dream"
            report = adapt(
                arguments, [LabelledTracker(dataset, every, arguments.precision)] if tracked else []
            )
            # Where each run is and what its label-free validation kept (step 0: the base came back).
            runs[str(seed)] = {
                "out": str(out),
                "kept": report["validation"].get("kept", "best"),
                "kept_step": report["validation"].get("kept_step", report["validation"]["best_step"]),
                VALIDATION_METRIC: [report["validation"]["start"], report["validation"]["best"]],
                "stage_seconds": report["stage_seconds"],
            }
            if tracked:
                train_dir = out / "work" / "train"
                runs[str(seed)]["tracking"] = tracking_correlation(
                    train_dir / "log.jsonl",
                    read_json(train_dir / "labelled_step0.json"),
                    read_json(train_dir / "validation_step0.json"),
                )
            # The checkpoint adapt kept (its report says which: with --keep auto it can differ by seed), as
            # trained; adapt's OUT/model is it averaged with the base when --base-weight is above 0. The
            # validated checkpoint's cache names predate --keep.
            train_dir = out / "work" / "train"
            checkpoints = {"validated": train_dir / "best", "last": train_dir / "final"}
            cache_names = {"validated": f"{name}-seeds-{out.name}", "last": f"{name}-seeds-{out.name}-last"}
            kept = "last" if report["validation"].get("kept", "best") == "last" else "validated"
            scored.setdefault("seeds", {})[seed] = cache_names[kept]
            adapted[seed] = cached_per_query(settings, cache_names[kept], str(checkpoints[kept]), dataset)
            # Variants: "kept checkpoint, base weight W" averages what adapt kept with the base; --final_too and
            # --validated_too add every seed's last and validated checkpoint, as they are and averaged.
            scoring = [("kept", kept)]
            for kind, wanted in (
                ("last", settings.final_too and arguments.keep != "last"),
                ("validated", settings.validated_too and arguments.keep != "best"),
            ):
                if wanted:
                    scoring.append((kind, kind))
                    scored.setdefault((kind, 0.0), {})[seed] = cache_names[kind]
                    averages.setdefault((kind, 0.0), {})[seed] = cached_per_query(
                        settings, cache_names[kind], str(checkpoints[kind]), dataset
                    )
            for (label, kind), weight in product(scoring, base_weights):
                averaged = out / f"{'model' if kind == 'validated' else 'last'}-base{weight:g}"
                if not (averaged / "dreamir_manifest.json").exists():
                    average_checkpoint(replace(arguments, base_weight=weight), checkpoints[kind], averaged)
                system = f"{name}-seeds-{averaged.parent.name}-{averaged.name}"
                scored.setdefault((label, weight), {})[seed] = system
                averages.setdefault((label, weight), {})[seed] = cached_per_query(
                    settings, system, str(averaged), dataset
                )
        if settings.train_only is not None:
            print(f"{name}: seed {settings.train_only} done; run without --train_only for the summary")
            continue
        result = seeds_summary(base, adapted, settings, metric)
        by_seed, mean, (low, high) = result["seeds"], result["mean"], result["gain_ci95"]
        adapt_settings = {k: v for k, v in asdict(arguments).items() if k not in ("out", "seed")}
        tracks = [r["tracking"] for r in runs.values() if "tracking" in r]
        variants = {
            f"{kind} checkpoint, base weight {weight:g}": seeds_summary(base, scores, settings, metric)
            for (kind, weight), scores in averages.items()
        }
        # Each variant against the plain kept checkpoints, paired by query (and, through the mean over the
        # seeds, by seed): the gain of the variant over what adapt returns without it.
        plain = {q: float(np.mean([adapted[seed][q][metric] for seed in adapted])) for q in base}
        for (kind, weight), scores in averages.items():
            variants[f"{kind} checkpoint, base weight {weight:g}"]["gain_over_kept_ci95"] = list(
                paired_bootstrap_gain(
                    plain,
                    [{q: s[metric] for q, s in scores[seed].items()} for seed in adapted],
                    resamples=settings.resamples,
                    seed=settings.bootstrap_seed,
                )
            )
        if settings.against:
            # Each run's scores beside the cache name it was scored under: the same in the other --work.
            compared = {"seeds": (adapted, scored["seeds"])}
            for (kind, weight), scores in averages.items():
                compared[f"{kind} checkpoint, base weight {weight:g}"] = (scores, scored[(kind, weight)])
            result["against"] = over_reference(settings, compared, metric, variants)
        summary[name] = {
            **({"against": result["against"]} if settings.against else {}),
            **({"tracking": pooled_tracking(tracks)} if tracks else {}),
            **({"variants": variants} if variants else {}),
            "base": mean_metrics(base),
            "seeds": by_seed,
            "mean": mean,
            "gain_ci95": [low, high],
            "settings": {
                "adapt": adapt_settings,
                "seeds": seeds,
                "runs": runs,
                "base": MINILM,
                **({"data_seed": settings.data_seed} if name == "factbook" else {}),
                "bootstrap": {
                    "metric": metric,
                    "queries": len(base),
                    "resamples": settings.resamples,
                    "seed": settings.bootstrap_seed,
                    "confidence": 0.95,
                },
                "date": datetime.date.today().isoformat(),
                "machine": compute.machine_record(all_stages=arguments.precision),
            },
        }
        start = summary[name]["base"][metric]
        table[name] = {"base": summary[name]["base"]} | {
            system: {**scores, "gain": scores[metric] - start}
            for system, scores in [*((f"seed {seed}", s) for seed, s in by_seed.items()), ("mean", mean)]
        }
        for variant, result in variants.items():
            low, high = result["gain_ci95"]
            over_low, over_high = result["gain_over_kept_ci95"]
            table[name][f"mean, {variant}"] = {**result["mean"], "gain": result["mean"][metric] - start}
            print(
                f"{name}: {objective}, {variant}: seeds "
                f"{', '.join(f'{r[metric]:.4f}' for r in result['seeds'].values())}; mean "
                f"{result['mean'][metric]:.4f}, gain interval [{low:+.4f}, {high:+.4f}], over the kept "
                f"checkpoints [{over_low:+.4f}, {over_high:+.4f}]"
            )
        gains[name] = (mean[metric] - start, len(base))
    if not table:
        return
    print(format_results_table(table))
    for name, (gain, queries) in gains.items():
        low, high = summary[name]["gain_ci95"]
        verdict = "a gain" if low > 0 else "a loss" if high < 0 else "not told from noise"
        track = summary[name].get("tracking")
        if track:
            print(
                f"{name}: label-free {TIE_BREAKER} vs labelled nDCG@10 over {track['checkpoints']} checkpoints of "
                f"{len(seeds)} seeds: pearson {track['pearson_mrr_vs_labelled']:.3f}; kept checkpoint below the best "
                f"by {', '.join(f'{d:.4f}' for d in track['kept_below_best'])}"
            )
        print(
            f"{name}: {objective} nDCG@10 gain over the base, mean of {len(seeds)} seeds {gain:+.4f}; "
            f"paired bootstrap 95% interval [{low:+.4f}, {high:+.4f}] ({queries} queries, "
            f"{settings.resamples} resamples): {verdict}"
        )
    # Corpora measured by another invocation (--datasets) stay in the file beside these.
    earlier = read_json(Path(settings.out)) if Path(settings.out).exists() else {}
    write_json_atomic(settings.out, {**earlier, **summary})
    print(f"written {settings.out}")


def cached_per_query(settings: Settings, system: str, model: str, dataset: BeirDataset) -> dict:
    """Every query's metrics of ``model`` on ``dataset`` (per_query_metrics), cached under WORK/eval."""
    path = Path(settings.work) / "eval" / f"{system}-per-query.json"
    return STAGES.json(
        path.stem,
        path,
        lambda: per_query_metrics(dataset.qrels, retrieval_run(model, dataset, show_progress=False)),
    )


def cached_eval(path: Path, model: str, dataset: BeirDataset) -> dict[str, float]:
    return STAGES.json(path.stem, path, lambda: evaluate_model(model, dataset, show_progress=False))


if __name__ == "__main__":
    main()
