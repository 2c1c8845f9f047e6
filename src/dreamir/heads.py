"""Query-focused retrieval head selection (QRHead-style) and head files.

Each (layer, head) is scored on calibration examples (query, candidates, gold document): the attention mass
from the query's rows to the gold document, minus the same mass measured with the content-free query "N/A"
(which removes a head's fixed preference for some positions or documents). The top heads are kept.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dreamir.io import write_json_atomic
from dreamir.llm.frozen import FrozenLLM

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
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            rows = data["heads"]
            heads = [(int(r["layer"]), int(r["head"])) for r in rows]
            scores = [float(r.get("score", 0.0)) for r in rows]
            return cls(
                model=str(data["model"]), heads=heads, scores=scores, settings=data.get("settings", {})
            )
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}: not a valid head file ({error!r})") from error


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
