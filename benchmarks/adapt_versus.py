"""Two settings of the seeds protocol against each other, from the per-query scores `benchmarks/adapt.py`
cached under each --work's eval/ (nothing is trained or encoded here).

A setting is WORK:VARIANT, VARIANT one of "kept" (the kept checkpoints as trained) or "baseW" (averaged with the
base at weight W, e.g. base0.25). For each corpus: every seed of both, their means, and the paired bootstrap
95% interval of the difference (each query's nDCG@10 averaged over the seeds in each setting, queries
resampled), as `benchmarks/adapt.py --against` does for variants of the same name.

    python benchmarks/adapt_versus.py runs/adapt-seeds-batch:base0.25 runs/adapt-seeds:base0.5
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dreamir.evaluation import paired_bootstrap_gain


def per_query(work: str, dataset: str, seed: int, variant: str, metric: str) -> dict[str, float]:
    suffix = "" if variant == "kept" else f"-model-{variant}"
    path = Path(work) / "eval" / f"{dataset}-seeds-dream-seed{seed}{suffix}-per-query.json"
    if not path.exists():
        raise SystemExit(f"{path}: not scored (run benchmarks/adapt.py --seeds with that setting first)")
    return {query: scores[metric] for query, scores in json.loads(path.read_text()).items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("setting", help="WORK:VARIANT measured")
    parser.add_argument("reference", help="WORK:VARIANT it is compared with")
    parser.add_argument("--datasets", default="factbook,scifact")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--metric", default="ndcg@10")
    parser.add_argument("--resamples", type=int, default=10_000)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    (work, variant), (ref_work, ref_variant) = (s.rsplit(":", 1) for s in (args.setting, args.reference))
    for dataset in args.datasets.split(","):
        mine = [per_query(work, dataset, seed, variant, args.metric) for seed in seeds]
        theirs = [per_query(ref_work, dataset, seed, ref_variant, args.metric) for seed in seeds]
        reference = {q: float(np.mean([scores[q] for scores in theirs])) for q in theirs[0]}
        low, high = paired_bootstrap_gain(reference, mine, resamples=args.resamples)
        means = [float(np.mean(list(scores.values()))) for scores in mine]
        print(
            f"{dataset}: {args.setting} seeds {' / '.join(f'{m:.4f}' for m in means)}, mean {np.mean(means):.4f}; "
            f"{args.reference} mean {np.mean(list(reference.values())):.4f}; "
            f"paired bootstrap 95% interval of the difference [{low:+.4f}, {high:+.4f}]"
        )


if __name__ == "__main__":
    main()
