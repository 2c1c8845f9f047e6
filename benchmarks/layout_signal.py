"""Does DREAM's training signal survive the parallel layout and bf16? (issue 12, a short quality check)

For Factbook training questions with the gold passage among 8 candidates (BM25's top 7 plus the gold, in a
shuffled order, as head calibration builds them), the frozen LLM with 16 query-focused heads scores the
target at uniform p. Per configuration it reports the mean target loss (nats), how often the gold
candidate gets the largest gradient -dL/dp_k (the direction DREAM moves the retriever), and, against the
first configuration, the mean cosine of the gradients -dL/dp. No retriever is involved.

    python benchmarks/layout_signal.py --factbook runs/compare/factbook --heads runs/compare/heads_qr.json \\
        [--parallel-heads heads_qr_parallel.json] [--examples 48]
"""

from __future__ import annotations

import argparse
import datetime
import time

import torch

from dreamir.data.training import read_training_file
from dreamir.io import write_json_atomic
from dreamir.llm.frozen import FrozenLLM
from dreamir.llm.heads import HeadSet
from dreamir.llm.prompt import PromptSettings
from dreamir.models import SMOLLM2
from dreamir.workflow import calibration_examples, load_corpus

CONFIGURATIONS = {
    "sequential float32": ("sequential", "float32"),
    "parallel float32": ("parallel", "float32"),
    "parallel bfloat16": ("parallel", "bfloat16"),
}


def gradients(llm: FrozenLLM, examples, targets, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: the target loss at uniform p and -dL/dp (a [N, K] tensor)."""
    losses, grads = [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = llm.collate(
            [llm.encode(e.query, e.documents, t) for e, t in zip(chunk, targets[start:], strict=False)]
        )
        probs = torch.full(batch.candidate_mask.shape, 1 / batch.num_candidates, requires_grad=True)
        loss = llm.target_loss(batch, probs, reduction="example")
        loss.sum().backward()
        losses.append(loss.detach())
        grads.append(-probs.grad)
    return torch.cat(losses), torch.cat(grads)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--factbook", required=True)
    parser.add_argument("--heads", required=True, help="head file scored in the sequential layout")
    parser.add_argument("--parallel-heads", help="head file scored in the parallel layout (optional)")
    parser.add_argument("--examples", type=int, default=48)
    parser.add_argument("--num-heads", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="results/layout_signal.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    corpus = load_corpus(args.factbook)
    # Training questions beyond the first 200 (the ones compare.py trains on), with a gold passage.
    train = [e for e in read_training_file(f"{args.factbook}/train.jsonl")[200:] if e.gold_id][
        : args.examples
    ]
    examples = calibration_examples(train, corpus, 8, seed=0)
    targets = [e.target for e in train]
    gold = torch.tensor([e.gold_index for e in examples])
    configurations = dict(CONFIGURATIONS)
    if args.parallel_heads:
        configurations["parallel float32, parallel heads"] = ("parallel", "float32")
    base = FrozenLLM.from_pretrained(SMOLLM2)
    results, reference = {}, None
    for name, (layout, precision) in configurations.items():
        head_file = args.parallel_heads if "parallel heads" in name else args.heads
        heads = HeadSet.load(head_file).top(args.num_heads)
        llm = FrozenLLM(
            base.model,
            base.tokenizer,
            heads,
            prompt=PromptSettings(document_layout=layout),
            precision=precision,
        )
        started = time.perf_counter()
        loss, grad = gradients(llm, examples, targets, args.batch_size)
        seconds = time.perf_counter() - started
        reference = grad if reference is None else reference
        results[name] = {
            "mean_target_loss": float(loss.mean()),
            "gold_top_gradient": float((grad.argmax(-1) == gold).float().mean()),
            "gradient_cosine_vs_first": float(
                torch.nn.functional.cosine_similarity(grad, reference, dim=-1).mean()
            ),
            "seconds": seconds,
        }
        row = results[name]
        print(
            f"{name:36s} loss {row['mean_target_loss']:.3f}  gold top gradient {row['gold_top_gradient']:.1%}  "
            f"cosine vs first {row['gradient_cosine_vs_first']:.3f}  ({seconds:.0f} s)"
        )
    meta = {"examples": len(examples), "num_heads": args.num_heads, "date": datetime.date.today().isoformat()}
    write_json_atomic(args.out, {"results": results, "meta": meta})
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
