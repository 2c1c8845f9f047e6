"""mteb's own retrieval evaluation over a local BEIR directory, with no network.

The retriever is exposed through mteb's encoder protocol (:class:`RetrieverEncoder`: ``encode`` with the
retriever's query/document prompts, ``similarity``); the BEIR files are handed to mteb's retrieval task in
the data format it expects (:func:`local_retrieval_task`; a directory named like a task mteb knows, such as
``scifact``, keeps that task's name and metadata, so the result JSON compares with published MTEB results);
:func:`evaluate_with_mteb` runs ``mteb.evaluate``, which encodes, searches, scores and writes its result JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dreamir.data.beir import BeirDataset
from dreamir.search.base import Run
from dreamir.similarity import similarity_matrix as similarity_scores

# dreamir's metric names -> mteb's score keys.
MTEB_METRICS = {"ndcg@10": "ndcg_at_10", "recall@100": "recall_at_100", "mrr@10": "mrr_at_10"}

TextEncoder = Callable[[list[str]], np.ndarray]


class MissingDependencyError(ValueError):
    """An optional package a requested feature needs (a ValueError, so the CLI reports it in one line)."""


def require_mteb() -> None:
    """mteb is an optional dependency: say how to get it rather than fail on an import deep inside."""
    import importlib.util

    if importlib.util.find_spec("mteb") is None:
        raise MissingDependencyError("--engine mteb needs the mteb package: pip install 'dreamir[mteb]'")


class RetrieverEncoder:
    """mteb's ``EncoderProtocol`` over two callables (queries, documents).

    mteb hands over the texts it built (a document is "title text", as in BEIR). The query and document
    prompts are the encoders' own (a dreamir retriever adds its query_prefix / document_prefix): mteb's task
    instructions are not added on top, so mteb scores exactly what dreamir scores.
    """

    @classmethod
    def for_retriever(
        cls, name: str, retriever: Any, encode_queries: TextEncoder, encode_documents: TextEncoder
    ) -> RetrieverEncoder:
        """The encoder of a dreamir retriever: its width, its length limit and its own similarity."""
        return cls(
            name,
            encode_queries,
            encode_documents,
            similarity=retriever.config.similarity,
            embed_dim=retriever.embedding_dim,
            max_tokens=retriever.config.max_length,
        )

    def __init__(
        self,
        name: str,
        encode_queries: TextEncoder,
        encode_documents: TextEncoder,
        similarity: str = "cosine",
        embed_dim: int | None = None,
        max_tokens: int | None = None,
    ) -> None:
        require_mteb()
        from mteb.models.model_meta import ModelMeta, ScoringFunction

        self.encode_queries = encode_queries
        self.encode_documents = encode_documents
        self.similarity_name = similarity
        self.mteb_model_meta = ModelMeta.create_empty(
            {
                "name": mteb_model_name(name),
                "revision": "local",
                "similarity_fn_name": ScoringFunction.COSINE
                if similarity == "cosine"
                else ScoringFunction.DOT_PRODUCT,
                "embed_dim": embed_dim,
                "max_tokens": max_tokens,
                "framework": ["PyTorch"],
            }
        )

    def encode(
        self,
        inputs: Any,
        *,
        task_metadata: Any,
        hf_split: str,
        hf_subset: str,
        prompt_type: Any = None,
        **kwargs: Any,
    ) -> np.ndarray:
        from mteb.types import PromptType

        texts = [text for batch in inputs for text in batch["text"]]
        encoder = self.encode_queries if prompt_type == PromptType.query else self.encode_documents
        return np.asarray(encoder(texts), dtype=np.float32)

    def similarity(self, embeddings1: Any, embeddings2: Any) -> Any:
        import torch

        first, second = (np.atleast_2d(np.asarray(e, dtype=np.float32)) for e in (embeddings1, embeddings2))
        return torch.from_numpy(similarity_scores(first, second, self.similarity_name))

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> Any:
        import torch

        first, second = (np.atleast_2d(np.asarray(e, dtype=np.float32)) for e in (embeddings1, embeddings2))
        pairs = [
            similarity_scores(a[None], b[None], self.similarity_name)[0, 0]
            for a, b in zip(first, second, strict=True)
        ]
        return torch.tensor(pairs, dtype=torch.float32)


def mteb_model_name(name: str) -> str:
    """mteb names models "organisation/model" and makes directories of the parts: two safe parts."""
    parts = [p for p in Path(name).parts if p not in ("/", ".", "..")][-2:] or ["model"]
    safe = ["".join(c if c.isalnum() or c in "-_." else "_" for c in part) for part in parts]
    return "/".join(safe) if len(safe) == 2 else f"dreamir/{safe[0]}"


def _known_task_class(name: str) -> type | None:
    import mteb

    try:
        task = mteb.get_task(name)
    except (KeyError, ValueError):
        return None
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    return type(task) if isinstance(task, AbsTaskRetrieval) else None


def local_retrieval_task(dataset: BeirDataset, name: str, split: str = "test") -> Any:
    """An mteb retrieval task whose data are ``dataset`` (already read from the BEIR directory).

    ``name`` is matched case-insensitively against mteb's tasks (``scifact`` -> SciFact): a match keeps its
    metadata; otherwise a task named ``Local<Name>`` is described from scratch.
    """
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.task_metadata import TaskMetadata

    base = _known_task_class(_mteb_task_name(name)) or AbsTaskRetrieval
    corpus = Dataset.from_list(
        [{"id": doc_id, "title": doc.title, "text": doc.text} for doc_id, doc in dataset.corpus.items()]
    )
    queries = Dataset.from_list(
        [{"id": query_id, "text": text} for query_id, text in dataset.queries.items()]
    )
    relevant = {q: dict(judged) for q, judged in dataset.qrels.items()}

    class LocalTask(base):  # type: ignore[misc, valid-type]
        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            self.dataset = {
                "default": {
                    split: {
                        "corpus": corpus,
                        "queries": queries,
                        "relevant_docs": relevant,
                        "top_ranked": None,
                    }
                }
            }
            self.data_loaded = True

    if base is AbsTaskRetrieval:
        LocalTask.metadata = TaskMetadata(
            name="Local" + "".join(part.capitalize() for part in name.replace("-", "_").split("_")),
            dataset={"path": f"local/{name}", "revision": "local"},
            description=f"the BEIR directory {name}, read locally",
            type="Retrieval",
            category="t2t",
            modalities=["text"],
            eval_splits=[split],
            eval_langs=["eng-Latn"],
            main_score="ndcg_at_10",
        )
    elif split not in base.metadata.eval_splits:
        LocalTask.metadata = base.metadata.model_copy(update={"eval_splits": [split]})
    return LocalTask()


def _mteb_task_name(name: str) -> str:
    import mteb

    lower = name.lower()
    return next(
        (
            task.metadata.name
            for task in mteb.get_tasks(task_types=["Retrieval"])
            if task.metadata.name.lower() == lower
        ),
        name,
    )


@dataclass
class MtebEvaluation:
    metrics: dict[str, float]  # dreamir's metric names, mteb's values
    run: Run  # mteb's top 1000 per query
    scores: dict[str, Any]  # everything mteb scored
    task: str  # mteb's task name (SciFact, or Local<Name>)
    result_file: Path | None  # mteb's result JSON


def evaluate_with_mteb(
    encoder: RetrieverEncoder,
    dataset: BeirDataset,
    name: str,
    out_dir: str | Path,
    split: str = "test",
    show_progress: bool = True,
) -> MtebEvaluation:
    """Run mteb's retrieval evaluation; mteb's result JSON and predictions go under ``out_dir``/mteb."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the hub
    require_mteb()
    import mteb

    out_dir = Path(out_dir)
    task = local_retrieval_task(dataset, name, split)
    cache = mteb.ResultCache(cache_path=out_dir / "mteb")
    result = mteb.evaluate(
        encoder,
        task,
        cache=cache,
        overwrite_strategy="always",
        prediction_folder=out_dir / "mteb" / "predictions",
        show_progress_bar=show_progress,
        co2_tracker=False,
    )
    task_result = result.task_results[0]
    scores = task_result.scores[split][0]
    metrics = {ours: float(scores[theirs]) for ours, theirs in MTEB_METRICS.items()}
    task_name = task.metadata.name
    run = _read_predictions(out_dir / "mteb" / "predictions", task_name)
    result_file = next((out_dir / "mteb" / "results").rglob(f"{task_name}.json"), None)
    return MtebEvaluation(metrics, run, dict(scores), task_name, result_file)


def _read_predictions(folder: Path, task_name: str) -> Run:
    path = folder / f"{task_name}_predictions.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    # {"mteb_model_meta": ..., "default": {"test": {query_id: {doc_id: score}}}} in mteb 2.
    for subset in data.values():
        if isinstance(subset, dict):
            for split_run in subset.values():
                if isinstance(split_run, dict) and all(isinstance(v, dict) for v in split_run.values()):
                    return {q: {d: float(s) for d, s in hits.items()} for q, hits in split_run.items()}
    return {}
