"""How much attention each injected head gives the gold (or source) passage, before and after training.

For a set of examples (query, candidates, target, gold_id) the frozen LLM reads the prompt with the target;
at the rows that predict the target (the injected rows), every head's mass on each candidate is measured
with the LLM's own attention (``FrozenLLM.document_mass``). The share the injected heads give the
candidates is then what the injection operator (``llm.injection.redistribute``, in the LLM's mode) makes of
that mass with the retriever's distribution p = softmax(cos(q, d) / tau): once with the starting retriever,
once with the trained one. The plot shows, per injected head, the gold's share under the LLM alone and
under both retrievers, against 1/K (no preference).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from dreamir.data.beir import Document, read_corpus
from dreamir.data.training import TrainingExample, read_training_file, validate_against_corpus
from dreamir.io import atomic_path, write_json_atomic
from dreamir.llm.frozen import FrozenLLM
from dreamir.llm.heads import HeadSet
from dreamir.llm.injection import redistribute
from dreamir.llm.prompt import PromptSettings
from dreamir.models import MINILM, SMOLLM2, resolve_model
from dreamir.options import at_least, positive
from dreamir.progress import progress
from dreamir.retriever import Retriever


@dataclass
class HeadAttentionArguments:
    examples: str = field(metadata={"help": "training-format JSONL with candidate_ids and gold_id"})
    corpus: str = field(metadata={"help": "BEIR directory or corpus.jsonl the candidate ids refer to"})
    heads: str = field(metadata={"help": "head file (from `dreamir heads` or adapt's work/heads.json)"})
    after: str = field(metadata={"help": "the trained retriever"})
    out: str = field(metadata={"help": "PNG to write (the numbers go beside it as JSON)"})
    before: str = field(default=MINILM, metadata={"help": "the starting retriever"})
    llm: str = field(default=SMOLLM2, metadata={"help": "the frozen LLM the heads belong to"})
    num_heads: int = field(default=16, metadata={"help": "injected heads: the head file's top N"})
    injection_mode: Literal["preserve", "replace", "prior"] = field(
        default="preserve", metadata={"help": "the injection operator's mode used in training"}
    )
    temperature: float = field(default=0.05, metadata={"help": "tau of p = softmax(cos / tau)"})
    num_candidates: int = field(default=8, metadata={"help": "candidates per example (the first K)"})
    max_examples: int = field(default=16, metadata={"help": "examples to average over"})
    show_progress: bool = field(default=True, metadata={"help": "progress over the examples"})

    def __post_init__(self) -> None:
        at_least(self, 1, "num_heads", "num_candidates", "max_examples")
        positive(self, "temperature")


def _usable(examples: Sequence[TrainingExample], num_candidates: int, limit: int) -> list[TrainingExample]:
    """Examples whose gold passage is among their first ``num_candidates`` candidates (at least two)."""
    kept = [
        e
        for e in examples
        if e.gold_id
        and e.gold_id in (e.candidate_ids or [])[:num_candidates]
        and len(e.candidate_ids or []) > 1
    ]
    if not kept:
        raise ValueError("no example has its gold_id among its candidate_ids: nothing to measure")
    return kept[:limit]


def retriever_distribution(
    retriever: Retriever, query: str, documents: Sequence[Document], temperature: float
) -> torch.Tensor:
    """p over the candidates, as the objectives compute it: softmax(cos(q, d_k) / tau), [K]."""
    q = retriever.encode_queries([query], show_progress=False)
    d = retriever.encode_documents([doc.full_text for doc in documents], show_progress=False)
    cosine = retriever.similarity(q, d)[0]
    return torch.softmax(torch.as_tensor(np.asarray(cosine)) / temperature, dim=-1)


def injected_share(mass: torch.Tensor, probs: torch.Tensor, mode: str) -> torch.Tensor:
    """Each candidate's share of the document attention after injection, from the LLM's own mass.

    mass: [H, K] per-head mass on each candidate (averaged over the injected rows); probs: [K]. The
    operator is applied to one row whose keys are the K candidates and one key for all else.
    """
    k = mass.shape[1]
    outside = (1.0 - mass.sum(-1, keepdim=True)).clamp_min(0.0)
    attn = torch.cat([mass, outside], dim=-1)[None, :, None, :]  # [1, H, 1, K + 1]
    doc_index = torch.cat([torch.arange(k), torch.tensor([-1])])[None]
    rows = torch.ones(1, 1, dtype=torch.bool)
    redistributed = redistribute(attn, doc_index, probs[None].to(attn.dtype), rows, mode)[0, :, 0, :k]  # type: ignore[arg-type]
    return redistributed / redistributed.sum(-1, keepdim=True).clamp_min(1e-12)


def measure_head_attention(
    llm: FrozenLLM,
    heads: Sequence[tuple[int, int]],
    examples: Sequence[TrainingExample],
    corpus: Mapping[str, Document],
    retrievers: Mapping[str, Retriever],
    temperature: float = 0.05,
    num_candidates: int = 8,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Mean share of the gold candidate per injected head: the LLM alone and after injecting each
    retriever's p; also each retriever's mean p on the gold and the mean 1/K."""
    layers = torch.tensor([layer for layer, _ in heads])
    head_ids = torch.tensor([head for _, head in heads])
    stock, injected = [], {name: [] for name in retrievers}
    p_gold: dict[str, list[float]] = {name: [] for name in retrievers}
    uniform = []
    for example in progress(examples, desc="head attention", unit="example", show=show_progress):
        ids = (example.candidate_ids or [])[:num_candidates]
        documents = [corpus[i] for i in ids]
        gold = ids.index(example.gold_id)
        batch = llm.collate(
            [llm.encode(example.query, [(d.title, d.text) for d in documents], example.target)]
        )
        (mass,) = llm.document_mass([batch], rows=[batch.inject_rows])
        per_head = mass[0, layers, head_ids].float().cpu()  # [H, K]
        stock.append((per_head / per_head.sum(-1, keepdim=True).clamp_min(1e-12))[:, gold])
        uniform.append(1.0 / len(ids))
        for name, retriever in retrievers.items():
            probs = retriever_distribution(retriever, example.query, documents, temperature)
            injected[name].append(injected_share(per_head, probs, llm.mode)[:, gold])
            p_gold[name].append(float(probs[gold]))
    return {
        "heads": [list(h) for h in heads],
        "examples": len(examples),
        "mode": llm.mode,
        "uniform": float(np.mean(uniform)),
        "llm_alone": torch.stack(stock).mean(0).tolist(),
        "injected": {name: torch.stack(rows).mean(0).tolist() for name, rows in injected.items()},
        "p_gold": {name: float(np.mean(values)) for name, values in p_gold.items()},
    }


def plot_head_attention(measured: Mapping[str, Any], out: str | Path, title: str = "") -> Path:
    """Grouped bars per injected head: the gold's share under the LLM alone and under each retriever."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"L{layer}.H{head}" for layer, head in measured["heads"]]
    series = {"LLM alone (no injection)": measured["llm_alone"]}
    series.update({f"injected, p from {name}": values for name, values in measured["injected"].items()})
    x = np.arange(len(labels))
    width = 0.8 / len(series)
    figure, axis = plt.subplots(figsize=(max(6.0, 0.55 * len(labels) + 2), 3.8), layout="constrained")
    for i, (name, values) in enumerate(series.items()):
        axis.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
    axis.axhline(measured["uniform"], color="grey", linestyle="--", linewidth=1, label="1/K (no preference)")
    axis.set_xticks(x, labels, rotation=60, fontsize=8)
    axis.set_ylabel("share of document attention\non the gold/source passage")
    axis.set_ylim(0, 1)
    axis.set_title(title or f"injected heads ({measured['mode']}), mean over {measured['examples']} examples")
    axis.grid(axis="y", alpha=0.3)
    figure.legend(loc="outside lower center", ncol=2, frameon=False, fontsize=8)
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    write_json_atomic(Path(out).with_suffix(".json"), dict(measured))
    return Path(out)


def plot_head_attention_from_files(args: HeadAttentionArguments) -> Path:
    """The ``dreamir head-attention`` command."""
    corpus_path = Path(args.corpus)
    corpus = read_corpus(corpus_path / "corpus.jsonl" if corpus_path.is_dir() else corpus_path)
    examples = read_training_file(args.examples)
    validate_against_corpus(examples, corpus, args.examples)
    head_set = HeadSet.load(args.heads)
    head_set.check_fits(args.llm, args.heads)
    heads = head_set.top(args.num_heads)
    llm = FrozenLLM.from_pretrained(args.llm, heads=heads, mode=args.injection_mode, prompt=PromptSettings())
    retrievers = {
        "before": Retriever.from_pretrained(resolve_model(args.before)).eval(),
        "after": Retriever.from_pretrained(resolve_model(args.after)).eval(),
    }
    measured = measure_head_attention(
        llm,
        heads,
        _usable(examples, args.num_candidates, args.max_examples),
        corpus,
        retrievers,
        args.temperature,
        args.num_candidates,
        args.show_progress,
    )
    return plot_head_attention(measured, args.out)
