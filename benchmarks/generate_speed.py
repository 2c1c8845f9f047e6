"""Query generation speed (adapt's genq stage): dreamir's generator against transformers' own `generate`.

Both write a query for the same SciFact passages with SmolLM2-135M-Instruct, greedy, in one process:
  (a) transformers' `generate` on the whole chat prompts (worked examples, instruction, passage), batches of
      16 left-padded prompts sorted by length: the straightforward way;
  (b) dreamir's `QueryGenerator`: the worked examples' keys and values computed once and shared by every
      passage, only the last prompt position's logits computed, the keys and values in a preallocated cache.
The two are run alternately (a, b, b, a, ...) so that machine noise hits both alike; the figure is the median
over the repeats, and the share of passages for which both wrote the same query is reported (greedy decoding
of the same prompt; float sums in another order can flip a near tie).

    python benchmarks/generate_speed.py            # 128 passages, 3 repeats -> results/generate_speed.json
    python benchmarks/generate_speed.py --quick    # 32 passages, 1 repeat -> results/generate_speed_quick.json
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
from pathlib import Path

import torch

from dreamir import precision as compute
from dreamir.data.beir import read_corpus
from dreamir.io import write_json_atomic
from dreamir.llm.generate import GenerationSettings, QueryGenerator, clean_query
from dreamir.models import SMOLLM2

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = ROOT.parent / "shared" / "data" / "beir" / "scifact" / "corpus.jsonl"


def transformers_generate(generator: QueryGenerator, passages: list, batch_size: int) -> list[str]:
    """(a): each whole prompt through `model.generate`, left-padded batches of similar length."""
    tokenizer, settings = generator.tokenizer, generator.settings
    prompts = [generator._prompt(p) for p in passages]
    order = sorted(range(len(prompts)), key=lambda i: len(tokenizer(prompts[i])["input_ids"]))
    tokenizer.padding_side = "left"
    queries = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = tokenizer(
            [prompts[i] for i in rows], return_tensors="pt", padding=True, add_special_tokens=False
        )
        with torch.no_grad():
            out = generator.model.generate(
                **batch,
                max_new_tokens=settings.max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        for i, reply in zip(rows, out[:, batch["input_ids"].shape[1] :], strict=True):
            queries[i] = clean_query(tokenizer.decode(reply, skip_special_tokens=True))
    return queries


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=128, help="SciFact passages")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--precision", default="auto", choices=compute.PRECISIONS, help=compute.PRECISION_HELP
    )
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "generate_speed.json")
    parser.add_argument("--quick", action="store_true", help="smoke run: 32 passages, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.n, args.repeats = 32, 1
        args.out = args.out.with_name(args.out.stem + "_quick.json")
    torch.set_num_threads(args.threads)
    dtype = compute.resolve(args.precision)
    corpus = read_corpus(args.corpus)
    # Every 10th passage: lengths as the corpus has them, not the first file's neighbours.
    passages = list(corpus.values())[:: max(len(corpus) // args.n, 1)][: args.n]
    settings = GenerationSettings(precision=dtype)
    generator = QueryGenerator(SMOLLM2, settings, show_progress=False)
    runs = {
        "transformers_generate": lambda: transformers_generate(generator, passages, settings.batch_size),
        "dreamir": lambda: generator(passages),
    }
    runs["dreamir"]()  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    outputs: dict[str, list[str]] = {}
    for repeat in range(args.repeats):
        names = list(runs) if repeat % 2 == 0 else list(runs)[::-1]
        for name in names:
            started = time.perf_counter()
            outputs[name] = runs[name]()
            seconds[name].append(time.perf_counter() - started)
            print(f"repeat {repeat + 1}/{args.repeats} {name:>22}: {seconds[name][-1]:7.1f} s", flush=True)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    same = sum(a == b for a, b in zip(outputs["dreamir"], outputs["transformers_generate"], strict=True))
    result = {
        "passages": len(passages),
        "seconds_per_passage": {name: median[name] / len(passages) for name in runs},
        "speedup_over_transformers_generate": median["transformers_generate"] / median["dreamir"],
        "same_query_share": same / len(passages),
        "seconds": seconds,
        "repeats": args.repeats,
        "batch_size": settings.batch_size,
        "max_new_tokens": settings.max_new_tokens,
        "machine": compute.machine_record(generator=dtype),
        "date": datetime.date.today().isoformat(),
    }
    print(f"compute: {compute.describe_compute(result['machine'])}")
    for name in runs:
        print(
            f"{name:>22}: {result['seconds_per_passage'][name]:.3f} s per passage (median of {args.repeats})"
        )
    print(f"speed-up over transformers' generate: {result['speedup_over_transformers_generate']:.2f}x")
    print(f"same query for {same} of {len(passages)} passages")
    write_json_atomic(args.out, result)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
