"""`dreamir` command line: thin entry points over the dataclass arguments of each step.

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


def run_eval(args) -> None:
    from dreamir import indexing

    print(indexing.format_evaluation(indexing.run_evaluation(args)))


def run_index(args) -> None:
    from dreamir import indexing

    _, info = indexing.build_index(args)
    print(f"{info['kind']} index of {info['documents']} documents ({info['model']}) -> {args.out}")


def run_search(args) -> None:
    from dreamir import indexing

    print(indexing.format_search_results(indexing.search(args), args.json))


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
        "build the Factbook retrieval task (BEIR layout + train files)",
        _arguments("FactbookArguments"),
        run_factbook,
    ),
    Command(
        "mine",
        "add BM25 top-K candidate_ids to a training file (label-free)",
        _arguments("MineArguments"),
        run_mine,
    ),
    Command(
        "heads",
        "select query-focused heads; writes a head file",
        _arguments("HeadSelectionArguments"),
        run_heads,
    ),
    Command("train", "train a retriever (DREAM or a baseline objective)", _train_arguments, run_train),
    Command(
        "eval",
        "nDCG@10, Recall@100, MRR@10 on a BEIR-layout directory; writes the metrics and a TREC run file",
        _indexing_arguments("EvalArguments"),
        run_eval,
    ),
    Command(
        "index",
        "encode a corpus once and save a search index (FAISS flat by default, HNSW, or BM25)",
        _indexing_arguments("IndexArguments"),
        run_index,
        positional=("model", "corpus"),
    ),
    Command(
        "search",
        "search an index: top-k ids, scores and titles per query",
        _indexing_arguments("SearchArguments"),
        run_search,
        positional=("index", "queries"),
    ),
    Command(
        "export",
        "write a sentence-transformers directory (LoRA merged) with a model card",
        _export_arguments,
        run_export,
        positional=("model",),
    ),
    Command(
        "head-attention",
        "plot the attention share each injected head gives the candidates, before and after training",
        _head_attention_arguments,
        run_head_attention,
    ),
    Command(
        "adapt",
        "adapt a retriever to a corpus with no queries and no labels (reads corpus.jsonl only)",
        _adapt_arguments,
        run_adapt,
        positional=("corpus",),
    ),
    Command(
        "validate",
        "check data and head files; report every problem found",
        _arguments("ValidateArguments"),
        run_validate,
        positional=("paths",),
    ),
    Command(
        "quickstart", "the whole pipeline on packaged models and data", _quickstart_arguments, run_quickstart
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
