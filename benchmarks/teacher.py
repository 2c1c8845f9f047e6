"""Which teacher knows where the gold is? The retriever against the frozen LLM's judgements, on labelled
examples, for pools of K = 8, 16, 32 candidates and for the in-batch pool (issue 29).

Examples (each with its gold passage among the candidates):
  factbook: Factbook training questions beyond the first 200 (those compare.py trains on), in a seeded order;
  scifact:  the generated examples of a `dreamir adapt` work directory (its train.jsonl; the passage a query
            was written from is the gold), made here with adapt's own first stage when the directory has none.
Candidates: BM25's top K over the corpus with the gold put in at a seeded place where BM25 missed it (the
K = 8 pool is a subset of the K = 16 and 32 ones). The in-batch pool: --batch-size consecutive examples
(the training batch), every distinct candidate of their K = 8 pools (as --dream-candidates batch builds it).

Teachers, per example, each a vector over its candidates:
  retriever p        softmax(s_k / tau) of the retriever (default all-MiniLM-L6-v2, tau 0.05);
  DREAM at uniform   -dL/dp at uniform p: the direction DREAM's loss moves p in when the retriever is flat;
  DREAM at p         -dL/dp at the retriever's own p (what a DREAM step actually receives);
  DREAM step from p  softmax(log p + eta * (-dL/dp at p)): one exponentiated-gradient step (eta --eta);
  REPLUG-LSR q       softmax(log P_LLM(target | d_k, query) / beta), one LLM pass per candidate.
For each: the gold's top-1 rate; its mass (a distribution's probability on the gold; for a direction g, the
gold's share of the positive part of g - mean(g), i.e. of what a step along g hands to candidates); and the
two cross rates against the retriever: right where the retriever is wrong (what training can teach) and
wrong where the retriever is right (what it can unlearn). L is the target's mean NTP loss with p injected
into the head file's top heads (parallel layout and --precision as `dreamir train` defaults to).

    python benchmarks/teacher.py --quick                      # a few examples: a smoke run
    python benchmarks/teacher.py --work runs/compare --scifact-work runs/adapt/work
                                                              # reuse compare's Factbook and heads and an
                                                              # adapt run's examples; results/teacher.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from compare import Settings, prepare  # benchmarks/compare.py: its Factbook data and head file
from torch import Tensor

from dreamir import precision as compute
from dreamir.adapt import AdaptArguments, prepare_examples, read_derived
from dreamir.data.beir import Document
from dreamir.data.corpus_examples import with_pseudo_gold
from dreamir.data.training import TrainingExample, read_training_file
from dreamir.io import write_json_atomic
from dreamir.llm.frozen import FrozenLLM
from dreamir.llm.heads import HeadSet
from dreamir.llm.prompt import PromptSettings
from dreamir.models import MINILM, SMOLLM2, resolve_model
from dreamir.objectives import DreamLoss, ReplugLoss, TrainingInstance
from dreamir.retriever import Retriever
from dreamir.search.bm25 import BM25Index
from dreamir.workflow import load_corpus

POOL_SIZES = (8, 16, 32)
IN_BATCH = "in-batch"
RETRIEVER = "retriever p"
TEACHERS = (RETRIEVER, "DREAM at uniform", "DREAM at p", "DREAM step from p", "REPLUG-LSR q")
DIRECTIONS = {"DREAM at uniform", "DREAM at p"}  # the others are distributions


@dataclass
class LabelledSet:
    name: str
    examples: list[TrainingExample]  # each with a gold_id in the corpus
    corpus: dict[str, Document]
    source_of: dict[str, str]  # derived passage -> the corpus passage it was made from (adapt's ict)
    heads: Path
    max_target_tokens: int


# ---- examples -------------------------------------------------------------------------------------------
def factbook_set(args: argparse.Namespace) -> LabelledSet:
    """compare.py's Factbook data and head file under --work (built there once, reused from there)."""
    settings = Settings(
        work=args.work,
        num_heads=args.num_heads,
        calibration_examples=args.calibration_examples,
        seed=args.seed,
        document_layout=args.document_layout,
        # compare.py scores heads only for DREAM: not when a head file is given.
        objectives="replug" if args.heads else "dream",
    )
    data, _, heads = prepare(settings)
    corpus = load_corpus(data)
    examples = [e for e in read_training_file(data / "train.jsonl")[200:] if e.gold_id in corpus]
    heads = Path(args.heads) if args.heads else heads
    return LabelledSet("factbook", _sample(examples, args), corpus, {}, heads, max_target_tokens=16)


def scifact_set(args: argparse.Namespace, fallback_heads: Path) -> LabelledSet | None:
    if not (Path(args.beir) / "corpus.jsonl").exists():
        print(f"scifact skipped: no corpus at {args.beir}")
        return None
    work = Path(args.scifact_work or Path(args.work) / "scifact")
    corpus = load_corpus(args.beir)
    if not (work / "train.jsonl").exists():
        work.mkdir(parents=True, exist_ok=True)
        # adapt's own first stage: the LLM writes a query for each sampled passage (recipe genq).
        adapt = AdaptArguments(
            corpus=args.beir,
            out=str(work),
            recipe="genq",
            max_passages=args.scifact_passages,
            validation_examples=1,
            precision=args.precision,
            seed=args.seed,
            show_progress=False,
        )
        prepare_examples(adapt, corpus, work)
    derived, source_of = read_derived(work / "derived.jsonl")
    corpus = {**corpus, **derived}
    examples = [e for e in read_training_file(work / "train.jsonl") if e.gold_id in corpus]
    # An adapt run's heads are SmolLM2's: another --llm is read with the heads given for it.
    own_heads = work / "heads.json"
    heads = own_heads if own_heads.exists() and args.llm == SMOLLM2 else fallback_heads
    return LabelledSet("scifact", _sample(examples, args), corpus, source_of, heads, max_target_tokens=32)


def _sample(examples: list[TrainingExample], args: argparse.Namespace) -> list[TrainingExample]:
    examples = list(examples)
    random.Random(args.seed).shuffle(examples)
    return examples[: args.examples]


def pools(labelled: LabelledSet, seed: int) -> dict[int, list[TrainingInstance]]:
    """Every example with K candidates, for each K: BM25's top K, the gold put in where it is missing."""
    index = BM25Index.from_corpus(labelled.corpus)
    hits = index.search([e.query for e in labelled.examples], k=max(POOL_SIZES) + 1)
    ranked = [[doc_id for doc_id, _ in h] for h in hits]
    result = {}
    for k in POOL_SIZES:
        mined = with_pseudo_gold(labelled.examples, ranked, labelled.source_of, k, force=True, seed=seed)
        result[k] = [
            TrainingInstance(
                e.query,
                e.target,
                [labelled.corpus[i] for i in e.candidate_ids or []],
                (e.candidate_ids or []).index(e.gold_id),
                labelled.corpus[e.gold_id],
            )
            for e in mined
        ]
    return result


# ---- teachers -------------------------------------------------------------------------------------------
def descent(llm: FrozenLLM, instances: list[TrainingInstance], probs: Tensor) -> tuple[Tensor, Tensor]:
    """Each example's target loss with ``probs`` injected, and -dL/dp."""
    batch = llm.collate(
        [llm.encode(i.query, [(d.title, d.text) for d in i.documents], i.target) for i in instances]
    )
    probs = probs.detach().clone().requires_grad_(True)
    loss = llm.target_loss(batch, probs, reduction="example")
    loss.sum().backward()
    return loss.detach(), -probs.grad


def judge(
    dream: DreamLoss, replug: ReplugLoss, instances: list[TrainingInstance], eta: float, beta: float
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Every teacher's vector [B, K] over the instances' candidates (-inf on empty slots), the mask of real
    candidates and the target loss at uniform p."""
    with torch.no_grad():
        scores, mask = dream.candidate_scores(instances)
        p = dream.candidate_distribution(scores, mask)
    uniform = mask / mask.sum(-1, keepdim=True)
    loss, at_uniform = descent(dream.llm, instances, uniform)
    _, at_p = descent(dream.llm, instances, p)
    step = torch.softmax((p.clamp_min(1e-30).log() + eta * at_p).masked_fill(~mask, float("-inf")), -1)
    q = torch.softmax(replug.target_log_likelihood(instances).to(p.device) / beta, -1)
    vectors = {
        RETRIEVER: p,
        "DREAM at uniform": at_uniform,
        "DREAM at p": at_p,
        "DREAM step from p": step,
        "REPLUG-LSR q": q,
    }
    return {name: v.detach().float().cpu() for name, v in vectors.items()}, mask.cpu(), loss.cpu()


def gold_mass(name: str, vector: Tensor, mask: Tensor, gold: int) -> float:
    if name not in DIRECTIONS:
        return float(vector[gold])
    real = vector[mask]
    positive = (vector - real.mean()).clamp_min(0).masked_fill(~mask, 0.0)
    total = float(positive.sum())
    return float(positive[gold]) / total if total > 0 else 0.0


class Tally:
    """Per teacher: whether the gold is its top-1, and its mass, example by example."""

    def __init__(self) -> None:
        self.right: dict[str, list[bool]] = {name: [] for name in TEACHERS}
        self.mass: dict[str, list[float]] = {name: [] for name in TEACHERS}
        self.losses: list[float] = []
        self.pool_sizes: list[int] = []

    def add(self, vectors: dict[str, Tensor], mask: Tensor, loss: Tensor, instances) -> None:
        for b, instance in enumerate(instances):
            gold = instance.gold_index
            for name, vector in vectors.items():
                row = vector[b].masked_fill(~mask[b], float("-inf"))
                self.right[name].append(int(row.argmax()) == gold)
                self.mass[name].append(gold_mass(name, vector[b], mask[b], gold))
            self.pool_sizes.append(int(mask[b].sum()))
        self.losses += loss.tolist()

    def summary(self) -> dict[str, object]:
        retriever = torch.tensor(self.right[RETRIEVER])
        teachers = {}
        for name in TEACHERS:
            right = torch.tensor(self.right[name])
            teachers[name] = {
                "gold_top1": float(right.float().mean()),
                "gold_mass": sum(self.mass[name]) / len(self.mass[name]),
                "right_where_retriever_wrong": float((right & ~retriever).float().mean()),
                "wrong_where_retriever_right": float((~right & retriever).float().mean()),
            }
        return {
            "examples": len(self.losses),
            "mean_pool_size": sum(self.pool_sizes) / len(self.pool_sizes),
            "target_loss_at_uniform": sum(self.losses) / len(self.losses),
            "teachers": teachers,
        }


def diagnose(
    labelled: LabelledSet, dream: DreamLoss, replug: ReplugLoss, args: argparse.Namespace
) -> dict[str, object]:
    llm = dream.llm
    llm.set_heads(HeadSet.load(labelled.heads).top(args.num_heads))
    llm.prompt = dataclasses.replace(llm.prompt, max_target_tokens=labelled.max_target_tokens)
    by_size = pools(labelled, args.seed)
    tallies = {f"K={k}": Tally() for k in POOL_SIZES} | {IN_BATCH: Tally()}
    started = time.perf_counter()
    count = len(labelled.examples)
    # Batch by batch, every pool in turn: a batch's passages stay in the document cache's memory.
    for start in range(0, count, args.batch_size):
        for k in POOL_SIZES:
            instances = by_size[k][start : start + args.batch_size]
            tallies[f"K={k}"].add(*judge(dream, replug, instances, args.eta, args.beta), instances)
        with torch.no_grad():
            pooled, _, _ = dream.in_batch_scores(by_size[8][start : start + args.batch_size])
        tallies[IN_BATCH].add(*judge(dream, replug, pooled, args.eta, args.beta), pooled)
        done = min(start + args.batch_size, count)
        print(
            f"  {labelled.name}: {done}/{count} examples, {time.perf_counter() - started:.0f} s", flush=True
        )
    return {
        "examples": count,
        "heads": str(labelled.heads),
        "max_target_tokens": labelled.max_target_tokens,
        "pools": {name: tally.summary() for name, tally in tallies.items()},
    }


def print_table(name: str, result: dict) -> None:
    print(f"\n{name}: {result['examples']} examples, heads {result['heads']}")
    header = (
        f"{'pool':<15} {'teacher':<18} {'top-1':>6} {'mass':>6} {'right|R wrong':>14} {'wrong|R right':>14}"
    )
    print(header)
    for pool, summary in result["pools"].items():
        label = f"{pool} ({summary['mean_pool_size']:.1f})"
        for teacher, row in summary["teachers"].items():
            print(
                f"{label:<15} {teacher:<18} {row['gold_top1']:6.3f} {row['gold_mass']:6.3f} "
                f"{row['right_where_retriever_wrong']:14.3f} {row['wrong_where_retriever_right']:14.3f}"
            )
            label = ""
        print(f"{'':<15} target loss at uniform p {summary['target_loss_at_uniform']:.3f} nats")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", default="runs/teacher", help="Factbook data and head file (built once)")
    parser.add_argument("--heads", help="Factbook head file (default: compare.py's, under --work)")
    parser.add_argument("--scifact-work", help="an adapt work directory (default: <work>/scifact)")
    parser.add_argument("--scifact-passages", type=int, default=240, help="passages to write queries for")
    parser.add_argument("--beir", default="../shared/data/beir/scifact")
    parser.add_argument("--datasets", default="factbook,scifact")
    parser.add_argument("--examples", type=int, default=200, help="examples per dataset")
    parser.add_argument("--batch-size", type=int, default=2, help="the training batch: the in-batch pool")
    parser.add_argument("--num-heads", type=int, default=16)
    parser.add_argument("--calibration-examples", type=int, default=32, help="to score Factbook heads")
    parser.add_argument(
        "--llm",
        default=SMOLLM2,
        help="the frozen LLM judged (packaged name or local directory); another LLM than compare.py's needs "
        "--heads scored on it (dreamir heads --llm)",
    )
    parser.add_argument("--retriever", default=MINILM)
    parser.add_argument("--temperature", type=float, default=0.05, help="tau of the retriever's p")
    parser.add_argument("--beta", type=float, default=1.0, help="REPLUG-LSR's temperature")
    parser.add_argument("--eta", type=float, default=3.0, help="step size of 'DREAM step from p'")
    parser.add_argument("--document-layout", default="parallel", choices=("parallel", "sequential"))
    parser.add_argument(
        "--precision", default="auto", choices=compute.PRECISIONS, help=compute.PRECISION_HELP
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="results/teacher.json")
    parser.add_argument("--quick", action="store_true", help="4 examples per dataset, a small work dir")
    args = parser.parse_args()
    if args.quick:
        args.examples, args.calibration_examples, args.scifact_passages = 4, 8, 8
        args.work = "runs/teacher-quick" if args.work == "runs/teacher" else args.work
        args.out = "results/teacher_quick.json" if args.out == "results/teacher.json" else args.out
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    if args.llm != SMOLLM2 and not args.heads:
        raise SystemExit(f"--llm {args.llm}: give --heads scored on it (dreamir heads --llm {args.llm})")
    chosen = args.datasets.split(",")
    sets = [factbook_set(args)] if "factbook" in chosen else []
    if "scifact" in chosen:
        fallback = sets[0].heads if sets else Path(args.heads or "")
        scifact = scifact_set(args, fallback)
        sets += [scifact] if scifact is not None else []
    llm = FrozenLLM.from_pretrained(
        args.llm, prompt=PromptSettings(document_layout=args.document_layout), precision=args.precision
    )
    retriever = Retriever.from_pretrained(resolve_model(args.retriever)).eval()
    common = {"temperature": args.temperature, "retriever_precision": args.precision}
    llm.set_heads(HeadSet.load(sets[0].heads).top(args.num_heads))  # DreamLoss refuses an LLM without heads
    dream = DreamLoss(retriever, llm, **common)
    # The same LLM, read without injection; its judgements are cached across pools.
    replug = ReplugLoss(retriever, llm, beta=args.beta, **common)
    results = {labelled.name: diagnose(labelled, dream, replug, args) for labelled in sets}
    for name, result in results.items():
        print_table(name, result)
    machine = compute.machine_record(llm=args.precision, retriever=args.precision)
    print(f"\ncompute: {compute.describe_compute(machine)}")
    settings = {k: v for k, v in vars(args).items() if k not in {"out", "threads"}}
    record = {
        "datasets": results,
        "settings": settings,
        "machine": machine,
        "seconds": time.perf_counter() - started,
        "date": datetime.date.today().isoformat(),
    }
    write_json_atomic(Path(args.out), record)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
