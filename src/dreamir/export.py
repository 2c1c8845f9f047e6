"""``dreamir export``: a trained retriever as a sentence-transformers directory (LoRA merged) with a model
card (README.md) built from what training left beside the model.

What is read, when present: ``report.json`` beside an adapted model (``dreamir adapt``), ``training_args.json``,
``log.jsonl`` and the newest checkpoint's run settings beside a trained one (``dreamir train``), and the
``metrics.json`` files ``dreamir eval`` wrote for this model. A PEFT LoRA adapter directory (as the released
DREAM models are) is merged into its base model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from dreamir.artefacts import (
    artefact_directory,
    check_output_directory,
    command_record,
    model_fingerprint,
    write_manifest,
)
from dreamir.data.errors import read_json_file
from dreamir.io import read_log_rows
from dreamir.models import MINILM, SMOLLM2, resolve_model
from dreamir.retriever import CONFIG_FILE, Retriever, RetrieverConfig

CARD_FILE = "README.md"
# Hub names of the packaged models, for the card's base_model field.
HUB_NAMES = {MINILM: "sentence-transformers/all-MiniLM-L6-v2", SMOLLM2: "HuggingFaceTB/SmolLM2-135M-Instruct"}
ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class ExportArguments:
    model: str = field(
        metadata={"help": "saved retriever directory, LoRA adapter directory or packaged name"}
    )
    out: str = field(metadata={"help": "directory to write (sentence-transformers layout + README.md)"})
    base_model: str | None = field(
        default=None, metadata={"help": "LoRA adapter: its base model (default: the adapter's own setting)"}
    )
    pooling: Literal["mean", "cls", "last"] | None = field(
        default=None, metadata={"help": "LoRA adapter: pooling (default: last, as the released DREAM models)"}
    )
    max_length: int | None = field(default=None, metadata={"help": "LoRA adapter: max tokens (default: 512)"})
    show_progress: bool = field(default=True, metadata={"help": "progress while loading and saving"})
    eval_dir: str = field(
        default="runs/eval", metadata={"help": "where `dreamir eval` wrote results to quote in the card"}
    )
    overwrite: bool = field(
        default=False,
        metadata={"help": "write into an --out directory that is not an export (its other files kept)"},
    )


def load_for_export(args: ExportArguments) -> Retriever:
    """The retriever, with a LoRA adapter merged into its base when ``args.model`` is an adapter."""
    path = resolve_model(args.model)
    if not (path / ADAPTER_CONFIG).is_file() or (path / CONFIG_FILE).is_file():
        return Retriever.from_pretrained(path).eval()
    from peft import PeftModel
    from transformers import AutoModel, AutoTokenizer

    adapter = read_json_file(path / ADAPTER_CONFIG)
    base_name = args.base_model or adapter.get("base_model_name_or_path")
    if not base_name:
        raise ValueError(f"{path / ADAPTER_CONFIG}: no base_model_name_or_path; give --base-model")
    base = resolve_model(base_name)
    backbone = AutoModel.from_pretrained(base, local_files_only=True, use_safetensors=True)
    merged = PeftModel.from_pretrained(backbone, path).merge_and_unload()
    tokenizer_dir = path if (path / "tokenizer_config.json").is_file() else base
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    config = RetrieverConfig(
        pooling=args.pooling or "last", normalize=True, max_length=args.max_length or 512
    )
    return Retriever(merged, tokenizer, config).eval()


def export_model(args: ExportArguments) -> Path:
    """Write the export as a whole, with a manifest (the source model's fingerprint, every file's checksum);
    only a new or empty directory or an earlier export is replaced, and the files a user added are kept."""
    out = check_output_directory(args.out, "export", args.overwrite)  # before loading the model
    retriever = load_for_export(args)
    source = resolve_model(args.model)
    provenance = read_provenance(source, Path(args.eval_dir))
    with artefact_directory(out, "export", args.overwrite) as tmp:
        retriever.save(tmp)
        (tmp / CARD_FILE).write_text(model_card(args.model, retriever, provenance), encoding="utf-8")
        write_manifest(
            tmp, "export", command=command_record("export", args), model=model_fingerprint(args.model, source)
        )
    return out


# ---- what training left beside the model ----------------------------------------------------------------
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _checkpoint_settings(train_dir: Path) -> dict[str, Any]:
    """The run settings the trainer stores in its newest checkpoint (model and objective arguments)."""
    from dreamir.trainer import CHECKPOINTS, STATE_FILE

    states = sorted((train_dir / CHECKPOINTS).glob(f"step-*/{STATE_FILE}"))
    if not states:
        return {}
    import torch

    try:
        state = torch.load(states[-1], map_location="cpu", weights_only=True)
    except Exception:  # an unreadable checkpoint only costs the card some detail
        return {}
    return dict(state.get("settings", {}).get("run", {}))


def read_provenance(model_dir: Path, eval_dir: Path) -> dict[str, Any]:
    """Training report, arguments, run settings and evaluations found for ``model_dir``."""
    model_dir = model_dir.resolve()
    found: dict[str, Any] = {}
    report = _read_json(model_dir.parent / "report.json")
    # adapt writes OUT/model beside OUT/report.json, naming the model relative to where it ran.
    if isinstance(report, dict) and Path(str(report.get("model", ""))).name == model_dir.name:
        found["adapt"] = report
        train_dir = model_dir.parent / "work" / "train"
    else:
        train_dir = model_dir.parent
    arguments = _read_json(train_dir / "training_args.json")
    if isinstance(arguments, dict):
        found["training"] = arguments
        found["run"] = _checkpoint_settings(train_dir)
        if (train_dir / "log.jsonl").is_file():
            rows = read_log_rows(train_dir / "log.jsonl")
            found["steps_logged"] = max((int(r.get("step", 0)) for r in rows), default=0)
    evaluations = []
    for metrics_file in sorted(eval_dir.glob("*/metrics.json")) if eval_dir.is_dir() else []:
        summary = _read_json(metrics_file)
        if (
            isinstance(summary, dict)
            and summary.get("model_path")
            and Path(summary["model_path"]) == model_dir
        ):
            evaluations.append(summary)
    found["evaluations"] = evaluations
    return found


# ---- the card --------------------------------------------------------------------------------------------
def _base_model(model: str, provenance: dict[str, Any]) -> str:
    adapt = provenance.get("adapt", {})
    base = adapt.get("settings", {}).get("retriever") or provenance.get("run", {}).get("model", {}).get(
        "retriever"
    )
    return str(base or model)


def _settings_table(settings: dict[str, Any]) -> list[str]:
    rows = ["| setting | value |", "|---|---|"]
    rows += [f"| {key} | `{value}` |" for key, value in sorted(settings.items()) if value not in (None, "")]
    return rows


def model_card(model: str, retriever: Retriever, provenance: dict[str, Any]) -> str:
    base = _base_model(model, provenance)
    hub_base = HUB_NAMES.get(base.lower(), base if "/" in base and not Path(base).exists() else None)
    config = retriever.config
    front = ["---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity"]
    front += [
        "tags:",
        "- sentence-transformers",
        "- sentence-similarity",
        "- feature-extraction",
        "- dreamir",
    ]
    if hub_base:
        front.append(f"base_model: {hub_base}")
    front.append("---")
    adapt, run, training = provenance.get("adapt"), provenance.get("run", {}), provenance.get("training")
    name = "/".join(resolve_model(model).resolve().parts[-2:]) if Path(model).exists() else model
    lines = [*front, "", f"# {name}", ""]
    lines.append(
        f"A dense retriever exported by dreamir on {datetime.now(UTC).date().isoformat()}: "
        f"{config.pooling} pooling{', L2-normalised' if config.normalize else ''}, "
        f"{retriever.embedding_dim} dimensions, up to {config.max_length} tokens, cosine similarity."
    )
    lines += ["", "## Training", "", f"- base model: `{base}`"]
    if adapt:
        s = adapt.get("settings", {})
        lines += [
            f"- objective: {s.get('objective')} (frozen LLM `{s.get('llm')}`), label-free adaptation to a corpus",
            f"- data: `{adapt.get('corpus')}` ({adapt.get('passages')} passages), recipe {s.get('recipe')}, "
            f"{adapt.get('examples', {}).get('train')} training examples",
            f"- steps: {adapt.get('steps')} of {s.get('batch_size')}, learning rate {s.get('learning_rate')}",
            _kept_checkpoint_line(adapt.get("validation", {})),
            "",
            *_settings_table(s),
        ]
    elif training:
        objective = run.get("objective", {})
        lines += [
            f"- objective: {objective.get('objective', 'unknown')}"
            + (f" (frozen LLM `{objective.get('llm')}`)" if objective.get("llm") else ""),
            f"- data: `{objective.get('train', 'unknown')}` over the corpus `{objective.get('corpus', 'unknown')}`",
            f"- steps: {provenance.get('steps_logged', training.get('max_steps'))} of {training.get('batch_size')}, "
            f"learning rate {training.get('learning_rate')}",
            "",
            *_settings_table({**training, **{f"objective.{k}": v for k, v in objective.items()}}),
        ]
    else:
        lines.append("- no training record was found beside the model")
    lines += ["", "## Evaluation", ""]
    evaluations = provenance.get("evaluations", [])
    if evaluations:
        lines += ["| dataset | split | engine | nDCG@10 | Recall@100 | MRR@10 |", "|---|---|---|---|---|---|"]
        for e in evaluations:
            m = e["metrics"]
            lines.append(
                f"| {e['dataset']} | {e['split']} | {e['engine']} | {m['ndcg@10']:.4f} | "
                f"{m['recall@100']:.4f} | {m['mrr@10']:.4f} |"
            )
    else:
        lines.append(
            "No evaluation results were found (`dreamir eval --model <this model> --beir DIR` adds them)."
        )
    query_prompt = ", prompt_name='query'" if config.query_prefix else ""
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        'model = SentenceTransformer("path/to/this/directory")',
        f'query = model.encode(["a question"]{query_prompt})',
        'documents = model.encode(["a passage", "another passage"])',
        "scores = model.similarity(query, documents)",
        "```",
        "",
    ]
    return "\n".join(lines)


def _kept_checkpoint_line(validation: dict) -> str:
    # Reports from before adapt's --keep kept the checkpoint the label-free validation scored best.
    if validation.get("kept", "best") == "last":
        return f"- checkpoint kept: the last of a fixed schedule, step {validation.get('kept_step')}"
    if validation.get("keep") == "auto":
        return f"- checkpoint kept: the label-free validation's best (it ended below its start), step {validation.get('kept_step')}"
    return f"- checkpoint kept by label-free validation: step {validation.get('best_step')}"
