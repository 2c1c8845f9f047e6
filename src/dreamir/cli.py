"""dreamir trains dense retrievers with DREAM (a frozen LLM's next-token loss decides which passages help answer a query), adapts one to a corpus of your own without labels, and indexes, searches, evaluates and exports the result; `dreamir COMMAND --help` lists each command's options.

For developers: thin entry points over the dataclass arguments of each step.

Each command is one entry of ``COMMANDS``: its name, help, the dataclasses its options come from (one
option per field, its ``help`` the field's) and the function that runs it with those dataclasses built.
Every command also reads ``--config FILE.json``: its keys are option names (``batch_size`` or
``batch-size``), the command line wins over the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import sys
import traceback
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser

from dreamir.data.errors import DataFormatError, read_json_file, type_problem
from dreamir.progress import configure_progress


# ---- what each command does, given its dataclasses ---------------------------------------------------------
def run_factbook(args) -> None:
    from dreamir.datasets.factbook import build_factbook

    paths = build_factbook(args.out, seed=args.seed)
    print(
        f"{paths.num_passages} passages, {paths.num_train} train, {paths.num_eval} eval questions -> {args.out}"
    )


def run_mine(args) -> None:
    from dreamir import workflow
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
            f"{longer} examples had more than {args.k} candidates: kept their first {args.k}", file=sys.stderr
        )
    write_training_file(args.out, examples)
    print(f"{len(examples)} examples with candidates -> {args.out}")


def run_heads(args) -> None:
    from dreamir import workflow

    head_set = workflow.select_heads(args)
    top = head_set.top(args.top_k)
    print(f"top {len(top)} heads (layer, head): {top} -> {args.out}")


def run_train(model, data, sampling, objective, llm, runtime, training, *options) -> None:
    from dreamir import distributed, workflow

    result = workflow.train_retriever(
        model, data, objective, training, sampling=sampling, llm=llm, options=options, runtime=runtime
    )
    if distributed.current().is_main:
        print(f"trained {result.steps} steps (resumed from {result.resumed_from}) -> {result.final_dir}")


def _reranker(args) -> Callable | None:
    """``--rerank-llm``'s reranker as the callable search and eval take (None without the option); the LLM
    is loaded at the first call, so a refused index, corpus or output is reported before that wait."""
    if not args.rerank_llm:
        return None

    def rerank(queries, hits, passages):
        from dreamir.reranking import QueryLikelihoodReranker

        reranker = QueryLikelihoodReranker.from_pretrained(args.rerank_llm, depth=args.rerank_depth)
        return reranker.rerank_all(queries, hits, passages, args.show_progress)

    return rerank


def run_eval(args) -> None:
    from dreamir import indexing

    print(indexing.format_evaluation(indexing.run_evaluation(args, _reranker(args))))


def run_index(args) -> None:
    from dreamir import indexing

    _, info = indexing.build_index(args)
    print(f"{info['kind']} index of {info['documents']} documents ({info['model']}) -> {args.out}")


def run_search(args) -> None:
    from dreamir import indexing

    print(indexing.format_search_results(indexing.search(args, _reranker(args)), args.json))


def run_export(args) -> None:
    from dreamir.export import export_model

    print(f"exported -> {export_model(args)}")


def run_head_attention(args) -> None:
    from dreamir.head_attention import plot_head_attention_from_files

    print(f"head attention -> {plot_head_attention_from_files(args)}")


def run_adapt(args) -> None:
    from dreamir.adapt import adapt

    adapt(args)


def run_validate(args) -> int:
    from dreamir.validate import run_validate

    return run_validate(args.paths)


def run_quickstart(args) -> None:
    from dreamir.quickstart import run_quickstart

    run_quickstart(args)


# ---- the commands ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    name: str
    help: str
    arguments: Callable[[], Sequence[type]]  # called when the command runs: imports only what it needs
    run: Callable[..., int | None]
    # Fields also given as the leading words (``dreamir adapt DIR``): one word each, the last takes the rest.
    positional: tuple[str, ...] = ()


def _train_arguments() -> list[type]:
    from dreamir import arguments as a
    from dreamir.objectives import options_classes

    return [
        a.ModelArguments,
        a.DataArguments,
        a.SamplingArguments,
        a.ObjectiveArguments,
        a.LLMArguments,
        a.RuntimeArguments,
        a.TrainingArguments,
        *options_classes(),
    ]


def _arguments(name: str) -> Callable[[], list[type]]:
    def classes() -> list[type]:
        from dreamir import arguments

        return [getattr(arguments, name)]

    return classes


def _indexing_arguments(name: str) -> Callable[[], list[type]]:
    def classes() -> list[type]:
        from dreamir import indexing

        return [getattr(indexing, name)]

    return classes


def _export_arguments() -> list[type]:
    from dreamir.export import ExportArguments

    return [ExportArguments]


def _head_attention_arguments() -> list[type]:
    from dreamir.head_attention import HeadAttentionArguments

    return [HeadAttentionArguments]


def _adapt_arguments() -> list[type]:
    from dreamir.adapt import AdaptArguments

    return [AdaptArguments]


def _quickstart_arguments() -> list[type]:
    from dreamir.quickstart import QuickstartArguments

    return [QuickstartArguments]


COMMANDS = [
    Command(
        "factbook",
        "build the CIA World Factbook retrieval task from the packaged data, a ready-made example: writes a BEIR\n"
        "directory (corpus.jsonl, queries.jsonl, qrels/test.tsv) and train.jsonl and calibration.jsonl\n"
        "(questions with their answer and gold passage) to --out",
        _arguments("FactbookArguments"),
        run_factbook,
    ),
    Command(
        "mine",
        "give every example of a training file its K candidate passages: BM25's top K (no label used), or\n"
        "with --retriever a dense model's own top K (hard negatives); writes a new training file to --out",
        _arguments("MineArguments"),
        run_mine,
    ),
    Command(
        "heads",
        "choose the frozen LLM's query-focused attention heads, the ones DREAM writes the retriever's scores\n"
        "into, by scoring every head on a few labelled calibration examples; writes a head file (JSON) to\n"
        "--out for `dreamir train --heads`",
        _arguments("HeadSelectionArguments"),
        run_heads,
    ),
    Command(
        "train",
        "train a retriever on your own examples (query, target, candidates) with DREAM or a baseline\n"
        "objective (infonce, replug, autoregembed-ic, autoregembed-cda); writes checkpoints, log.jsonl and\n"
        "the final model (a sentence-transformers directory) under --output-dir; re-run to resume",
        _train_arguments,
        run_train,
    ),
    Command(
        "eval",
        "score a retriever (or bm25, or with --hybrid both fused) on a BEIR directory's queries and qrels:\n"
        "nDCG@10, Recall@100, MRR@10; prints them and writes metrics.json and run.trec (top 100 per\n"
        "query) to --out-dir",
        _indexing_arguments("EvalArguments"),
        run_eval,
    ),
    Command(
        "index",
        "encode a corpus once and save it as a search index for `dreamir search`: FAISS flat (exact) by\n"
        "default, HNSW, exact numpy, or BM25 (--hybrid: BM25 beside the dense index, rankings fused);\n"
        "writes index.json, doc_ids.json, titles.json and the vectors to --out",
        _indexing_arguments("IndexArguments"),
        run_index,
        positional=("model", "corpus"),
    ),
    Command(
        "search",
        "search an index made by `dreamir index` with query texts: prints rank, score, id and title of the\n"
        "top k per query (--json: one JSON object per query); writes nothing",
        _indexing_arguments("SearchArguments"),
        run_search,
        positional=("index", "queries"),
    ),
    Command(
        "export",
        "package a trained retriever (or a LoRA adapter directory) for use without dreamir: writes a\n"
        "sentence-transformers directory, LoRA merged, with a model card README.md, to --out",
        _export_arguments,
        run_export,
        positional=("model",),
    ),
    Command(
        "head-attention",
        "picture what training did to the frozen LLM's reading: the share of the candidates' attention\n"
        "each injected head gives the gold passage, under the LLM alone and with the starting and the\n"
        "trained retriever; writes a PNG to --out and its numbers beside it as JSON",
        _head_attention_arguments,
        run_head_attention,
    ),
    Command(
        "adapt",
        "make a retriever better on your own corpus with no queries and no labels: reads only\n"
        "CORPUS/corpus.jsonl, has the frozen LLM write training queries, trains LoRA adapters with DREAM for\n"
        "a fixed schedule and keeps its last checkpoint (unless a label-free validation ended below its\n"
        "start: then its best);\n"
        "writes OUT/model (sentence-transformers), report.md, report.json and curves.png; re-run to resume",
        _adapt_arguments,
        run_adapt,
        positional=("corpus",),
    ),
    Command(
        "validate",
        "check BEIR directories, corpus/query/training JSONL, qrels TSV and head files before a long run:\n"
        "lists every problem as file:line and exits 1 if there is any; writes nothing",
        _arguments("ValidateArguments"),
        run_validate,
        positional=("paths",),
    ),
    Command(
        "quickstart",
        "the main job on packaged models and data: `dreamir adapt` on SciFact's corpus (no SciFact query\n"
        "or label used), then BM25, the starting and the adapted retriever scored on SciFact's test\n"
        "queries; prints the table and writes results.json and adapt/ under --out; re-run to resume",
        _quickstart_arguments,
        run_quickstart,
    ),
]


# ---- parsing -----------------------------------------------------------------------------------------------
class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions as written, defaults after every option's help."""


class ArgumentParser(HfArgumentParser):
    """HfArgumentParser with defaults shown in the help and ``--no-x`` for every boolean option (Hugging
    Face adds it only where the default is True)."""

    def __init__(self, dataclass_types: Sequence[type], **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(dataclass_types, **kwargs)

    def _parse_dataclass_field(self, parser, field) -> None:
        super()._parse_dataclass_field(parser, field)
        if field.type not in (bool, bool | None) or field.default is True:
            return
        if field.default is None:  # "unset": the flag alone still means True, as for the other booleans
            flag = next(a for a in parser._actions if a.dest == field.name)
            flag.nargs, flag.const = "?", True
        negative = f"--no-{field.name.replace('_', '-')}"
        parser.add_argument(
            f"--no_{field.name}", negative, action="store_false", dest=field.name, help="turn it off"
        )


def command_parser(command: Command) -> ArgumentParser:
    parser = ArgumentParser(command.arguments(), prog=f"dreamir {command.name}", description=command.help)
    parser.add_argument("--config", metavar="FILE.json", help="read options from a JSON object (flags win)")
    return parser


def _with_positionals(command: Command, argv: list[str]) -> list[str]:
    """``dreamir search DIR "q1" "q2" -k 3`` -> ``--index DIR --queries q1 q2 -k 3``: the leading words fill
    the positional fields in order, one word each, the last field taking the rest."""
    leading = 0
    while leading < len(argv) and not argv[leading].startswith("-"):
        leading += 1
    if not command.positional or leading == 0:
        return argv
    words, result = argv[:leading], []
    for position, name in enumerate(command.positional):
        last = position == len(command.positional) - 1
        taken = words if last else words[:1]
        words = [] if last else words[1:]
        if taken:
            result += [f"--{name}", *taken]
    return [*result, *argv[leading:]]


def _apply_config(parser: ArgumentParser, argv: list[str]) -> None:
    """Set the parser's defaults from ``--config FILE`` (options the file names are no longer required).

    The file's values are not parsed as the command line's are, so each is checked against its option's
    type here: a float for an integer option is an error naming the file and the option, and a string for a
    list option (``"queries": "white matter"``) is one item, not a list of its letters."""
    prefix = argparse.ArgumentParser(add_help=False)
    prefix.add_argument("--config")
    known, _ = prefix.parse_known_args(argv)
    if known.config is None:
        return
    path = Path(known.config)
    values = read_json_file(path)
    # A boolean has two actions (--x and --no-x) for one value: both get the file's value.
    actions: dict[str, list[argparse.Action]] = {}
    for action in parser._actions:
        if action.dest not in ("help", "config"):
            actions.setdefault(action.dest, []).append(action)
    types = {
        f.name: typing.get_type_hints(cls)[f.name]
        for cls in parser.dataclass_types
        for f in dataclasses.fields(cls)
    }
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in actions:
            raise DataFormatError(
                path, None, key, f"unknown option (see dreamir {parser.prog.split()[-1]} --help)"
            )
        if isinstance(value, str) and typing.get_origin(types.get(name)) is list:
            value = [value]
        problem = type_problem(value, types[name]) if name in types else None
        if problem:
            raise DataFormatError(path, None, key, problem)
        for action in actions[name]:
            action.required = False
            action.default = value


def _unknown_arguments(parser: argparse.ArgumentParser, unknown: list[str]) -> str:
    """``unknown option --bach-size (did you mean --batch-size?)``, the way the command spells its options."""
    options = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
    word = unknown[0]
    if not word.startswith("-"):
        return f"unexpected argument {word!r} (see {parser.prog} --help)"
    close = difflib.get_close_matches(word.split("=")[0], options, n=1)
    hint = f" (did you mean {close[0]}?)" if close else f" (see {parser.prog} --help)"
    return f"unknown option {word}{hint}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(prog="dreamir", description=__doc__.split("\n")[0])
    top.add_argument("--verbose", action="store_true", help="log progress and print tracebacks of errors")
    commands = top.add_subparsers(dest="command", required=True)
    by_name = {c.name: c for c in COMMANDS}
    for command in COMMANDS:
        commands.add_parser(command.name, help=command.help, add_help=False)
    known, rest = top.parse_known_args(argv)
    logging.basicConfig(
        level=logging.INFO if known.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    logging.getLogger("bm25s").setLevel(logging.INFO if known.verbose else logging.WARNING)  # bm25s: DEBUG
    command = by_name[known.command]
    try:
        parser = command_parser(command)
        rest = _with_positionals(command, rest)
        _apply_config(parser, rest)
        *built, _options_file, unknown = parser.parse_args_into_dataclasses(
            rest, look_for_args_file=False, return_remaining_strings=True
        )
        if unknown:
            raise ValueError(_unknown_arguments(parser, unknown))
        configure_progress(all(getattr(b, "show_progress", True) for b in built))
        code = command.run(*built)
        return int(code or 0)
    except (DataFormatError, OSError, ValueError) as error:
        if known.verbose:
            traceback.print_exc()
        print(f"dreamir {command.name}: error: {_describe(error)}", file=sys.stderr)
        return 2


def _describe(error: Exception) -> str:
    """An OSError as ``path: reason`` (``[Errno 20] Not a directory: 'x'`` says less); others as they are."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror.lower()}"
    return str(error)


if __name__ == "__main__":
    sys.exit(main())
