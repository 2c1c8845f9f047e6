"""The retriever's settings: pooling, normalisation, similarity, lengths, prefixes, LoRA, cutting."""

from __future__ import annotations

import dataclasses
import logging
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from dreamir.data.errors import DataFormatError, type_problem
from dreamir.similarity import Similarity, check_similarity

logger = logging.getLogger(__name__)

# "compress": the mean of the final states of k learnable tokens appended to every text (AutoRegEmbed).
Pooling = Literal["mean", "cls", "last", "compress"]
POOLINGS: tuple[str, ...] = get_args(Pooling)

# Written beside the sentence-transformers files: the settings sentence-transformers has no place for.
CONFIG_FILE = "dreamir_retriever.json"


@dataclass
class LoraSettings:
    """LoRA adapter settings. ``target_modules=None`` means peft's defaults for the architecture."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | Literal["all-linear"] | None = None
    # The adapters' random initialisation has its own seed: drawn from the global generator, it would depend
    # on whatever ran before in the process, and so would every result trained from it.
    init_seed: int = 0


@dataclass
class RetrieverConfig:
    pooling: Pooling = "mean"
    normalize: bool = True
    # How a query and a document are compared, in training, evaluation and search alike ("cosine" is
    # sentence-transformers' default; with normalize=True it equals "dot").
    similarity: Similarity = "cosine"
    max_length: int = 256
    query_prefix: str = ""
    document_prefix: str = ""
    # Text put after every query / document (a template "{prefix}{text}{suffix}"), before any EOS or
    # compress tokens the tokenizer appends.
    query_suffix: str = ""
    document_suffix: str = ""
    # "compress" pooling: how many tokens <EMBED0>..<EMBED{k-1}> the tokenizer appends to every text.
    compress_tokens: int = 5
    lora: LoraSettings | None = None
    # Keep only the first N transformer layers (a cheap raw backbone); None keeps them all.
    num_layers: int | None = None
    # End every text with the tokenizer's end-of-text token, so that last-token pooling reads a state that
    # has seen the whole text rather than its last word (as RepLLaMA does). None: only for "last" pooling
    # (decided when used, so that a config copied with another pooling follows it).
    append_eos: bool | None = None

    @property
    def ends_with_eos(self) -> bool:
        return self.pooling == "last" if self.append_eos is None else self.append_eos

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {sorted(POOLINGS)}, got {self.pooling!r}")
        check_similarity(self.similarity)
        if isinstance(self.lora, Mapping):
            self.lora = LoraSettings(**self.lora)
        if self.max_length < 1:
            raise ValueError(f"max_length must be positive, got {self.max_length}")
        if self.compress_tokens < 1:
            raise ValueError(f"compress_tokens must be positive, got {self.compress_tokens}")
        if self.num_layers is not None and self.num_layers < 1:
            raise ValueError(f"num_layers must be positive, got {self.num_layers}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str | Path = CONFIG_FILE) -> RetrieverConfig:
        """The settings in ``d`` (read from ``source``), each of its field's type, or a DataFormatError
        naming the file and the field."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            logger.warning("Ignoring unknown RetrieverConfig keys: %s", sorted(unknown))
        settings = {k: v for k, v in d.items() if k in known}
        _check_types(settings, cls, source)
        if isinstance(settings.get("lora"), Mapping):
            _check_types(settings["lora"], LoraSettings, source, "lora.")
        try:
            return cls(**settings)
        except (TypeError, ValueError) as error:
            raise DataFormatError(source, None, None, str(error)) from None


def _check_types(settings: Mapping[str, Any], cls: type, source: str | Path, prefix: str = "") -> None:
    hints = typing.get_type_hints(cls)
    for name, value in settings.items():
        problem = type_problem(value, hints[name]) if name in hints else None
        if problem:
            raise DataFormatError(source, None, prefix + name, problem)
