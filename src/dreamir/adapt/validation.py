"""Training's label-free validation signal: how often the held-out examples' pseudo-gold ranks in the
retriever's top 10 over the corpus; the best checkpoint by it is saved (adapt writes it out with --keep best)."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from dreamir.adapt.encoding import encode
from dreamir.adapt.examples import source_passage
from dreamir.data.beir import Document
from dreamir.data.training import TrainingExample
from dreamir.evaluation import pseudo_gold_success
from dreamir.io import atomic_path, read_log_rows, write_json_atomic
from dreamir.retriever import Retriever
from dreamir.trainer import Trainer

VALIDATION_METRIC = "val_success@10"
# The encodings behind the first measurement, the best checkpoint's and the last one's (queries, searched
# passages, golds), beside the checkpoints: the report compares BM25, base, adapted and hybrid search on them.
START_ENCODINGS = "validation_step0.npz"
BEST_ENCODINGS = "best_encodings.npz"
LAST_ENCODINGS = "last_encodings.npz"
# With a hundred or so held-out examples success@10 moves in steps of 1%: MRR@10 breaks its ties.
TIE_BREAKER = "val_mrr@10"


def _rank_key(result: Mapping[str, float]) -> tuple[float, float]:
    return (result[VALIDATION_METRIC], result[TIE_BREAKER])


class PseudoGoldValidator:
    """Every ``every`` steps (and before the first), the held-out examples' success@10 over the corpus;
    the best retriever so far is saved to ``best_dir``.

    Where the held-out examples' passages have titles, each title also searches for its passage's text (a
    second kind of query, unlike the training queries): a signal drawn only from the training task can
    rise while real retrieval falls (the retriever learns the pseudo-task), and the titles guard that.
    """

    def __init__(
        self,
        retriever: Retriever,
        validation: Sequence[TrainingExample],
        corpus: Mapping[str, Document],
        derived: Mapping[str, Document],
        source_of: Mapping[str, str],
        max_docs: int,
        every: int,
        best_dir: Path,
        seed: int = 0,
        max_length: int | None = None,
        precision: str = "float32",
    ) -> None:
        self.retriever = retriever
        self.max_length = max_length
        self.precision = precision
        self.validation = list(validation)
        self.every = every
        self.best_dir = best_dir
        sources = [source_passage(e, source_of) for e in self.validation]
        unique_sources = list(dict.fromkeys(sources))
        taken = set(unique_sources)
        others = [i for i in sorted(corpus) if i not in taken]
        random.Random(seed).shuffle(others)
        self.doc_ids = unique_sources + others[: max(max_docs - len(unique_sources), 0)]
        row = {doc_id: i for i, doc_id in enumerate(self.doc_ids)}
        self.doc_texts = [corpus[i].full_text for i in self.doc_ids]
        self.gold_rows = [row[s] for s in sources]
        self.queries = [e.query for e in self.validation]
        self.gold_texts = [(derived.get(e.gold_id) or corpus[e.gold_id]).full_text for e in self.validation]
        titled = [s for s in dict.fromkeys(sources) if len(corpus[s].title.split()) >= 3 and corpus[s].text]
        self.queries += [corpus[s].title for s in titled]
        self.gold_rows += [row[s] for s in titled]
        self.gold_texts += [corpus[s].text for s in titled]
        self.num_titles = len(titled)
        # A pseudo-gold is most often a searched passage itself (genq): each distinct text is encoded once
        # and the searched passages and the golds are read from those rows.
        self.distinct_texts = list(dict.fromkeys(self.doc_texts + self.gold_texts))
        row_of = {text: row for row, text in enumerate(self.distinct_texts)}
        self.doc_text_rows = [row_of[t] for t in self.doc_texts]
        self.gold_text_rows = [row_of[t] for t in self.gold_texts]
        self.best = (float("-inf"), float("-inf"))
        self.encodings: dict[str, np.ndarray] = {}

    @property
    def generated(self) -> slice:
        """The held-out examples' own queries (the titles' queries follow them)."""
        return slice(0, len(self.queries) - self.num_titles)

    def measure(self) -> dict[str, float]:
        queries = encode(self.retriever, self.queries, True, self.max_length, self.precision)
        encoded = encode(self.retriever, self.distinct_texts, False, self.max_length, self.precision)
        docs, golds = encoded[self.doc_text_rows], encoded[self.gold_text_rows]
        self.encodings = {"queries": queries, "docs": docs, "golds": golds}
        result = {f"val_{k}": v for k, v in pseudo_gold_success(queries, docs, self.gold_rows, golds).items()}
        if self.num_titles:
            titles = slice(len(self.queries) - self.num_titles, None)
            by_title = pseudo_gold_success(queries[titles], docs, self.gold_rows[titles], golds[titles])
            result.update({f"val_title_{k}": v for k, v in by_title.items()})
        return result

    def on_train_begin(self, trainer: Trainer) -> None:
        log = trainer.output_dir / "log.jsonl"
        rows = read_log_rows(log) if log.exists() else []
        scores = [_rank_key(r) for r in rows if VALIDATION_METRIC in r and r["step"] <= trainer.step]
        baseline = trainer.output_dir / "validation_step0.json"
        if not baseline.exists():
            result = self.measure()
            self._save_encodings(trainer.output_dir / START_ENCODINGS)
            write_json_atomic(baseline, result)
        scores.append(_rank_key(json.loads(baseline.read_text())))
        self.best = max(scores)
        if trainer.step == 0 and not self.best_dir.exists():
            self.retriever.save(self.best_dir)  # the starting retriever until something beats it

    def on_step_end(self, trainer: Trainer) -> dict[str, float]:
        if trainer.step % self.every and trainer.step != trainer.args.max_steps:
            return {}
        result = self.measure()
        # Exact ties go to the later checkpoint: it has seen more of the corpus.
        if _rank_key(result) >= self.best:
            self.best = _rank_key(result)
            self.retriever.save(self.best_dir)
            self._save_encodings(self.best_dir.parent / BEST_ENCODINGS)
            write_json_atomic(self.best_dir.parent / "best.json", {"step": trainer.step, **result})
        if trainer.step == trainer.args.max_steps:
            self._save_encodings(self.best_dir.parent / LAST_ENCODINGS)
        return result

    def _save_encodings(self, path: Path) -> None:
        with atomic_path(path) as tmp, tmp.open("wb") as f:
            np.savez(f, **self.encodings)
