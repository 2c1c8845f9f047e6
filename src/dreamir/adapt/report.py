"""Stage 4's report: report.md from report.json's record, and the injected heads' attention before and
after training."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from dreamir.adapt.arguments import AdaptArguments
from dreamir.arguments import ModelArguments
from dreamir.data.beir import Document
from dreamir.data.training import TrainingExample
from dreamir.llm.frozen import FrozenLLM
from dreamir.precision import describe_compute
from dreamir.retriever import Retriever
from dreamir.workflow import load_retriever


def plot_head_attention_before_after(
    args: AdaptArguments,
    llm: FrozenLLM,
    train: Sequence[TrainingExample],
    corpus: Mapping[str, Document],
    model_dir: Path,
    train_dir: Path,
) -> Path:
    """The injected heads' share of the source passage with the starting and the kept retriever, next to
    the checkpoints (train_dir/head_attention.png)."""
    from dreamir.head_attention import measure_head_attention, plot_head_attention

    examples = [e for e in train if e.gold_id in (e.candidate_ids or [])[: args.num_candidates]][:16]
    before = load_retriever(ModelArguments(retriever=args.retriever)).eval()
    kept = Retriever.from_pretrained(model_dir).eval()
    measured = measure_head_attention(
        llm,
        llm.heads,
        examples,
        corpus,
        {"before": before, "after": kept},
        args.temperature,
        args.num_candidates,
    )
    return plot_head_attention(measured, train_dir / "head_attention.png")


def render_report(report: dict) -> str:
    v, e = report["validation"], report["examples"]
    lines = [
        "# dreamir adapt report",
        "",
        f"- corpus: `{report['corpus']}` ({report['passages']} passages)",
        f"- recipe: {e['recipe']}; {e['examples']} examples from {e['passages_sampled']} passages "
        f"({e['train']} training, {e['validation']} held out); dropped: {e['dropped']}",
        f"- objective: {report['settings']['objective']}, {report['steps']} steps of "
        f"{report['settings']['batch_size']}, lr {report['settings']['learning_rate']}",
        f"- validation ({v['metric']}: held-out examples whose own passage ranks in the top 10 of "
        f"the corpus): {v['start']:.3f} before training, best {v['best']:.3f} at step {v['best_step']} (kept)",
        "- by step: " + ", ".join(f"{s}: {x:.3f}" for s, x in sorted(v["by_step"].items())),
        "- stage seconds: " + ", ".join(f"{k} {s:.0f}" for k, s in report["stage_seconds"].items()),
        f"- compute: {describe_compute(report['machine'])}",
        f"- model: `{report['model']}`; curves: `{report['curves']}`",
        "",
    ]
    return "\n".join(lines)
