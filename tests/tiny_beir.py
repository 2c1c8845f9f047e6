"""A small generated BEIR directory (corpus, queries, qrels) in the tiny tokenizers' vocabulary."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = [
    "capital",
    "city",
    "country",
    "france",
    "paris",
    "germany",
    "berlin",
    "italy",
    "rome",
    "spain",
    "madrid",
    "population",
    "river",
    "mountain",
    "language",
    "president",
    "people",
    "year",
    "water",
    "fire",
    "red",
    "blue",
    "green",
    "cat",
    "dog",
    "sun",
    "moon",
    "north",
    "south",
    "east",
    "west",
]


def make_tiny_beir(directory: str | Path, documents: int = 40, queries: int = 12, seed: int = 0) -> Path:
    """Documents of random words; each query repeats words of one document, which is its relevant one."""
    out = Path(directory)
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    texts = {f"d{i}": " ".join(rng.choices(WORDS, k=14)) for i in range(documents)}
    with (out / "corpus.jsonl").open("w", encoding="utf-8") as f:
        for doc_id, text in texts.items():
            f.write(json.dumps({"_id": doc_id, "title": " ".join(rng.sample(WORDS, 2)), "text": text}) + "\n")
    relevant = {f"q{i}": f"d{rng.randrange(documents)}" for i in range(queries)}
    with (out / "queries.jsonl").open("w", encoding="utf-8") as f:
        for query_id, doc_id in relevant.items():
            f.write(json.dumps({"_id": query_id, "text": " ".join(texts[doc_id].split()[:5])}) + "\n")
    with (out / "qrels" / "test.tsv").open("w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        f.writelines(f"{query_id}\t{doc_id}\t1\n" for query_id, doc_id in relevant.items())
    return out
