"""How sharp is REPLUG-LSR's teacher? On the training questions of benchmarks/compare.py (its cached
work directory), the target q = softmax(log P_LLM(target | d_k, query) / beta) next to the warm
retriever's p = softmax(s_k / tau) before training and after each objective: mean entropy over the K
candidates, mean probability on the gold and how often the gold ranks first (questions whose gold is
among the candidates).

    python benchmarks/compare.py --setups warm   # first: the runs this reads
    python benchmarks/replug_target.py           # writes results/replug_target.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tqdm import tqdm

from dreamir.data.training import read_training_file
from dreamir.io import write_json_atomic
from dreamir.llm.frozen import FrozenLLM
from dreamir.models import MINILM, SMOLLM2, resolve_model
from dreamir.objectives import ReplugLoss, TrainingInstance
from dreamir.retriever import Retriever
from dreamir.workflow import load_corpus


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", default="runs/compare")
    parser.add_argument("--out", default="results/replug_target.json")
    parser.add_argument("--num-candidates", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    retrievers = {
        "p: warm base": resolve_model(MINILM),
        **{
            f"p: after warm {o}": work / "runs" / f"warm-{o}" / "final"
            for o in ("dream", "infonce", "replug")
        },
    }
    needed = [
        work / "factbook",
        work / f"train_k{args.num_candidates}.jsonl",
        *map(Path, retrievers.values()),
    ]
    missing = [str(path) for path in needed if not path.exists()]
    if missing:
        raise SystemExit(f"run benchmarks/compare.py first: missing {', '.join(missing)}")
    corpus = load_corpus(work / "factbook")
    instances = []
    for example in read_training_file(work / f"train_k{args.num_candidates}.jsonl"):
        ids = example.candidate_ids[: args.num_candidates]
        if example.gold_id in ids:
            documents = [corpus[i] for i in ids]
            instances.append(
                TrainingInstance(example.query, example.target, documents, ids.index(example.gold_id))
            )
    # One objective for every retriever: the LLM's judgements (cached inside it) do not depend on it.
    objective = ReplugLoss(
        Retriever.from_pretrained(resolve_model(MINILM)), FrozenLLM.from_pretrained(SMOLLM2)
    )
    batches = [instances[s : s + args.batch_size] for s in range(0, len(instances), args.batch_size)]
    rows: dict[str, dict[str, float]] = {}
    for name, path in retrievers.items():
        objective.retriever = Retriever.from_pretrained(path).eval()
        sums: dict[str, float] = {}
        with torch.no_grad():
            for batch in tqdm(batches, desc=name):
                for key, value in objective(batch).logs.items():
                    sums[key] = sums.get(key, 0.0) + value * len(batch)
        logs = {key: value / len(instances) for key, value in sums.items()}
        rows[name] = {k: logs[k] for k in ("entropy", "p_gold", "gold_top1")}
        target = {k: logs[f"target_{k}"] for k in ("entropy", "p_gold", "gold_top1")}
    rows["q: REPLUG-LSR target (beta 1)"] = target
    print(f"{len(instances)} training questions with the gold among {args.num_candidates} candidates")
    print(f"{'distribution':<34} {'entropy':>8} {'p_gold':>8} {'gold_top1':>9}")
    for name, row in rows.items():
        print(f"{name:<34} {row['entropy']:8.3f} {row['p_gold']:8.3f} {row['gold_top1']:9.3f}")
    write_json_atomic(args.out, {"questions": len(instances), "rows": rows})
    print(f"replug_target: {args.out}")


if __name__ == "__main__":
    main()
