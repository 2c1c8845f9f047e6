"""Query-focused retrieval head selection (QRHead-style) and head files.

Each (layer, head) is scored on calibration examples (query, candidates, gold document): the attention mass
from the query's rows to the gold document, minus the same mass measured with the content-free query "N/A"
(which removes a head's fixed preference for some positions or documents). The top heads are kept.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import AutoConfig

from dreamir.data.errors import DataFormatError, read_json_file
from dreamir.io import write_json_atomic
from dreamir.llm.frozen import FrozenLLM
from dreamir.models import CACHE_MARKER, PACKAGED_MODELS, resolve_model

CONTENT_FREE_QUERY = "N/A"


@dataclass
class CalibrationExample:
    query: str
    documents: list[tuple[str, str]]  # (title, text), in the order the LLM reads them
    gold_index: int


@dataclass
class HeadSet:
    """Ranked heads with their scores, as stored in a head file."""

    model: str
    heads: list[tuple[int, int]]
    scores: list[float]
    settings: dict[str, Any] = field(default_factory=dict)

    def top(self, k: int | None) -> list[tuple[int, int]]:
        if k is not None and k > len(self.heads):
            raise ValueError(f"asked for {k} heads but the head file ranks only {len(self.heads)}")
        return list(self.heads[:k])

    def save(self, path: str | Path) -> None:
        data = asdict(self)
        data["heads"] = [
            {"layer": layer, "head": head, "score": score}
            for (layer, head), score in zip(self.heads, self.scores, strict=True)
        ]
        del data["scores"]
        write_json_atomic(path, data)

    @classmethod
    def load(cls, path: str | Path) -> HeadSet:
        """Read a head file; any problem is a DataFormatError naming the file and the entry at fault."""
        path = Path(path)
        if path.is_dir():
            raise DataFormatError(path, None, None, "is a directory, expected a head file (JSON)")
        data = read_json_file(path)  # a byte-order mark is accepted, as in the JSONL loaders
        model = data.get("model")
        if not isinstance(model, str) or not model.strip():
            raise DataFormatError(path, None, "model", "expected the LLM's name (a non-empty string)")
        rows = data.get("heads")
        if not isinstance(rows, list):
            raise DataFormatError(path, None, "heads", "expected a list of {layer, head, score} entries")
        settings = data.get("settings", {})
        if not isinstance(settings, dict):
            raise DataFormatError(
                path, None, "settings", f"expected an object, got {type(settings).__name__}"
            )
        heads: list[tuple[int, int]] = []
        scores: list[float] = []
        first: dict[tuple[int, int], int] = {}
        for index, row in enumerate(rows):
            entry = f"heads[{index}]"
            if not isinstance(row, dict):
                raise DataFormatError(path, None, entry, f"expected an object, got {type(row).__name__}")
            layer, head = (_head_number(row, key, path, entry) for key in ("layer", "head"))
            score = row.get("score", 0.0)
            # bool is an int subclass: true/false are not scores.
            if isinstance(score, bool) or not isinstance(score, int | float):
                raise DataFormatError(path, None, f"{entry}.score", f"expected a number, got {score!r}")
            if (layer, head) in first:
                raise DataFormatError(
                    path,
                    None,
                    entry,
                    f"duplicate of heads[{first[layer, head]}] (layer {layer}, head {head})",
                )
            first[layer, head] = index
            heads.append((layer, head))
            scores.append(float(score))
        return cls(model=model, heads=heads, scores=scores, settings=settings)

    def check_fits(self, llm: str, path: str | Path) -> None:
        """Refuse a head file scored on another LLM than ``llm`` (a packaged name or local directory), or
        holding a head outside ``llm``'s layers x heads. Reads the LLM's config only, not its weights."""
        own, other = _model_identity(self.model), _model_identity(llm)
        if own is not None and own != other:
            raise HeadFileError(
                path,
                f"its heads were scored on the LLM '{self.model}', not on '{llm}' given with --llm; "
                f"use --llm {self.model}, or score heads for {llm} with `dreamir heads`",
            )
        config = AutoConfig.from_pretrained(resolve_model(llm), local_files_only=True)
        layers, per_layer = config.num_hidden_layers, config.num_attention_heads
        for index, (layer, head) in enumerate(self.heads):
            if not (layer < layers and head < per_layer):
                raise HeadFileError(
                    path,
                    f"heads[{index}] (layer {layer}, head {head}) is outside {llm}'s {layers} layers x "
                    f"{per_layer} heads; the file was scored on '{self.model}'",
                )


class HeadFileError(DataFormatError):
    """A sound head file that does not belong to the LLM it is used with."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(path, None, None, reason)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.reason))


def _head_number(row: dict[str, Any], key: str, path: Path, entry: str) -> int:
    """A layer or head number: a non-negative JSON integer (not a float such as 1.0, not true/false)."""
    if key not in row:
        raise DataFormatError(path, None, f"{entry}.{key}", "missing")
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataFormatError(path, None, f"{entry}.{key}", f"expected a non-negative integer, got {value!r}")
    if value < 0:
        raise DataFormatError(path, None, f"{entry}.{key}", f"must be >= 0, got {value}")
    return value


def _model_identity(name: str) -> str | None:
    """What names a model, to compare two names: a packaged name, or a local directory (resolved; the cache
    of a packaged model counts as that model). None for a name that is neither (nothing to compare)."""
    if name.lower() in PACKAGED_MODELS:
        return name.lower()
    path = Path(name).expanduser()
    if not path.is_dir():
        return None
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        packaged = json.loads((path / CACHE_MARKER).read_text(encoding="utf-8"))["name"]
        if str(packaged).lower() in PACKAGED_MODELS:
            return str(packaged).lower()
    return str(path.resolve())


@torch.no_grad()
def score_heads(
    llm: FrozenLLM,
    examples: Sequence[CalibrationExample],
    batch_size: int = 4,
    calibrate: bool = True,
    show_progress: bool = True,
) -> torch.Tensor:
    """Mean (calibrated) query-to-gold attention mass of every head: a [layers, heads] tensor."""
    if not examples:
        raise ValueError("head selection needs at least one calibration example")
    total = torch.zeros(llm.num_layers, llm.num_heads)
    batches = range(0, len(examples), batch_size)
    for start in tqdm(batches, desc="scoring heads", disable=not show_progress):
        chunk = examples[start : start + batch_size]
        gold = torch.tensor([e.gold_index for e in chunk])
        queries = [[e.query for e in chunk]]
        if calibrate:
            queries.append([CONTENT_FREE_QUERY] * len(chunk))
        batches = [
            llm.collate([llm.encode(q, e.documents, None) for q, e in zip(qs, chunk, strict=True)])
            for qs in queries
        ]
        masses = [_at_gold(mass, gold) for mass in llm.document_mass(batches)]
        total += (masses[0] - masses[1] if calibrate else masses[0]).sum(0).cpu()
    return total / len(examples)


def _at_gold(mass: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """[B, L, H, K] masses -> [B, L, H] mass on each example's gold document."""
    index = gold.view(-1, 1, 1, 1).expand(*mass.shape[:3], 1).to(mass.device)
    return mass.gather(3, index)[..., 0]


def rank_heads(scores: torch.Tensor, model: str, settings: dict[str, Any] | None = None) -> HeadSet:
    order = torch.argsort(scores.flatten(), descending=True)
    num_heads = scores.shape[1]
    heads = [(int(i) // num_heads, int(i) % num_heads) for i in order]
    return HeadSet(model, heads, [float(scores.flatten()[i]) for i in order], dict(settings or {}))


def random_heads(num_layers: int, num_heads: int, count: int, seed: int, model: str) -> HeadSet:
    """The ablation: ``count`` heads drawn uniformly at random (scores are 0)."""
    pairs = [(layer, head) for layer in range(num_layers) for head in range(num_heads)]
    chosen = random.Random(seed).sample(pairs, count)
    return HeadSet(model, chosen, [0.0] * count, {"method": "random", "seed": seed})
