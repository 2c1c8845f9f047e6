"""AutoRegEmbed's step cost on SmolLM2-135M: information compression (IC) and conditional distribution
alignment (CDA) steps, forward + backward + AdamW, on real Factbook training questions with their BM25
candidates, with compare.py's raw retriever (SmolLM2-135M cut to 6 layers, LoRA r=16, compress pooling,
5 compress tokens, the paper's templates) and the full frozen SmolLM2-135M as the decoder (float32).

Every step takes new examples, so CDA pays its reference scores (the frozen starting model's, computed
once per pair) at every step, as in a one-epoch run. The first step is a warm-up and not counted.

    python benchmarks/autoregembed_step.py --data runs/compare/train_k8.jsonl --corpus runs/compare/factbook
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import torch

from dreamir.arguments import LLMArguments, ModelArguments, ObjectiveArguments
from dreamir.data.sampling import SamplingArguments, step_instances
from dreamir.data.training import read_training_file
from dreamir.io import write_json_atomic
from dreamir.models import SMOLLM2
from dreamir.objectives import AutoRegEmbedOptions
from dreamir.workflow import build_objective, load_corpus, load_retriever


def time_steps(objective_name: str, args: argparse.Namespace) -> dict[str, float]:
    model = ModelArguments(
        retriever=SMOLLM2,
        pooling="compress",
        retriever_layers=args.layers,
        lora=True,
        lora_r=16,
        max_length=256,
    )
    objective = build_objective(
        load_retriever(model),
        ObjectiveArguments(objective=objective_name),
        LLMArguments(precision=args.precision),
        [AutoRegEmbedOptions()],
    )
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=5e-4)
    examples = read_training_file(args.data)
    corpus = load_corpus(args.corpus)
    sampling = SamplingArguments(num_candidates=8)
    seconds = []
    for step in range(args.steps + 1):
        instances = step_instances(examples, corpus, sampling, seed=0, step=step, per_process=args.batch_size)
        start = time.perf_counter()
        output = objective(instances)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        seconds.append(time.perf_counter() - start)
        print(f"{objective_name} step {step}: {seconds[-1]:.2f} s, loss {output.loss.item():.4f}", flush=True)
    timed = seconds[1:]
    return {"median_s": statistics.median(timed), "mean_s": statistics.fmean(timed), "steps": len(timed)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", required=True, help="training file with candidate_ids (compare.py's train_k8.jsonl)"
    )
    parser.add_argument("--corpus", required=True, help="the Factbook BEIR directory the candidates refer to")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per stage (after one warm-up)")
    parser.add_argument("--batch-size", type=int, default=2, help="questions per step (compare.py's)")
    parser.add_argument("--layers", type=int, default=6, help="retriever layers kept (compare.py's raw: 6)")
    parser.add_argument("--precision", default="float32", help="the frozen decoder's: float32, bfloat16")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads torch may use")
    parser.add_argument("--out", default="results/autoregembed_step.json", help="results file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {name: time_steps(name, args) for name in ("autoregembed-ic", "autoregembed-cda")}
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "settings": vars(args),
    }
    write_json_atomic(args.out, {"results": results, "meta": meta})
    for name, result in results.items():
        print(f"{name}: median {result['median_s']:.2f} s per step over {result['steps']} steps")


if __name__ == "__main__":
    main()
