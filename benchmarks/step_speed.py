"""DREAM step cost against its floor, in one process.

Times, on SmolLM2-135M with K candidates of (up to) 128 tokens and a target of at most 16 tokens:
  (a) the reference step: the whole prompt forward + backward with autograd,
  (b) the optimised step: the documents prefix once without autograd (KV cache), then only the query +
      target suffix with autograd (the sequential layout's step),
  (c) the floor: one no-grad forward of the same prompts through the LLM (float32, sequential layout),
  (c') where --precision resolves to bf16: the floor in bf16 too, so that (d) is divided by a floor of its
      own dtype family,
  (d) the new step: parallel document layout in --precision (default auto: bf16 where the processor computes
      it natively, float32 elsewhere; injected heads always float32), every candidate's keys and values read
      from a warm on-disk document cache; only the query + target run through the LLM; the retriever in the
      same precision (the default step in training),
  (d') (d) with the retriever in the other precision, only where bf16 is native (elsewhere emulated bf16
      would take tens of times longer and say nothing about a real run),
  (e) the document cache's build rate: the same candidates encoded once (--precision, batches of 8) and stored,
  (f) (d) with in-batch candidates (--dream-candidates batch): every prompt holds every distinct candidate of
      the batch (batch size x K here, none shared) and p covers all of them; the same documents are read from
      the cache, the suffix attends to more cached keys,
  (g) (f) with DREAM's target at uniform p (--dream-target uniform): the LLM's slope is taken at uniform p
      (a backward through the suffix to p alone) and the retriever's loss is KL to it, with no LLM pass at
      the retriever's p.
(a), (b), (d), (d'), (f) and (g) include the retriever's forward and backward (all-MiniLM-L6-v2; float32 in (a) and
(b)) in training mode, as the trainer runs it (dropout on; on a CPU eager attention). The steps are
interleaved: each batch goes through (a), (b), (c), the retriever alone, (d), (d'), (f) and (g) in turn, so that all
of them meet the process in the same state. The processor (its vector instruction set, whether bf16 is
native) and every dtype are printed and recorded. Peak memory is the growth of the heap in use (glibc mallinfo2,
sampled every 5 ms) over its level before each measurement on CPU, or torch.cuda.max_memory_allocated on a
GPU.

    python benchmarks/step_speed.py            # writes results/step_speed.json
    python benchmarks/step_speed.py --quick    # 2 timed repeats instead of 5 (a smoke run)
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import datetime
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from dreamir import precision as compute
from dreamir.data.beir import Document, load_beir
from dreamir.io import write_json_atomic
from dreamir.llm.frozen import FrozenLLM
from dreamir.llm.prompt import PromptSettings
from dreamir.models import MINILM, SMOLLM2, resolve_model
from dreamir.objectives import DreamLoss, TrainingInstance
from dreamir.retriever import Retriever


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


_libc = ctypes.CDLL(ctypes.util.find_library("c"))
_libc.mallinfo2.restype = _MallInfo2


def _heap_in_use() -> int:
    """Bytes glibc's malloc has handed out and not taken back (torch's CPU tensors live there); unlike
    the resident set size it falls when tensors are freed, so consecutive measurements do not mask each other."""
    info = _libc.mallinfo2()
    return info.uordblks + info.hblkhd


class PeakMemory:
    """Peak extra memory while the block runs: heap in use sampled every 5 ms on CPU, the
    allocator's peak on CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak = device, 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.top = _heap_in_use()
            self.running = True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.top = max(self.top, _heap_in_use())
            time.sleep(0.005)  # mallinfo2 takes malloc's locks: sample gently

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.running = False
            self.thread.join()
            self.peak = max(self.top, _heap_in_use()) - self.base


def _instances(args, tokenizer) -> list[TrainingInstance]:
    """Candidates of exactly ``--doc-tokens`` LLM tokens: the retriever and the LLM read the same text."""
    dataset = load_beir(args.beir)
    documents = []
    for document in dataset.corpus.values():
        ids = tokenizer(document.text, add_special_tokens=False)["input_ids"]
        if len(ids) >= args.doc_tokens:
            text = tokenizer.decode(ids[: args.doc_tokens - len(tokenizer(document.title)["input_ids"]) - 4])
            documents.append(Document(document.doc_id, document.title, text))
        if len(documents) == args.k * args.batch_size * (args.repeats + 1):
            break
    queries = list(dataset.queries.values())
    target = "The claim is supported by the evidence."
    return [
        TrainingInstance(queries[i], target, documents[i * args.k : (i + 1) * args.k])
        for i in range(args.batch_size * (args.repeats + 1))
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--beir", default="../shared/data/beir/scifact")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--doc-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--num-heads", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="results/step_speed.json")
    parser.add_argument(
        "--precision", default="auto", choices=compute.PRECISIONS, help=compute.PRECISION_HELP
    )
    parser.add_argument("--quick", action="store_true", help="2 timed repeats (overrides --repeats)")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 2
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
    # Training mode, as the trainer runs every objective: the retriever's dropout is on and, on a CPU, its
    # attention is eager (Retriever.train).
    objective = DreamLoss(retriever, llm).train()
    instances = _instances(args, llm.tokenizer)
    batches = [instances[i : i + args.batch_size] for i in range(0, len(instances), args.batch_size)]
    prompts = [
        llm.collate([llm.encode(x.query, [(d.title, d.text) for d in x.documents], x.target) for x in b])
        for b in batches
    ]

    # (d), (e) compute in this dtype; (a), (b), (c) stay float32 (the historic reference and floor).
    dtype = compute.resolve(args.precision, device)
    # (e): the same weights, read in the parallel layout; every candidate encoded once and stored.
    parallel = {"prompt": PromptSettings(document_layout="parallel"), "precision": dtype}
    documents = [(d.title, d.text) for x in instances for d in x.documents]
    cache_dir = tempfile.TemporaryDirectory(prefix="doc-cache-")
    builder = FrozenLLM(llm.model, llm.tokenizer, llm.heads, **parallel, document_cache_dir=cache_dir.name)
    build = builder.cache_documents(documents)
    del builder

    def cached_objective(
        retriever_precision: str, candidates: str = "own", target: str = "gradient"
    ) -> DreamLoss:
        """(d) with the retriever at this precision: a fresh LLM instance whose memory is empty, so every
        entry is read from the shards on disk (as in a long run)."""
        cached_llm = FrozenLLM(
            llm.model, llm.tokenizer, llm.heads, **parallel, document_cache_dir=cache_dir.name
        )
        loss = DreamLoss(
            retriever,
            cached_llm,
            retriever_precision=retriever_precision,
            candidates=candidates,
            target=target,
        )
        return loss.train()

    def step(reuse_prefix: bool, batch, loss=objective):
        loss.reuse_prefix = reuse_prefix
        loss.zero_grad(set_to_none=True)
        loss(batch).loss.backward()

    def retriever_only(_index: int, batch):
        objective.zero_grad(set_to_none=True)
        scores, mask = objective.candidate_scores(batch)
        objective.candidate_distribution(scores, mask).max(-1).values.sum().backward()

    def floor_in(reader: FrozenLLM):
        def floor(batch_index: int, _batch):
            with torch.no_grad(), reader.autocast():
                p = prompts[batch_index]
                reader.decoder(
                    input_ids=p.input_ids, attention_mask=p.attention_mask, position_ids=p.position_ids
                )

        return floor

    # The retriever in the run's dtype, and in the other one only where bf16 is native.
    other = "float32" if dtype == "bfloat16" else "bfloat16"
    retriever_dtypes = [dtype, other] if compute.native_bf16(device) else [dtype]
    cached = {p: cached_objective(p) for p in retriever_dtypes}
    in_batch = cached_objective(dtype, "batch")  # (f)
    in_batch_uniform = cached_objective(dtype, "batch", "uniform")  # (g)
    steps = {
        "reference": lambda i, b: step(False, b),
        "optimized": lambda i, b: step(True, b),
        "floor": floor_in(llm),
        "retriever": retriever_only,
        **{f"cached_{p}": (lambda i, b, loss=loss: step(True, b, loss)) for p, loss in cached.items()},
        "cached_in_batch": lambda i, b: step(True, b, in_batch),
        "cached_in_batch_uniform": lambda i, b: step(True, b, in_batch_uniform),
    }
    if dtype != "float32":
        steps["floor_same_dtype"] = floor_in(FrozenLLM(llm.model, llm.tokenizer, precision=dtype))

    def run(fn, index: int, batch) -> tuple[float, int]:
        with PeakMemory(device) as memory:
            started = time.perf_counter()
            fn(index, batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
        return seconds, memory.peak

    # Interleaved: every batch goes through every step in turn, so that all of them meet the process in
    # the same state (a process that has run other work steps slower; measured one after the other, the
    # later steps would pay for the earlier ones).
    for fn in steps.values():
        fn(0, batches[0])  # warm-up
    samples: dict[str, list[tuple[float, int]]] = {name: [] for name in steps}
    for i, batch in enumerate(batches[1:], start=1):
        for name, fn in steps.items():
            samples[name].append(run(fn, i, batch))
    measured = {
        name: (statistics.median(s for s, _ in runs), max(m for _, m in runs))
        for name, runs in samples.items()
    }
    reference_s, reference_mem = measured["reference"]
    optimized_s, optimized_mem = measured["optimized"]
    floor_s, floor_mem = measured["floor"]
    retriever_s, _ = measured["retriever"]
    # (d): the retriever in the run's dtype, as `dreamir train` runs it by default; (d') the other one.
    cached_s, cached_mem = measured[f"cached_{dtype}"]
    other_s, other_mem = measured.get(f"cached_{other}", (float("nan"), 0))
    in_batch_s, in_batch_mem = measured["cached_in_batch"]
    uniform_s, uniform_mem = measured["cached_in_batch_uniform"]
    # (d) divided by a floor of its own dtype family (c' where bf16, c where float32).
    same_floor_s = measured["floor_same_dtype"][0] if dtype != "float32" else floor_s
    cache_dir.cleanup()
    tokens = int(prompts[0].attention_mask.sum()) // args.batch_size
    result = {
        "reference_s": reference_s,
        "optimized_s": optimized_s,
        "floor_s": floor_s,
        "optimized_over_floor": optimized_s / floor_s,
        "speedup_over_reference": reference_s / optimized_s,
        # The same figures without the retriever's share (its forward + backward, identical in (a) and (b)).
        "retriever_s": retriever_s,
        "llm_only_optimized_over_floor": (optimized_s - retriever_s) / floor_s,
        "llm_only_speedup_over_reference": (reference_s - retriever_s) / (optimized_s - retriever_s),
        "cached_s": cached_s,
        "cached_precision": dtype,
        "floor_same_dtype_s": same_floor_s,
        "cached_over_floor": cached_s / same_floor_s,
        "cached_over_float32_floor": cached_s / floor_s,
        "cached_speedup_over_optimized": optimized_s / cached_s,
        "cached_in_batch_s": in_batch_s,
        "cached_in_batch_over_cached": in_batch_s / cached_s,
        "cached_in_batch_peak_mb": in_batch_mem / 2**20,
        "in_batch_pool_size": len({d.doc_id for x in batches[0] for d in x.documents}),
        "cached_in_batch_uniform_s": uniform_s,
        "cached_in_batch_uniform_over_in_batch": uniform_s / in_batch_s,
        "cached_in_batch_uniform_peak_mb": uniform_mem / 2**20,
        "cache_build_docs_per_s": build.documents_per_second,
        "cache_bytes_per_doc": build.bytes_per_document,
        "cache_documents_built": build.documents,
        "cached_peak_mb": cached_mem / 2**20,
        "cached_retriever_precision": dtype,
        f"cached_{other}_retriever_s": other_s,
        f"cached_{other}_retriever_over_floor": other_s / floor_s,
        f"cached_{other}_retriever_speedup_over_optimized": optimized_s / other_s,
        f"cached_{other}_retriever_peak_mb": other_mem / 2**20,
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
        "machine": compute.machine_record(llm=dtype, retriever=dtype, reference_and_floor="float32"),
        "date": datetime.date.today().isoformat(),
    }
    print(
        f"prompt ~{tokens} tokens/example, K={args.k}, batch {args.batch_size}, {args.num_heads} heads, {result['device']}"
    )
    print(f"compute: {compute.describe_compute(result['machine'])}; (a), (b), (c) in float32")
    print(f"(a) reference step   median {reference_s:7.3f} s   peak +{result['reference_peak_mb']:8.1f} MB")
    print(f"(b) optimised step   median {optimized_s:7.3f} s   peak +{result['optimized_peak_mb']:8.1f} MB")
    print(f"(c) no-grad forward  median {floor_s:7.3f} s   peak +{result['floor_peak_mb']:8.1f} MB")
    print(f"    retriever fwd+bwd median {retriever_s:7.3f} s   (float32, training mode: part of (a), (b))")
    if dtype != "float32":
        print(f"(c') no-grad forward in {dtype} median {same_floor_s:7.3f} s")
    print(
        f"(d) cached parallel {dtype} step, {dtype} retriever, median {cached_s:7.3f} s   peak +{result['cached_peak_mb']:8.1f} MB"
    )
    if f"cached_{other}" in measured:
        print(
            f"(d') (d) with a {other} retriever median {other_s:7.3f} s   peak +{other_mem / 2**20:8.1f} MB"
        )
    else:
        print("(d') skipped: no native bf16 on this processor")
    print(
        f"(e) cache build {build.documents} documents at {build.documents_per_second:.1f} docs/s, "
        f"{build.bytes_per_document / 2**20:.2f} MiB/document"
    )
    print(
        f"(f) (d) with in-batch candidates ({result['in_batch_pool_size']} per prompt) median {in_batch_s:7.3f} s   "
        f"peak +{result['cached_in_batch_peak_mb']:8.1f} MB   f/d = {result['cached_in_batch_over_cached']:.2f}"
    )
    print(
        f"(g) (f) with the target at uniform p median {uniform_s:7.3f} s   "
        f"peak +{result['cached_in_batch_uniform_peak_mb']:8.1f} MB   g/f = "
        f"{result['cached_in_batch_uniform_over_in_batch']:.2f}"
    )
    print(f"cached_over_floor d/c = {result['cached_over_floor']:.2f}   (goal <= 0.3; both {dtype})")
    if dtype != "float32":
        print(f"cached_over_float32_floor d/c(float32) = {result['cached_over_float32_floor']:.2f}")
    print(f"cached_speedup_over_optimized b/d = {result['cached_speedup_over_optimized']:.2f}   (goal >= 4)")
    print(f"peak memory d <= b: {cached_mem <= optimized_mem}")
    if f"cached_{other}" in measured:
        print(f"with a {other} retriever: d'/c = {other_s / floor_s:.2f}, b/d' = {optimized_s / other_s:.2f}")
    print(f"optimized_over_floor b/c = {result['optimized_over_floor']:.2f}   (goal <= 1.5)")
    print(f"speedup_over_reference a/b = {result['speedup_over_reference']:.2f}   (goal >= 2)")
    print(
        f"without the retriever's share: b/c = {result['llm_only_optimized_over_floor']:.2f}, "
        f"a/b = {result['llm_only_speedup_over_reference']:.2f}"
    )
    write_json_atomic(Path(args.out), result)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
