"""DREAM step cost against its floor, in one process.

Times, on SmolLM2-135M with K candidates of (up to) 128 tokens and a target of at most 16 tokens:
  (a) the reference step: the whole prompt forward + backward with autograd,
  (b) the optimised step: the documents prefix once without autograd (KV cache), then only the query +
      target suffix with autograd (the default in training),
  (c) the floor: one no-grad forward of the same prompts through the LLM.
(a) and (b) include the retriever's forward and backward (all-MiniLM-L6-v2), as in training.
Peak memory is the process's resident-set growth over its level before each measurement, sampled every
2 ms (CPU), or torch.cuda.max_memory_allocated on a GPU.

    python benchmarks/step_speed.py            # writes results/step_speed.json
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import threading
import time
from pathlib import Path

import torch

from dreamir.data.beir import load_beir
from dreamir.io import write_json_atomic
from dreamir.llm.frozen import FrozenLLM
from dreamir.models import MINILM, SMOLLM2, resolve_model
from dreamir.objectives import DreamLoss, TrainingInstance
from dreamir.retriever import Retriever

PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakMemory:
    """Peak extra memory while the block runs (RSS sampled on CPU; the allocator's peak on CUDA)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak = device, 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base, self.top, self.running = _rss(), _rss(), True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.top = max(self.top, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.running = False
            self.thread.join()
            self.peak = max(self.top, _rss()) - self.base


def _instances(args) -> list[TrainingInstance]:
    dataset = load_beir(args.beir)
    documents = [d for d in dataset.corpus.values() if len(d.text.split()) > 150]  # fill 128 tokens
    queries = list(dataset.queries.values())
    return [
        TrainingInstance(
            queries[i], "The claim is supported by the evidence.", documents[i * args.k : (i + 1) * args.k]
        )
        for i in range(args.batch_size * (args.repeats + 1))
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--beir", default="../shared/data/beir/scifact")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--num-heads", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="results/step_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    llm = FrozenLLM.from_pretrained(SMOLLM2, device=device)
    # Heads spread over the upper two thirds of the network, as query-focused heads typically are; the cost
    # depends on how many layers carry a head and on the lowest one, not on which heads they are.
    layers = range(llm.num_layers // 3, llm.num_layers)
    llm.set_heads(
        [(layers[i * len(layers) // args.num_heads], i % llm.num_heads) for i in range(args.num_heads)]
    )
    retriever = Retriever.from_pretrained(resolve_model(MINILM), device=device)
    objective = DreamLoss(retriever, llm)
    instances = _instances(args)
    batches = [instances[i : i + args.batch_size] for i in range(0, len(instances), args.batch_size)]
    prompts = [
        llm.collate([llm.encode(x.query, [(d.title, d.text) for d in x.documents], x.target) for x in b])
        for b in batches
    ]

    def step(reuse_prefix: bool, batch):
        objective.reuse_prefix = reuse_prefix
        objective.zero_grad(set_to_none=True)
        objective(batch).loss.backward()

    def floor(batch_index: int, _batch):
        with torch.no_grad():
            p = prompts[batch_index]
            llm.model.model(
                input_ids=p.input_ids, attention_mask=p.attention_mask, position_ids=p.position_ids
            )

    def measure(fn) -> tuple[float, int]:
        fn(0, batches[0])  # warm-up
        times, peaks = [], []
        for i, batch in enumerate(batches[1:], start=1):
            with PeakMemory(device) as memory:
                started = time.perf_counter()
                fn(i, batch)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - started)
            peaks.append(memory.peak)
        return statistics.median(times), max(peaks)

    reference_s, reference_mem = measure(lambda i, b: step(False, b))
    optimized_s, optimized_mem = measure(lambda i, b: step(True, b))
    floor_s, floor_mem = measure(floor)
    tokens = int(prompts[0].attention_mask.sum()) // args.batch_size
    result = {
        "reference_s": reference_s,
        "optimized_s": optimized_s,
        "floor_s": floor_s,
        "optimized_over_floor": optimized_s / floor_s,
        "speedup_over_reference": reference_s / optimized_s,
        "reference_peak_mb": reference_mem / 2**20,
        "optimized_peak_mb": optimized_mem / 2**20,
        "floor_peak_mb": floor_mem / 2**20,
        "k": args.k,
        "batch_size": args.batch_size,
        "num_heads": args.num_heads,
        "prompt_tokens_per_example": tokens,
        "repeats": args.repeats,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": args.threads,
        "torch_version": torch.__version__,
        "machine": platform.machine(),
        "date": datetime.date.today().isoformat(),
    }
    print(
        f"prompt ~{tokens} tokens/example, K={args.k}, batch {args.batch_size}, {args.num_heads} heads, {result['device']}"
    )
    print(f"(a) reference step   median {reference_s:7.3f} s   peak +{result['reference_peak_mb']:8.1f} MB")
    print(f"(b) optimised step   median {optimized_s:7.3f} s   peak +{result['optimized_peak_mb']:8.1f} MB")
    print(f"(c) no-grad forward  median {floor_s:7.3f} s   peak +{result['floor_peak_mb']:8.1f} MB")
    print(f"optimized_over_floor b/c = {result['optimized_over_floor']:.2f}   (goal <= 1.5)")
    print(f"speedup_over_reference a/b = {result['speedup_over_reference']:.2f}   (goal >= 2)")
    write_json_atomic(Path(args.out), result)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
