"""Training's optional candidate refresh: the current retriever's own top-K (mined hard negatives) replace
each training example's candidates."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from dreamir.adapt.encoding import encode
from dreamir.data.beir import Document
from dreamir.data.corpus_examples import with_pseudo_gold
from dreamir.data.training import read_training_file, write_training_file
from dreamir.evaluation import exact_search
from dreamir.retriever import Retriever
from dreamir.trainer import Trainer


class DenseCandidateRefresher:
    """From ``after`` on, every ``every`` steps: each training example's candidates become the current
    retriever's top-K over the corpus (pseudo-gold forced in as with BM25). Each refresh is saved, so a
    resumed run reads the one its checkpoint saw."""

    def __init__(
        self,
        retriever: Retriever,
        corpus: Mapping[str, Document],
        source_of: Mapping[str, str],
        k: int,
        force: bool,
        every: int,
        after: int,
        directory: Path,
        seed: int = 0,
        max_length: int | None = None,
        precision: str = "float32",
    ) -> None:
        self.retriever = retriever
        self.max_length = max_length
        self.precision = precision
        self.doc_ids = list(corpus)
        self.doc_texts = [corpus[i].full_text for i in self.doc_ids]
        self.source_of = source_of
        self.k, self.force, self.every, self.after = k, force, every, after
        self.directory = directory
        self.seed = seed

    def _due(self, step: int) -> bool:
        return step >= self.after and (step - self.after) % self.every == 0

    def _file(self, step: int) -> Path:
        return self.directory / f"candidates-step-{step:06d}.jsonl"

    def on_train_begin(self, trainer: Trainer) -> None:
        saved = sorted(
            p
            for p in self.directory.glob("candidates-step-*.jsonl")
            if int(p.stem.split("-")[-1]) <= trainer.step
        )
        if saved:
            trainer.examples = read_training_file(saved[-1])
        elif self._due(0):
            self._refresh(trainer)

    def on_step_end(self, trainer: Trainer) -> dict[str, float]:
        if not self._due(trainer.step) or trainer.step == trainer.args.max_steps:
            return {}
        return self._refresh(trainer)

    def _refresh(self, trainer: Trainer) -> dict[str, float]:
        queries = encode(
            self.retriever, [e.query for e in trainer.examples], True, self.max_length, self.precision
        )
        docs = encode(self.retriever, self.doc_texts, False, self.max_length, self.precision)
        run = exact_search(queries, docs, [str(i) for i in range(len(queries))], self.doc_ids, k=self.k + 1)
        ranked = [list(run[str(i)]) for i in range(len(queries))]
        examples = with_pseudo_gold(
            trainer.examples, ranked, self.source_of, self.k, self.force, self.seed + trainer.step
        )
        found = sum(
            e.gold_id in r or self.source_of.get(e.gold_id) in r
            for e, r in zip(examples, ranked, strict=True)
        )
        write_training_file(self._file(trainer.step), examples)
        trainer.examples = examples
        return {"refresh_pseudo_gold_found": found / len(examples)}
