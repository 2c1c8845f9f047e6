"""`dreamir` command line: thin entry points over the dataclass arguments of each step."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import traceback
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal

from dreamir.data.errors import DataFormatError
from dreamir.progress import configure_progress
from dreamir.trainer import TrainingArguments


def _add_dataclass(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__)
    for spec in dataclasses.fields(cls):
        if spec.name in skip:
            continue
        kind = hints[spec.name]
        options: dict[str, Any] = {"help": spec.metadata.get("help", "")}
        flag = "--" + spec.name.replace("_", "-")
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        required = spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=spec.default, **options)
            continue
        if typing.get_origin(kind) is Literal:
            options["choices"] = list(typing.get_args(kind))
            kind = type(options["choices"][0])
        if required:
            options["required"] = True
        else:
            options["default"] = spec.default
            options["help"] += f" (default: {spec.default})"
        group.add_argument(flag, type=kind, **options)


PROGRESS_HELP = "progress bars on a terminal, plain lines in a log; --no-show-progress: none"


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _build(cls: type, namespace: argparse.Namespace, **fixed: Any):
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(namespace).items() if k in names}
    return cls(**{**values, **fixed})


def main(argv: Sequence[str] | None = None) -> int:
    from dreamir import indexing, workflow
    from dreamir.adapt import AdaptArguments
    from dreamir.export import ExportArguments
    from dreamir.head_attention import HeadAttentionArguments
    from dreamir.quickstart import QuickstartArguments

    parser = argparse.ArgumentParser(prog="dreamir", description=__doc__)
    parser.add_argument("--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    factbook = commands.add_parser(
        "factbook", help="build the Factbook retrieval task (BEIR layout + train files)"
    )
    factbook.add_argument(
        "--out", required=True, help="directory to write the BEIR files and training files to"
    )
    factbook.add_argument("--seed", type=int, default=0, help="seed of the train/eval split (default: 0)")

    mine = commands.add_parser(
        "mine", help="add top-K candidate_ids (BM25, or a retriever's) to a training file (label-free)"
    )
    mine.add_argument("--train", required=True, help="training-format JSONL to add candidates to")
    mine.add_argument("--corpus", required=True, help="BEIR directory or corpus.jsonl")
    mine.add_argument("--out", required=True, help="training-format JSONL to write")
    mine.add_argument("--k", type=_at_least_one, default=8, help="candidates per example (default: 8)")
    mine.add_argument(
        "--retriever",
        default=None,
        help="mine with this retriever's top-K (dense hard negatives; replaces every example's candidates) "
        "instead of BM25 for the examples that have none",
    )
    mine.add_argument(
        "--show-progress", action=argparse.BooleanOptionalAction, default=True, help=PROGRESS_HELP
    )

    heads = commands.add_parser("heads", help="select query-focused heads; writes a head file")
    _add_dataclass(heads, workflow.HeadSelectionArguments)

    train = commands.add_parser("train", help="train a retriever with DREAM")
    _add_dataclass(train, workflow.ModelArguments)
    _add_dataclass(train, workflow.DreamArguments)
    _add_dataclass(train, TrainingArguments)

    evaluate = commands.add_parser(
        "eval", help="nDCG@10, Recall@100, MRR@10 on a BEIR-layout directory; writes metrics and a TREC run"
    )
    _add_dataclass(evaluate, indexing.EvalArguments)

    index = commands.add_parser(
        "index", help="encode a corpus once and save a search index (FAISS by default)"
    )
    index.add_argument("model", metavar="MODEL", help="'bm25', a packaged retriever or a saved retriever")
    index.add_argument("corpus", metavar="CORPUS_DIR", help="BEIR directory (corpus.jsonl) or corpus.jsonl")
    _add_dataclass(index, indexing.IndexArguments, skip=("model", "corpus"))

    search = commands.add_parser("search", help="search an index: top-k ids, scores and titles per query")
    search.add_argument("index", metavar="INDEX_DIR", help="index directory written by `dreamir index`")
    search.add_argument("queries", metavar="QUERY", nargs="+", help="query texts")
    search.add_argument("-k", "--k", type=_at_least_one, default=10, help="hits per query (default: 10)")
    _add_dataclass(search, indexing.SearchArguments, skip=("index", "queries", "k"))

    export = commands.add_parser(
        "export", help="write a sentence-transformers directory (LoRA merged) with a model card"
    )
    export.add_argument("model", metavar="MODEL", help="saved retriever, LoRA adapter or packaged name")
    _add_dataclass(export, ExportArguments, skip=("model",))

    attention = commands.add_parser(
        "head-attention", help="plot the attention share each injected head gives the candidates"
    )
    _add_dataclass(attention, HeadAttentionArguments)

    adapt = commands.add_parser(
        "adapt", help="adapt a retriever to a corpus with no queries and no labels (reads corpus.jsonl only)"
    )
    adapt.add_argument("corpus", metavar="CORPUS_DIR", help="BEIR-layout directory holding corpus.jsonl")
    _add_dataclass(adapt, AdaptArguments, skip=("corpus",))
    check = commands.add_parser("validate", help="check data and head files; report every problem found")
    check.add_argument("paths", nargs="+", help="BEIR directories, JSONL/TSV data files, head files")
    for quiet in (factbook, check):  # accepted everywhere, so scripts can pass it to any command
        quiet.add_argument(
            "--show-progress", action=argparse.BooleanOptionalAction, default=True, help=PROGRESS_HELP
        )

    quick = commands.add_parser("quickstart", help="the whole pipeline on packaged models and data")
    _add_dataclass(quick, QuickstartArguments)

    args = parser.parse_args(argv)
    configure_progress(getattr(args, "show_progress", True))
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    logging.getLogger("bm25s").setLevel(
        logging.INFO if args.verbose else logging.WARNING
    )  # bm25s defaults to DEBUG
    try:
        return _run(args)
    except (DataFormatError, OSError, ValueError) as error:
        if args.verbose:
            traceback.print_exc()
        print(f"dreamir {args.command}: error: {_describe(error)}", file=sys.stderr)
        return 2


def _describe(error: Exception) -> str:
    """An OSError as ``path: reason`` (``[Errno 20] Not a directory: 'x'`` says less); others as they are."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror.lower()}"
    return str(error)


def _run(args: argparse.Namespace) -> int:
    from dreamir import indexing, workflow
    from dreamir.quickstart import QuickstartArguments, run_quickstart

    if args.command == "factbook":
        from dreamir.data.factbook import build_factbook

        paths = build_factbook(args.out, seed=args.seed)
        print(
            f"{paths.num_passages} passages, {paths.num_train} train, {paths.num_eval} eval questions -> {args.out}"
        )
    elif args.command == "mine":
        from dreamir.data.training import with_candidates, write_training_file
        from dreamir.io import check_output_file

        check_output_file(args.out)
        corpus = workflow.load_corpus(args.corpus)
        if args.retriever:
            from dreamir.indexing import mine_with_retriever

            examples = mine_with_retriever(
                args.train, corpus, args.retriever, args.k, show_progress=args.show_progress
            )
        else:
            examples = workflow.prepare_training_examples(args.train, corpus, args.k, None)
        longer = sum(len(e.candidate_ids or []) > args.k for e in examples)
        if longer:
            examples = [with_candidates(e, (e.candidate_ids or [])[: args.k]) for e in examples]
            print(
                f"{longer} examples had more than {args.k} candidates: kept their first {args.k}",
                file=sys.stderr,
            )
        write_training_file(args.out, examples)
        print(f"{len(examples)} examples with candidates -> {args.out}")
    elif args.command == "heads":
        head_set = workflow.select_heads(_build(workflow.HeadSelectionArguments, args))
        top = head_set.top(args.top_k)
        print(f"top {len(top)} heads (layer, head): {top} -> {args.out}")
    elif args.command == "train":
        result = workflow.train_dream(
            _build(workflow.ModelArguments, args),
            _build(workflow.DreamArguments, args),
            _build(TrainingArguments, args),
        )
        print(f"trained {result.steps} steps (resumed from {result.resumed_from}) -> {result.final_dir}")
    elif args.command == "eval":
        summary = indexing.run_evaluation(_build(indexing.EvalArguments, args))
        print(indexing.format_evaluation(summary))
    elif args.command == "index":
        _, info = indexing.build_index(_build(indexing.IndexArguments, args))
        print(f"{info['kind']} index of {info['documents']} documents ({info['model']}) -> {args.out}")
    elif args.command == "search":
        results = indexing.search(_build(indexing.SearchArguments, args))
        print(indexing.format_search_results(results, args.json))
    elif args.command == "export":
        from dreamir.export import ExportArguments, export_model

        print(f"exported -> {export_model(_build(ExportArguments, args))}")
    elif args.command == "head-attention":
        from dreamir.head_attention import HeadAttentionArguments, plot_head_attention_from_files

        print(f"head attention -> {plot_head_attention_from_files(_build(HeadAttentionArguments, args))}")
    elif args.command == "adapt":
        from dreamir.adapt import AdaptArguments, adapt

        adapt(_build(AdaptArguments, args))
    elif args.command == "validate":
        from dreamir.validate import run_validate

        return run_validate(args.paths)
    elif args.command == "quickstart":
        run_quickstart(_build(QuickstartArguments, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
