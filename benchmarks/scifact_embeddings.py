"""SciFact corpus embeddings of a retriever, encoded once and cached under runs/embeddings/ (shared by
search_speed.py and mteb_agreement.py, so a re-run does not re-encode the 5,183 abstracts)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from dreamir.data.beir import BeirDataset
from dreamir.io import atomic_path, write_json_atomic
from dreamir.retriever import Retriever

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "data" / "beir" / "scifact"
CACHE = ROOT / "runs" / "embeddings"


def _fingerprint(model: str, retriever: Retriever, texts: list[str]) -> str:
    digest = hashlib.sha256(json.dumps([model, retriever.config.to_dict(), texts]).encode())
    return digest.hexdigest()[:16]


def corpus_embeddings(
    retriever: Retriever, model: str, dataset: BeirDataset, name: str, batch_size: int = 64
) -> tuple[np.ndarray, float | None]:
    """Embeddings of ``dataset.corpus`` in its order; the seconds encoding took (None when cached)."""
    texts = [doc.full_text for doc in dataset.corpus.values()]
    key = _fingerprint(model, retriever, texts)
    path = CACHE / f"{name}-{Path(model).name}-{key}.npy"
    if path.is_file():
        print(f"corpus embeddings: cached {path.relative_to(ROOT)}", flush=True)
        return np.load(path), None
    print(
        f"encoding {len(texts)} documents with {model} (cached afterwards in {path.relative_to(ROOT)})",
        flush=True,
    )
    started = time.perf_counter()
    embeddings = retriever.encode_documents(texts, batch_size=batch_size, show_progress=True)
    seconds = time.perf_counter() - started
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        np.save(f, embeddings)
    write_json_atomic(
        path.with_suffix(".json"), {"model": model, "documents": len(texts), "seconds": seconds}
    )
    return embeddings, seconds


def subset(dataset: BeirDataset, documents: int, queries: int) -> BeirDataset:
    """The first ``queries`` queries and a corpus of their relevant documents plus the first others."""
    query_ids = list(dataset.queries)[:queries]
    qrels = {q: dataset.qrels[q] for q in query_ids if q in dataset.qrels}
    keep = dict.fromkeys(d for judged in qrels.values() for d in judged if d in dataset.corpus)
    keep.update(dict.fromkeys(list(dataset.corpus)[:documents]))
    corpus = {d: dataset.corpus[d] for d in keep}
    queries = {q: dataset.queries[q] for q in query_ids}
    return BeirDataset(name=dataset.name + "-quick", corpus=corpus, queries=queries, qrels=qrels)
