"""The paper's ablations of DREAM on the warm retriever, all else identical to benchmarks/compare.py:
query-focused heads vs random heads of the same count; 4 / 16 / 64 heads; K = 4 / 8 / 16 candidates;
injection modes preserve / replace / prior; temperature 0.02 / 0.05 / 0.1.

    python benchmarks/ablate.py --quick      # smoke run
    python benchmarks/ablate.py              # writes results/ablate.json and results/ablate_curves.png
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from compare import (
    STAGES,
    Settings,
    candidates_file,
    datasets_for,
    evaluate_system,
    option,
    parse,
    prepare,
    report,
    system_arguments,
    train_system,
)
from transformers import AutoConfig

from dreamir.llm.heads import random_heads
from dreamir.models import SMOLLM2, resolve_model


@dataclass
class AblationSettings(Settings):
    # Shares data, candidates, heads and the default DREAM run with compare.py.
    work: str = option("runs/compare", "cache of every stage, shared with compare.py")
    out: str = option("results/ablate.json", "results file; the curves go beside it")
    setups: str = option("warm", "retriever set-up")
    # Held-out Factbook only by default: SciFact adds ~4.5 min of encoding per variant on 2 CPU cores.
    eval_scifact: bool = option(False, "also evaluate on SciFact")
    variants: str = option(
        "all",
        "all, or a comma-separated subset of: default,random,h4,h64,k4,k16,replace,prior,tau0.02,tau0.1",
    )


def main() -> None:
    settings = parse(AblationSettings, __doc__)
    if settings.jobs != 1:
        raise SystemExit("--jobs: ablate.py trains one system at a time (compare.py can run several)")
    torch.set_num_threads(settings.threads)
    data, _, heads = prepare(settings)
    datasets = datasets_for(settings, data)
    work = Path(settings.work)
    random_file = work / "heads_random.json"

    def draw_random_heads() -> None:
        config = AutoConfig.from_pretrained(resolve_model(SMOLLM2))
        random_heads(
            config.num_hidden_layers, config.num_attention_heads, settings.num_heads, settings.seed, SMOLLM2
        ).save(random_file)

    STAGES.run("random heads", random_file, draw_random_heads)

    # name for --variants: (label in the table, run directory, objective overrides, training overrides)
    variants = {
        "default": ("default (16 QR heads, K=8, preserve, tau=0.05)", "warm-dream", {}, {}),
        "random": ("random heads (16)", "warm-dream-random16", {"heads": str(random_file)}, {}),
        "h4": ("4 QR heads", "warm-dream-h4", {"num_heads": 4}, {}),
        "h64": ("64 QR heads", "warm-dream-h64", {"num_heads": 64}, {}),
        "k4": ("K=4", "warm-dream-k4", {}, {"num_candidates": 4}),
        "k16": ("K=16", "warm-dream-k16", {}, {"num_candidates": 16}),
        "replace": ("mode replace", "warm-dream-replace", {"injection_mode": "replace"}, {}),
        "prior": ("mode prior", "warm-dream-prior", {"injection_mode": "prior"}, {}),
        "tau0.02": ("tau=0.02", "warm-dream-tau0.02", {"temperature": 0.02}, {}),
        "tau0.1": ("tau=0.1", "warm-dream-tau0.1", {"temperature": 0.1}, {}),
    }
    if settings.variants != "all":
        wanted = settings.variants.split(",")
        unknown = sorted(set(wanted) - set(variants))
        if unknown:
            raise SystemExit(f"unknown --variants {unknown}; choose from {sorted(variants)}")
        variants = {name: spec for name, spec in variants.items() if name in wanted}
    results: dict[str, dict[str, dict[str, float]]] = {name: {} for name in datasets}
    train_seconds: dict[str, float] = {}
    logs: dict[str, Path] = {}
    for label, run, dream_overrides, training_overrides in variants.values():
        k = training_overrides.get("num_candidates", settings.num_candidates)
        train = candidates_file(settings, data, k)
        system = system_arguments(settings, train, data, heads, **dream_overrides)
        final, train_seconds[label] = train_system(settings, run, "warm", system, **training_overrides)
        logs[label] = final.parent / "log.jsonl"
        for dataset_name, metrics in evaluate_system(settings, run, str(final), datasets).items():
            results[dataset_name][label] = metrics
    report(settings, results, train_seconds, logs, "ablate")


if __name__ == "__main__":
    main()
