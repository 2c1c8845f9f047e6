"""The settings of every step, one dataclass per concern: the retriever (model), the training data and its
sampling, the objective with the frozen LLM it reads and each objective's own options, the training loop,
and the smaller commands'. The CLI builds its options from these (every field's ``help`` is its help text);
Python callers build them directly. Range checks run when one is built (``dreamir.options``)."""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Literal

from dreamir.data.sampling import SamplingArguments
from dreamir.llm.prompt import DocumentLayout
from dreamir.models import MINILM, SMOLLM2
from dreamir.objectives import OBJECTIVES
from dreamir.options import at_least, positive, split_template
from dreamir.precision import PRECISION_HELP, Precision
from dreamir.trainer import TrainingArguments

__all__ = [
    "DataArguments",
    "FactbookArguments",
    "HeadSelectionArguments",
    "LLMArguments",
    "MineArguments",
    "ModelArguments",
    "ObjectiveArguments",
    "RuntimeArguments",
    "SamplingArguments",
    "TrainingArguments",
    "ValidateArguments",
    "field_defaults",
]

# AutoRegEmbed's inference templates (its released evaluation code): each ends with an opening quote, so
# that the compress tokens stand where the one word that sums the text up would come.
COMPRESS_QUERY_TEMPLATE = "{text}\nThis sentence means in one word: \u201c"
COMPRESS_DOCUMENT_TEMPLATE = (
    'Passage: "{text}". Use one word to represent the passage in a retrieval task. The word is: \u201c'
)

LAYOUT_HELP = (
    "sequential: candidates one after another; parallel: each candidate read after the instruction alone, "
    "all at the same positions, so their keys and values are computed once per corpus"
)


# Options whose default changed after they were added: the value every run recorded before the option
# existed trained with. A record lacking such a setting is filled from here, not from today's default, so
# an older run is not taken for one trained with the new default.
BEFORE_THE_OPTION_EXISTED: dict[str, Any] = {"dream_candidates": "own", "lora": False}


def field_defaults(*arguments_classes: type) -> dict[str, Any]:
    """The JSON form of every field of these dataclasses that has a default: what a run record holds for
    an option the record predates (for an option whose default changed, its value before it existed)."""
    defaults = {
        f.name: BEFORE_THE_OPTION_EXISTED.get(
            f.name, f.default if f.default_factory is MISSING else f.default_factory()
        )
        for arguments_class in arguments_classes
        for f in fields(arguments_class)
        if f.default is not MISSING or f.default_factory is not MISSING
    }
    return json.loads(json.dumps(defaults))


# ---- training ------------------------------------------------------------------------------------------
@dataclass
class ModelArguments:
    _argument_group_name = "retriever"  # its heading in --help

    retriever: str = field(default=MINILM, metadata={"help": "packaged retriever name or local directory"})
    pooling: Literal["mean", "cls", "last", "compress"] | None = field(
        default=None,
        metadata={
            "help": "default: the model's own (mean for all-minilm-l6-v2); compress: the mean of k learnt "
            "tokens appended to every text (autoregembed)"
        },
    )
    compress_tokens: int | None = field(
        default=None, metadata={"help": "compress pooling: tokens appended to every text (default: 5)"}
    )
    max_length: int | None = field(
        default=None, metadata={"help": "tokens per text; default: the model's own"}
    )
    retriever_layers: int | None = field(default=None, metadata={"help": "cut the backbone to N layers"})
    append_eos: bool | None = field(
        default=None,
        metadata={"help": "end every text with the end-of-text token; default: for last pooling"},
    )
    lora: bool = field(default=False, metadata={"help": "train LoRA adapters instead of all weights"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (alpha is twice the rank)"})
    lora_seed: int = field(default=0, metadata={"help": "seed of the LoRA adapters' random initialisation"})
    query_prefix: str = field(default="", metadata={"help": "text put before every query"})
    document_prefix: str = field(default="", metadata={"help": "text put before every document"})
    query_template: str = field(
        default="",
        metadata={
            "help": "every query as this template with {text} (instead of a prefix); default for a new "
            "compress-pooling model: " + repr(COMPRESS_QUERY_TEMPLATE)
        },
    )
    document_template: str = field(
        default="",
        metadata={
            "help": "every document as this template with {text}; default for a new compress-pooling "
            "model: " + repr(COMPRESS_DOCUMENT_TEMPLATE)
        },
    )

    def __post_init__(self) -> None:
        at_least(self, 1, "max_length", "retriever_layers", "lora_r", "compress_tokens")
        for kind in ("query", "document"):
            if getattr(self, f"{kind}_template") and getattr(self, f"{kind}_prefix"):
                raise ValueError(f"give --{kind}-template or --{kind}-prefix, not both")
            if getattr(self, f"{kind}_template"):
                split_template(getattr(self, f"{kind}_template"), f"--{kind}-template")


@dataclass
class DataArguments:
    _argument_group_name = "training data"  # its heading in --help

    train: str = field(metadata={"help": "training-format JSONL (candidate_ids mined with BM25 if absent)"})
    corpus: str = field(metadata={"help": "BEIR directory or corpus.jsonl the candidate ids refer to"})
    max_examples: int | None = field(default=None, metadata={"help": "read only the first N examples"})

    def __post_init__(self) -> None:
        at_least(self, 1, "max_examples")


@dataclass
class ObjectiveArguments:
    _argument_group_name = "objective"  # its heading in --help

    objective: str = field(
        default="dream",
        metadata={
            "help": "dream (label-free), infonce (uses gold_id), replug (label-free), autoregembed-ic "
            "(label-free, compress pooling), autoregembed-cda (uses gold_id, compress pooling)",
            "choices": list(OBJECTIVES),
        },
    )
    temperature: float = field(
        default=0.05, metadata={"help": "softmax temperature tau over candidate scores"}
    )
    learn_temperature: bool = field(default=False, metadata={"help": "train tau with the retriever"})
    # bf16 where native: level with float32 over two seeds of the warm comparison; DREAM step 0.86 s against
    # 1.22 s with AMX. Without native bf16 (AVX2) it is tens of times slower, so auto takes float32 there.
    retriever_precision: Precision = field(
        default="auto",
        metadata={
            "help": "the retriever's forward and backward (float32 weights and optimiser either way). "
            + PRECISION_HELP
        },
    )
    train_max_length: int | None = field(
        default=None, metadata={"help": "retriever tokens per text while training (default: the model's own)"}
    )

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"--objective {self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        positive(self, "temperature")
        at_least(self, 1, "train_max_length")


@dataclass
class LLMArguments:
    _argument_group_name = "frozen LLM (dream, replug, autoregembed)"  # its heading in --help

    llm: str = field(
        default=SMOLLM2, metadata={"help": "the frozen LLM: packaged name or local HF directory"}
    )
    max_document_tokens: int = field(default=128, metadata={"help": "tokens the LLM reads per candidate"})
    max_target_tokens: int = field(default=16, metadata={"help": "target tokens the LLM must predict"})
    inject_query_rows: bool = field(
        default=False, metadata={"help": "also inject into the query's rows, not only the target's"}
    )
    prompt_instruction: str | None = field(
        default=None,
        metadata={"help": "the instruction the LLM's prompt opens with (default: answer the question)"},
    )
    show_query: bool = field(
        default=True,
        metadata={
            "help": "--no-show-query: the LLM's prompt holds the instruction and the candidates alone, for a "
            "target that is the query itself (which candidates make the query likely)"
        },
    )
    # parallel + bfloat16: level with sequential float32 over two seeds of the warm comparison, 4.5x cheaper
    document_layout: DocumentLayout = field(default="parallel", metadata={"help": LAYOUT_HELP})
    precision: Precision = field(
        default="auto",
        metadata={"help": "the frozen LLM (injected heads always float32). " + PRECISION_HELP},
    )
    document_cache: str | None = field(
        default=None,
        metadata={
            "help": "directory for the parallel layout's document keys/values (default: <output-dir>/document_cache)"
        },
    )
    document_cache_gb: float | None = field(
        default=None,
        metadata={
            "help": "bound on the document cache's disk use, in GB: beyond it the least recently used entries "
            "are deleted and built again when read (default: no bound)"
        },
    )

    def __post_init__(self) -> None:
        at_least(self, 1, "max_document_tokens", "max_target_tokens")
        positive(self, "document_cache_gb")


@dataclass
class RuntimeArguments:
    _argument_group_name = "runtime"  # its heading in --help

    threads: int | None = field(default=2, metadata={"help": "CPU threads torch may use"})

    def __post_init__(self) -> None:
        at_least(self, 1, "threads")


# ---- the other steps -------------------------------------------------------------------------------------
@dataclass
class HeadSelectionArguments:
    calibration: str = field(metadata={"help": "training-format JSONL whose examples carry gold_id"})
    corpus: str = field(metadata={"help": "BEIR directory or corpus.jsonl holding the passages"})
    out: str = field(metadata={"help": "head file to write (JSON)"})
    llm: str = field(default=SMOLLM2, metadata={"help": "packaged LLM name or local HF directory"})
    top_k: int = field(default=16, metadata={"help": "heads DREAM will use by default"})
    random: bool = field(default=False, metadata={"help": "draw top_k random heads instead (ablation)"})
    num_candidates: int = field(default=8, metadata={"help": "documents per calibration prompt"})
    max_examples: int = field(default=64, metadata={"help": "calibration examples to score with"})
    no_calibration: bool = field(default=False, metadata={"help": "skip the 'N/A' query correction"})
    max_document_tokens: int = field(default=128, metadata={"help": "tokens the LLM reads per candidate"})
    document_layout: DocumentLayout = field(
        default="parallel", metadata={"help": LAYOUT_HELP + " (score heads in the layout they train in)"}
    )
    batch_size: int = field(default=4, metadata={"help": "calibration prompts per forward pass"})
    seed: int = field(default=0, metadata={"help": "seeds the gold's position (and random heads)"})
    show_progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        at_least(self, 1, "top_k", "num_candidates", "max_examples", "max_document_tokens", "batch_size")


@dataclass
class FactbookArguments:
    out: str = field(metadata={"help": "directory for the BEIR layout and the train/calibration files"})
    seed: int = field(default=0, metadata={"help": "seeds the split of countries and fields"})
    show_progress: bool = field(
        default=True, metadata={"help": "progress bars on a terminal, plain lines in a log; off: none"}
    )


@dataclass
class MineArguments:
    train: str = field(metadata={"help": "training-format JSONL to add candidates to"})
    corpus: str = field(metadata={"help": "BEIR directory or corpus.jsonl"})
    out: str = field(metadata={"help": "training file to write"})
    k: int = field(default=8, metadata={"help": "candidates per example (top-K)"})
    retriever: str | None = field(
        default=None,
        metadata={
            "help": "mine with this retriever's top-K (dense hard negatives; replaces every example's "
            "candidates) instead of BM25 for the examples that have none"
        },
    )
    show_progress: bool = field(
        default=True, metadata={"help": "progress bars on a terminal, plain lines in a log; off: none"}
    )

    def __post_init__(self) -> None:
        at_least(self, 1, "k")


@dataclass
class ValidateArguments:
    paths: list[str] = field(metadata={"help": "BEIR directories, JSONL/TSV data files, head files"})
    show_progress: bool = field(
        default=True, metadata={"help": "progress bars on a terminal, plain lines in a log; off: none"}
    )
