"""``dreamir index``, ``dreamir search`` and ``dreamir eval``'s engines: a model (or BM25) bound to the
indexes of :mod:`dreamir.search`.

An index directory remembers the model that encoded it (``index.json``), so ``search`` encodes queries with
the same model; the documents' titles are kept beside the index for display. ``--hybrid`` adds BM25 to a
dense model and fuses the two rankings (score interpolation by default, see dreamir.search.fusion).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dreamir.artefacts import (
    ArtefactError,
    artefact_directory,
    check_corpus,
    check_output_directory,
    command_record,
    corpus_fingerprint,
    directory_sha256,
    model_fingerprint,
    replaceable_file,
    write_manifest,
)
from dreamir.data.beir import BeirDataset, Document, load_beir, read_corpus
from dreamir.data.training import TrainingExample, read_training_file, validate_against_corpus
from dreamir.evaluation import METRICS, compute_metrics
from dreamir.guards import check_finite_embeddings
from dreamir.io import write_json_atomic
from dreamir.models import MINILM, resolve_model
from dreamir.options import at_least
from dreamir.retriever import Retriever
from dreamir.search import (
    BM25Index,
    ExactIndex,
    FaissIndex,
    FusionMethod,
    Hits,
    HybridIndex,
    Run,
    SearchIndex,
    load_index,
    mine_candidates,
    read_index_info,
)
from dreamir.search.base import read_titles, verify_index
from dreamir.search.fusion import DEFAULT_FUSION, DEFAULT_WEIGHTS, check_fusion, default_weight
from dreamir.search.runs import write_trec_run
from dreamir.similarity import SIMILARITIES

IndexKind = Literal["flat", "hnsw", "exact"]
# Reorders each query's hits given the queries and the documents' (title, text) (dreamir.reranking builds one;
# this module knows no LLM).
Reranker = Callable[[Sequence[str], Hits, Mapping[str, tuple[str, str]]], Hits]
RERANK_DEPTH = 20
RERANK_HELP = (
    "rerank the top --rerank-depth hits with this frozen LLM (e.g. smollm2-135m-instruct): its likelihood "
    "of the query given each passage, fused with the first stage's score (one LLM pass per hit)"
)
RERANK_DEPTH_HELP = "with --rerank-llm: the first stage's hits the LLM rereads per query"
INDEX_HELP = "flat: FAISS exact inner product; hnsw: FAISS graph (fast, approximate); exact: numpy"
HYBRID_HELP = "also rank with BM25 and fuse the two rankings (--fusion)"
FUSION_HELP = (
    "how hybrid rankings are fused: interpolation (a weighted sum of min-max normalised scores) or rrf "
    "(reciprocal rank fusion)"
)
WEIGHT_HELP = (
    "the dense model's weight in the fusion, BM25 gets 1 - weight (default: "
    + ", ".join(f"{method} {weight}" for method, weight in DEFAULT_WEIGHTS.items())
    + "; rrf at 0.5 is plain RRF)"
)


def _check_fusion_options(hybrid: bool, fusion: str | None, weight: float | None, model: str | None) -> None:
    """Fusion options only with a hybrid search, and a hybrid search only with a dense model."""
    if hybrid and model == "bm25":
        raise ValueError("--hybrid fuses BM25 with a dense model: give --model a retriever, not bm25")
    method = fusion or DEFAULT_FUSION
    check_fusion(method, default_weight(method, weight), 0)


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _passages(corpus: Mapping[str, Document]) -> dict[str, tuple[str, str]]:
    """Each document's (title, text), what a reranker reads."""
    return {doc_id: (doc.title, doc.text) for doc_id, doc in corpus.items()}


def _corpus(path: str | Path) -> dict[str, Document]:
    """A BEIR directory or a corpus.jsonl file."""
    path = Path(path)
    corpus = read_corpus(path / "corpus.jsonl" if path.is_dir() else path)
    if not corpus:
        raise ValueError(f"{path}: the corpus is empty")
    return corpus


# ---- building --------------------------------------------------------------------------------------------
@dataclass
class IndexArguments:
    model: str = field(metadata={"help": "'bm25', a packaged retriever name or a saved retriever directory"})
    corpus: str = field(metadata={"help": "BEIR directory (corpus.jsonl) or a corpus.jsonl file"})
    out: str = field(metadata={"help": "index directory to write"})
    faiss: IndexKind = field(default="flat", metadata={"help": INDEX_HELP})
    similarity: str | None = field(
        default=None,
        metadata={
            "help": f"score of a query and a document, one of {SIMILARITIES} (default: the model's own)"
        },
    )
    hybrid: bool = field(default=False, metadata={"help": HYBRID_HELP})
    fusion: FusionMethod = field(default=DEFAULT_FUSION, metadata={"help": FUSION_HELP})
    fusion_weight: float | None = field(default=None, metadata={"help": WEIGHT_HELP})
    hnsw_m: int = field(default=32, metadata={"help": "hnsw: graph links per document"})
    ef_construction: int = field(default=200, metadata={"help": "hnsw: candidate list while building"})
    ef_search: int = field(default=128, metadata={"help": "hnsw: candidate list while searching (>= k)"})
    batch_size: int = field(default=64, metadata={"help": "texts per encoding batch"})
    threads: int | None = field(default=2, metadata={"help": "CPU threads for encoding"})
    show_progress: bool = field(default=True, metadata={"help": "progress while encoding"})
    overwrite: bool = field(
        default=False,
        metadata={"help": "write into an --out directory that is not an index (its other files kept)"},
    )

    def __post_init__(self) -> None:
        at_least(self, 1, "hnsw_m", "ef_construction", "ef_search", "batch_size", "threads")
        if self.similarity is not None and self.similarity not in SIMILARITIES:
            raise ValueError(f"--similarity must be one of {SIMILARITIES}, got {self.similarity!r}")
        _check_fusion_options(self.hybrid, self.fusion, self.fusion_weight, self.model)


def load_encoder(model: str) -> Retriever:
    return Retriever.from_pretrained(resolve_model(model)).eval()


def encode_corpus(
    retriever: Retriever, corpus: dict[str, Document], batch_size: int = 64, show_progress: bool = True
) -> np.ndarray:
    """Document embeddings in corpus order (title + text, as BEIR; length-sorted batches)."""
    texts = [doc.full_text for doc in corpus.values()]
    embeddings = retriever.encode_documents(texts, batch_size=batch_size, show_progress=show_progress)
    return check_finite_embeddings(np.asarray(embeddings), "document embeddings")


def query_encoder(retriever: Retriever, batch_size: int = 64):
    return lambda texts: retriever.encode_queries(texts, batch_size=batch_size, show_progress=False)


def dense_index(
    doc_ids: Sequence[str],
    embeddings: np.ndarray,
    kind: IndexKind,
    encode_queries: Any = None,
    similarity: str = "cosine",
    **hnsw: int,
) -> SearchIndex:
    if kind == "exact":
        return ExactIndex(doc_ids, embeddings, encode_queries, similarity)
    return FaissIndex(doc_ids, embeddings, encode_queries, similarity, faiss_kind=kind, **hnsw)


def build_index(args: IndexArguments) -> tuple[SearchIndex, dict[str, Any]]:
    """Encode the corpus once and save the index with the model's name and the settings; its manifest
    records the model's and the corpus's fingerprints."""
    out = check_output_directory(args.out, "index", args.overwrite)  # before the slow encoding
    _set_threads(args.threads)
    corpus = _corpus(args.corpus)
    model_dir = None if args.model == "bm25" else resolve_model(args.model)
    provenance = {
        "command": command_record("index", args),
        "model": model_fingerprint(args.model, model_dir),
        "corpus": corpus_fingerprint(corpus),
    }
    started = time.perf_counter()
    metadata: dict[str, Any] = {"model": args.model, "corpus": str(Path(args.corpus).resolve())}
    if model_dir is None:
        index: SearchIndex = BM25Index.from_corpus(corpus, show_progress=args.show_progress)
    else:
        path = model_dir
        retriever = load_encoder(args.model)
        embeddings = encode_corpus(retriever, corpus, args.batch_size, args.show_progress)
        hnsw = {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction, "ef_search": args.ef_search}
        similarity = args.similarity or retriever.config.similarity
        index = dense_index(list(corpus), embeddings, args.faiss, None, similarity, **hnsw)
        if args.hybrid:
            lexical = BM25Index.from_corpus(corpus, show_progress=args.show_progress)
            index = HybridIndex(lexical, index, args.fusion, args.fusion_weight)
        metadata.update(model_path=str(path.resolve()), retriever=retriever.config.to_dict())
    metadata["build_seconds"] = round(time.perf_counter() - started, 3)
    titles = [doc.title for doc in corpus.values()]
    index.save(out, metadata, titles=titles, provenance=provenance, overwrite=args.overwrite)
    return index, read_index_info(out)


def index_model(directory: str | Path) -> str:
    """The model an index was built with: 'bm25', or the retriever directory that encodes its queries."""
    info = read_index_info(directory)
    if info["kind"] == "bm25":
        return "bm25"
    model = info.get("model_path") or info.get("model")
    if not model:
        raise ArtefactError(Path(directory) / "index.json", "field 'model': missing, cannot encode queries")
    return model


def open_index(directory: str | Path, batch_size: int = 64) -> SearchIndex:
    """An index with the query encoder it was built with (its model is loaded for dense indexes), refused
    when that model's files changed since the index was built."""
    index = load_index(directory)  # verified first: a damaged index.json is named as such
    model = index_model(directory)
    if model == "bm25":
        return index
    recorded = (getattr(index, "manifest", None) or {}).get("model") or {}
    if recorded.get("sha256") and recorded["sha256"] != directory_sha256(resolve_model(model)):
        raise ArtefactError(
            directory,
            f"was built with another version of the model at {model} (its files changed since): rebuild it",
        )
    index.encode_queries = query_encoder(load_encoder(model), batch_size)
    return index


# ---- searching -------------------------------------------------------------------------------------------
@dataclass
class SearchArguments:
    index: str = field(metadata={"help": "index directory written by `dreamir index`"})
    queries: list[str] = field(default_factory=list, metadata={"help": "query texts"})
    k: int = field(default=10, metadata={"help": "hits per query", "aliases": ["-k"]})
    fusion: FusionMethod | None = field(
        default=None, metadata={"help": "hybrid index: fuse this way instead of the index's own --fusion"}
    )
    fusion_weight: float | None = field(
        default=None, metadata={"help": "hybrid index: " + WEIGHT_HELP + " (default: the index's own)"}
    )
    rerank_llm: str | None = field(default=None, metadata={"help": RERANK_HELP})
    rerank_depth: int = field(default=RERANK_DEPTH, metadata={"help": RERANK_DEPTH_HELP})
    corpus: str | None = field(
        default=None,
        metadata={
            "help": "with --rerank-llm: the corpus the index was built from (BEIR directory or corpus.jsonl), "
            "whose texts the LLM reads"
        },
    )
    json: bool = field(default=False, metadata={"help": 'one JSON object per query: {"query", "hits"}'})
    threads: int | None = field(default=2, metadata={"help": "CPU threads for encoding the queries"})
    show_progress: bool = field(default=True, metadata={"help": "progress while loading the model"})

    def __post_init__(self) -> None:
        at_least(self, 1, "k", "threads", "rerank_depth")
        if self.rerank_llm and not self.corpus:
            raise ValueError("--rerank-llm reads the hits' texts: give --corpus, the index's corpus")
        if self.corpus and not self.rerank_llm:
            raise ValueError("--corpus is read only to rerank: add --rerank-llm (e.g. smollm2-135m-instruct)")
        if isinstance(self.queries, str):  # one query given as a string (e.g. in --config), not its letters
            self.queries = [self.queries]
        if not self.queries:
            raise ValueError("give at least one query text")
        blank = next((i for i, query in enumerate(self.queries) if not query.strip()), None)
        if blank is not None:
            raise ValueError(f"query {blank + 1} is empty: give a query text")
        _check_fusion_options(False, self.fusion, self.fusion_weight, None)


def with_fusion(
    index: SearchIndex, directory: str | Path, method: FusionMethod | None, weight: float | None
) -> SearchIndex:
    """A hybrid index fused as asked (its own settings where None); fusion options are refused for any
    other kind, which has nothing to fuse."""
    if method is None and weight is None:
        return index
    if not isinstance(index, HybridIndex):
        raise ValueError(
            f"--fusion and --fusion-weight apply to hybrid indexes; {directory} is a {index.kind} index "
            "(build one with `dreamir index --hybrid`)"
        )
    return index.with_fusion(method, weight)


def search(args: SearchArguments, rerank: Reranker | None = None) -> list[dict[str, Any]]:
    """Each query with its hits: ``{"query", "hits": [{"id", "score", "title"}]}``; with ``rerank`` (built
    from ``--rerank-llm`` by the caller) the top ``--rerank-depth`` hits are reranked before the top k."""
    if args.rerank_llm and rerank is None:
        raise ValueError("--rerank-llm: no reranker was given to search with")
    _set_threads(args.threads)
    index = with_fusion(open_index(args.index), args.index, args.fusion, args.fusion_weight)
    title_of = dict(zip(index.doc_ids, read_titles(args.index, len(index.doc_ids)), strict=True))
    if rerank is None:
        hits = index.search(args.queries, args.k)
    else:
        assert args.corpus is not None
        corpus = _corpus(args.corpus)
        check_corpus(args.index, getattr(index, "manifest", None), index.doc_ids, corpus, args.corpus)
        passages = _passages(corpus)
        first_stage = index.search(args.queries, max(args.k, args.rerank_depth))
        hits = [ranked[: args.k] for ranked in rerank(args.queries, first_stage, passages)]
    return [
        {
            "query": query,
            "hits": [
                {"id": doc_id, "score": score, "title": title_of.get(doc_id, "")} for doc_id, score in ranked
            ],
        }
        for query, ranked in zip(args.queries, hits, strict=True)
    ]


def format_search_results(results: list[dict[str, Any]], as_json: bool) -> str:
    if as_json:
        return "\n".join(json.dumps(result, ensure_ascii=False) for result in results)
    lines = []
    for result in results:
        lines.append(f"query: {result['query']}")
        for rank, hit in enumerate(result["hits"], start=1):
            lines.append(f"  {rank:>3}  {hit['score']:.4f}  {hit['id']}  {hit['title']}".rstrip())
    return "\n".join(lines)


# ---- mining ----------------------------------------------------------------------------------------------
def mine_with_retriever(
    train: str | Path,
    corpus: dict[str, Document],
    model: str,
    k: int,
    batch_size: int = 64,
    show_progress: bool = True,
) -> list[TrainingExample]:
    """Every example's candidates become ``model``'s top-``k`` over the corpus (dense hard negatives;
    label-free, the gold is not forced in)."""
    examples = read_training_file(train)
    validate_against_corpus(examples, corpus, train)
    retriever = load_encoder(model)
    embeddings = encode_corpus(retriever, corpus, batch_size, show_progress)
    index = ExactIndex(list(corpus), embeddings, query_encoder(retriever, batch_size))
    return mine_candidates(examples, index, k)


# ---- evaluation ------------------------------------------------------------------------------------------
def evaluate_index(dataset: BeirDataset, index: SearchIndex, k: int = 100) -> tuple[dict[str, float], Run]:
    """Any index's metrics on ``dataset`` and the run they were computed from."""
    run = index.run(dataset.queries, k=k)
    return compute_metrics(dataset.qrels, run), run


def default_eval_dir(model: str, dataset_name: str, split: str) -> Path:
    """runs/eval/<model>-<dataset>-<split>: the model named by its last two path parts."""
    parts = [p for p in Path(model).parts if p not in ("/", ".", "..")][-2:]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts) or "model")
    return Path("runs") / "eval" / f"{slug}-{dataset_name}-{split}"


@dataclass
class EvalArguments:
    beir: str = field(metadata={"help": "BEIR-layout directory (corpus.jsonl, queries.jsonl, qrels/)"})
    model: str | None = field(
        default=None,
        metadata={
            "help": f"'bm25', a packaged name or a saved retriever (default: {MINILM}, or with --index the "
            "index's own model; another one is refused)"
        },
    )
    split: str = field(default="test", metadata={"help": "qrels split (qrels/<split>.tsv)"})
    engine: Literal["dreamir", "mteb"] = field(
        default="dreamir",
        metadata={"help": "dreamir: exact search + pytrec_eval; mteb: mteb's own retrieval evaluator"},
    )
    index: str | None = field(
        default=None, metadata={"help": "search this index (from `dreamir index` on the same corpus) instead"}
    )
    hybrid: bool = field(default=False, metadata={"help": HYBRID_HELP})
    fusion: FusionMethod | None = field(
        default=None,
        metadata={"help": FUSION_HELP + f" (default: {DEFAULT_FUSION}, or a hybrid --index's own)"},
    )
    fusion_weight: float | None = field(default=None, metadata={"help": WEIGHT_HELP})
    rerank_llm: str | None = field(default=None, metadata={"help": RERANK_HELP})
    rerank_depth: int = field(default=RERANK_DEPTH, metadata={"help": RERANK_DEPTH_HELP})
    batch_size: int = field(default=64, metadata={"help": "texts per encoding batch"})
    out: str | None = field(
        default=None, metadata={"help": "also write the metrics here as JSON (a new file or an earlier one)"}
    )
    out_dir: str | None = field(
        default=None,
        metadata={
            "help": "metrics.json, run.trec (and mteb's results); default: runs/eval/<model>-<data>-<split>"
        },
    )
    threads: int | None = field(default=2, metadata={"help": "CPU threads"})
    show_progress: bool = field(default=True, metadata={"help": "progress while encoding"})
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "replace an --out file, or write into an --out-dir, that `dreamir eval` did not write"
        },
    )

    def __post_init__(self) -> None:
        at_least(self, 1, "batch_size", "threads", "rerank_depth")
        if self.engine == "mteb" and (self.model == "bm25" or self.index or self.hybrid or self.rerank_llm):
            raise ValueError(
                "--engine mteb evaluates a dense retriever: not with bm25, --index, --hybrid or --rerank-llm"
            )
        if self.hybrid and self.index:
            raise ValueError("--hybrid builds BM25 beside the model; an --index is searched as it was built")
        _check_fusion_options(self.hybrid, self.fusion, self.fusion_weight, self.model)
        if (self.fusion or self.fusion_weight is not None) and not (self.hybrid or self.index):
            raise ValueError("--fusion and --fusion-weight apply to a hybrid evaluation: add --hybrid")


def _is_metrics_file(path: Path) -> bool:
    """A file ``dreamir eval --out`` wrote: a JSON object of the metrics, nothing else."""
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(metrics, dict) and set(metrics) == set(METRICS)


def _model_of_index(args: EvalArguments) -> tuple[str, str | None]:
    """The name and directory of the index's model, which ``--model`` (when given) must be: scoring one
    model's index in another's name would record a result that is not its."""
    assert args.index is not None
    verify_index(args.index)  # before its index.json is trusted to name the model
    built_with = index_model(args.index)
    name = read_index_info(args.index).get("model", built_with)
    same = args.model in (None, name, built_with) or (
        "bm25" not in (args.model, built_with)
        and directory_sha256(resolve_model(args.model)) == directory_sha256(resolve_model(built_with))
    )
    if not same:
        raise ArtefactError(
            args.index, f"was built with the model {name}, not --model {args.model} (leave --model out)"
        )
    return name, None if built_with == "bm25" else built_with


def run_evaluation(args: EvalArguments, rerank: Reranker | None = None) -> dict[str, Any]:
    """Evaluate and write metrics.json and run.trec together (one directory, renamed into place whole,
    with a manifest), return the summary. ``rerank`` (built from ``--rerank-llm`` by the caller) reorders
    each query's top ``--rerank-depth`` hits before they are scored."""
    if args.rerank_llm and rerank is None:
        raise ValueError("--rerank-llm: no reranker was given to evaluate with")
    if args.out:  # before the slow evaluation, not after it
        replaceable_file(
            args.out, _is_metrics_file, "a metrics file written by `dreamir eval --out`", args.overwrite
        )
    model, model_path = _model_of_index(args) if args.index else (args.model or MINILM, None)
    if model_path is None and model != "bm25":
        model_path = str(resolve_model(model).resolve())
    dataset = load_beir(args.beir, args.split)
    name = Path(args.beir).resolve().name
    slug = f"{model}-hybrid" if args.hybrid else args.index or model
    slug += "-reranked" if args.rerank_llm else ""
    out_dir = Path(args.out_dir) if args.out_dir else default_eval_dir(slug, name, args.split)
    check_output_directory(out_dir, "eval", args.overwrite)
    _set_threads(args.threads)
    with artefact_directory(out_dir, "eval", args.overwrite) as tmp:
        summary = _evaluate(args, model, model_path, dataset, name, tmp)
        run = summary.pop("run")
        if rerank is not None:
            started = time.perf_counter()
            run = reranked_run(dataset, run, rerank)
            summary["metrics"] = compute_metrics(dataset.qrels, run)
            llm_dir = resolve_model(args.rerank_llm)
            summary["rerank"] = {
                "llm": args.rerank_llm,
                "llm_path": str(llm_dir.resolve()),
                "llm_sha256": directory_sha256(llm_dir),  # which files, not only which name
                "depth": args.rerank_depth,
                "seconds": round(time.perf_counter() - started, 1),
            }
        if summary.get("mteb_result"):  # where it will be once the directory is in place
            summary["mteb_result"] = str(out_dir / Path(summary["mteb_result"]).relative_to(tmp))
        write_json_atomic(tmp / "metrics.json", summary)
        write_trec_run(run, tmp / "run.trec", tag=re.sub(r"\s+", "_", Path(model).name or "dreamir"))
        write_manifest(
            tmp,
            "eval",
            command=command_record("eval", args),
            model=model_fingerprint(model, Path(model_path) if model_path else None),
            corpus=corpus_fingerprint(dataset.corpus),
        )
    if args.out:
        write_json_atomic(args.out, summary["metrics"])
    summary["out_dir"] = str(out_dir)
    return summary


def _evaluate(
    args: EvalArguments, model: str, model_path: str | None, dataset: BeirDataset, name: str, out_dir: Path
) -> dict[str, Any]:
    """The summary metrics.json holds, with the run under "run" (mteb writes its files into ``out_dir``)."""
    started = time.perf_counter()
    extra: dict[str, Any] = {}
    if args.index:
        index = open_index(args.index, args.batch_size)
        check_corpus(
            args.index,
            getattr(index, "manifest", None),
            index.doc_ids,
            dataset.corpus,
            Path(args.beir) / "corpus.jsonl",
        )
        index = with_fusion(index, args.index, args.fusion, args.fusion_weight)
        if isinstance(index, HybridIndex):
            extra["fusion"] = _fusion_record(index)
        metrics, run = evaluate_index(dataset, index)
    elif model == "bm25":
        metrics, run = evaluate_index(dataset, BM25Index.from_corpus(dataset.corpus))
    else:
        retriever = load_encoder(model)
        encode_queries = query_encoder(retriever, args.batch_size)

        def encode_documents(texts: list[str]) -> np.ndarray:
            return retriever.encode_documents(
                texts, batch_size=args.batch_size, show_progress=args.show_progress
            )

        if args.engine == "mteb":
            from dreamir.mteb_bridge import RetrieverEncoder, evaluate_with_mteb

            encoder = RetrieverEncoder.for_retriever(model, retriever, encode_queries, encode_documents)
            evaluation = evaluate_with_mteb(encoder, dataset, name, out_dir, args.split, args.show_progress)
            metrics, run = evaluation.metrics, evaluation.run
            extra.update(mteb_task=evaluation.task, mteb_result=str(evaluation.result_file))
        else:
            embeddings = check_finite_embeddings(
                np.asarray(encode_documents([doc.full_text for doc in dataset.corpus.values()])),
                f"{model}: document embeddings",
            )
            index: SearchIndex = ExactIndex(
                list(dataset.corpus), embeddings, encode_queries, retriever.config.similarity
            )
            if args.hybrid:
                index = HybridIndex(
                    BM25Index.from_corpus(dataset.corpus),
                    index,
                    args.fusion or DEFAULT_FUSION,
                    args.fusion_weight,
                )
                extra["fusion"] = _fusion_record(index)
            metrics, run = evaluate_index(dataset, index)
    return {
        "dataset": name,
        "beir": str(Path(args.beir).resolve()),
        "split": args.split,
        "model": model,
        "model_path": model_path,
        "index": args.index,
        "engine": args.engine,
        "queries": len(dataset.queries),
        "documents": len(dataset.corpus),
        "metrics": metrics,
        "seconds": round(time.perf_counter() - started, 1),
        **extra,
        "run": run,
    }


def reranked_run(dataset: BeirDataset, run: Run, rerank: Reranker) -> Run:
    """Every query's hits in ``run`` reranked (they stay a run: {query id: {doc id: score}})."""
    query_ids = [query_id for query_id in dataset.queries if query_id in run]
    hits = [sorted(run[q].items(), key=lambda hit: -hit[1]) for q in query_ids]
    reranked = rerank([dataset.queries[q] for q in query_ids], hits, _passages(dataset.corpus))
    return {**run, **{q: dict(ranked) for q, ranked in zip(query_ids, reranked, strict=True)}}


def _fusion_record(index: HybridIndex) -> dict[str, Any]:
    return {"method": index.method, "weight": index.weight, "rrf_k": index.rrf_k, "depth": index.depth}


def format_evaluation(summary: dict[str, Any]) -> str:
    metrics = ", ".join(f"{name} {value:.4f}" for name, value in summary["metrics"].items())
    searched = f" (index {summary['index']})" if summary.get("index") else ""
    if summary.get("fusion"):
        fusion = summary["fusion"]
        how = f"{fusion['method']}, dense weight {fusion['weight']}"
        searched += f" fused with bm25 ({how})"
    if summary.get("rerank"):
        rerank = summary["rerank"]
        searched += f", top {rerank['depth']} reranked by {rerank['llm']} ({rerank['seconds']} s)"
    return (
        f"{summary['dataset']} {summary['split']} ({summary['queries']} queries, {summary['documents']} documents), "
        f"model {summary['model']}{searched}, {summary['engine']} engine: {metrics}\n"
        f"metrics: {summary['out_dir']}/metrics.json; run: {summary['out_dir']}/run.trec"
    )
