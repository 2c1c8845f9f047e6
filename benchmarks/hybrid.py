"""Hybrid search against both of its parts: BM25 fused with a dense model by reciprocal rank fusion (the
default of `dreamir eval --hybrid`) and by score interpolation at a few dense weights, on SciFact's test
queries and on the held-out Factbook questions, with the base retriever and with adapted ones.

    python benchmarks/hybrid.py --quick     # smoke run: Factbook, 40 questions
    python benchmarks/hybrid.py --adapted scifact=runs/quickstart/adapt/model
                                            # base on both corpora, and the quickstart's adapted model

Every system's top 100 per query is kept as a TREC run under --work (reused when there), so fusing costs
no encoding. Writes results/hybrid.json: per corpus, each system's nDCG@10, Recall@100 and MRR@10, and for
the default fusion (`dreamir eval --hybrid`) of each dense model a paired bootstrap 95% interval of its
nDCG@10 gain over each of its two parts (queries resampled).
"""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from dreamir import precision as compute
from dreamir.cli import ArgumentParser
from dreamir.data.beir import BeirDataset, load_beir
from dreamir.datasets.factbook import build_factbook
from dreamir.evaluation import (
    format_results_table,
    mean_metrics,
    paired_bootstrap_gain,
    per_query_metrics,
)
from dreamir.io import write_json_atomic
from dreamir.models import MINILM
from dreamir.search import fuse_runs
from dreamir.search.fusion import DEFAULT_FUSION, default_weight
from dreamir.search.runs import read_trec_run, write_trec_run
from dreamir.stages import Stages
from dreamir.workflow import retrieval_run

STAGES = Stages()


def option(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class Settings:
    work: str = option("runs/hybrid", "where each system's run is kept")
    out: str = option("results/hybrid.json", "results file")
    beir: str = option("../shared/data/beir/scifact", "SciFact (BEIR layout)")
    datasets: str = option("scifact,factbook", "corpora, comma-separated: scifact, factbook")
    base: str = option(MINILM, "the dense retriever every corpus starts from")
    adapted: str = option("", "adapted retrievers per corpus: scifact=DIR,factbook=DIR (each optional)")
    weights: str = option(
        "0.3,0.5,0.7,0.8,0.9", "the dense weights tried, comma-separated (rrf and interpolation)"
    )
    max_queries: int = option(0, "evaluate only the first N queries (0: all)")
    seed: int = option(0, "seeds the Factbook build (its held-out countries)")
    threads: int = option(2, "CPU threads")


def dataset(settings: Settings, name: str) -> BeirDataset:
    if name == "scifact":
        data = load_beir(settings.beir)
    else:
        directory = Path(settings.work) / "factbook-data"
        STAGES.run("factbook", directory / "meta.json", lambda: build_factbook(directory, seed=settings.seed))
        data = load_beir(directory)
    if settings.max_queries:
        kept = list(data.queries)[: settings.max_queries]
        data.queries = {q: data.queries[q] for q in kept}
        data.qrels = {q: data.qrels[q] for q in kept if q in data.qrels}
    return data


def cached_run(settings: Settings, name: str, label: str, model: str, data: BeirDataset) -> dict:
    path = Path(settings.work) / f"{name}-{label}-q{len(data.queries)}.trec"
    STAGES.run(f"run {name} {label}", path, lambda: write_trec_run(retrieval_run(model, data), path))
    return read_trec_run(path)


def main() -> None:
    parser = ArgumentParser([Settings], description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke run: Factbook, 40 questions")
    settings, extra = parser.parse_args_into_dataclasses(look_for_args_file=False)
    if extra.quick:
        settings.datasets, settings.max_queries = "factbook", 40
        settings.work, settings.out = settings.work + "-quick", settings.out.replace(".json", "_quick.json")
    torch.set_num_threads(settings.threads)
    adapted = dict(item.split("=", 1) for item in settings.adapted.split(",") if item)
    weights = [float(w) for w in settings.weights.split(",") if w]
    results: dict[str, dict[str, dict[str, float]]] = {}
    gains: dict[str, dict[str, dict[str, list[float]]]] = {}
    for name in settings.datasets.split(","):
        data = dataset(settings, name)
        runs = {"bm25": cached_run(settings, name, "bm25", "bm25", data)}
        dense = {"base": settings.base, **({"adapted": adapted[name]} if name in adapted else {})}
        for label, model in dense.items():
            runs[label] = cached_run(settings, name, label, model, data)
        for label in dense:
            for method in ("rrf", "interpolation"):
                for weight in weights:
                    runs[f"bm25+{label} {method[:6]} {weight:g}"] = fuse_runs(
                        runs["bm25"], runs[label], method=method, weight=weight
                    )
        # Each run scored once, per query: the table's means and the intervals' pairs come from the same scores.
        per_query = {label: per_query_metrics(data.qrels, run) for label, run in runs.items()}
        results[name] = {label: mean_metrics(scores) for label, scores in per_query.items()}
        ndcg = {label: {q: m["ndcg@10"] for q, m in scores.items()} for label, scores in per_query.items()}
        gains[name] = {}
        for label in dense:
            fused = f"bm25+{label}"
            ndcg[fused] = {
                q: m["ndcg@10"]
                for q, m in per_query_metrics(data.qrels, fuse_runs(runs["bm25"], runs[label])).items()
            }
            gains[name][fused] = {
                f"over {part}": list(paired_bootstrap_gain(ndcg[part], [ndcg[fused]]))
                for part in ("bm25", label)
            }
            for part, interval in gains[name][fused].items():
                print(
                    f"{name} {fused} (default fusion) nDCG@10 gain {part}: 95% interval [{interval[0]:+.4f}, {interval[1]:+.4f}]"
                )
    print(format_results_table(results))
    meta = {
        "settings": asdict(settings),
        "date": datetime.date.today().isoformat(),
        "machine": compute.machine_record(retriever="float32"),
        "default_fusion": f"{DEFAULT_FUSION}, dense weight {default_weight(DEFAULT_FUSION)}",
    }
    write_json_atomic(settings.out, {"results": results, "default_fusion_gain_ci95": gains, "meta": meta})
    print(f"hybrid: {settings.out}")


if __name__ == "__main__":
    main()
