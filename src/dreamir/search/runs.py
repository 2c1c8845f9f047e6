"""TREC run files (``query_id Q0 doc_id rank score tag``), the format trec_eval, pytrec_eval and ir_datasets
read."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from dreamir.data.errors import DataFormatError
from dreamir.io import atomic_path
from dreamir.search.base import Run


def _ranked(scored: Mapping[str, float]) -> list[tuple[str, float]]:
    # trec_eval's order: score descending, ties by document id descending.
    return sorted(scored.items(), key=lambda item: (item[1], item[0]), reverse=True)


def write_trec_run(run: Mapping[str, Mapping[str, float]], path: str | Path, tag: str = "dreamir") -> Path:
    """Write ``{query_id: {doc_id: score}}`` atomically, each query's hits ranked from 1."""
    if not tag or any(c.isspace() for c in tag):
        raise ValueError(f"a run tag must be one word, got {tag!r}")
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for query_id, scored in run.items():
            for rank, (doc_id, score) in enumerate(_ranked(scored), start=1):
                f.write(f"{query_id} Q0 {doc_id} {rank} {score:.8g} {tag}\n")
    return Path(path)


def read_trec_run(path: str | Path) -> Run:
    """The run in a TREC run file; a malformed line is a DataFormatError naming the file and line."""
    run: Run = {}
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 6:
                raise DataFormatError(path, number, None, f"expected 6 fields, got {len(fields)}")
            query_id, _, doc_id, _, score, _ = fields
            try:
                run.setdefault(query_id, {})[doc_id] = float(score)
            except ValueError:
                raise DataFormatError(path, number, "score", f"not a number: {score!r}") from None
    return run
