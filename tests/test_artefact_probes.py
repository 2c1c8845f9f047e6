"""The probe families of issue 31, re-run: a hostile but realistic user's outputs, damaged artefacts,
mismatched models and corpora, mistyped configs and odd inputs. Every probe must end in a correct result
or in one line on stderr naming the file and the cause (exit 2): 0 silent wrong results, 0 user files
replaced or deleted, 0 tracebacks (an exception escaping ``main`` fails the probe)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from dreamir.artefacts import MANIFEST_FILE
from dreamir.cli import main
from tests.tiny_beir import make_tiny_beir


@dataclass(frozen=True)
class Context:
    beir: Path
    other_beir: Path  # the same document ids, other texts
    model: str
    indexes: dict[str, Path]
    export: Path


@pytest.fixture(scope="module")
def context(tmp_path_factory, tiny_bert_dir) -> Context:
    root = tmp_path_factory.mktemp("probes")
    beir = make_tiny_beir(root / "tinyfact")
    indexes = {}
    for kind in ("flat", "hnsw", "exact", "bm25"):
        model = ["bm25"] if kind == "bm25" else [tiny_bert_dir, "--faiss", kind]
        assert (
            main(["index", *model, "--corpus", str(beir), "--out", str(root / kind), "--no-show-progress"])
            == 0
        )
        indexes[kind] = root / kind
    assert (
        main(["export", tiny_bert_dir, "--out", str(root / "export"), "--eval-dir", str(root / "none")]) == 0
    )
    return Context(beir, make_tiny_beir(root / "other", seed=1), tiny_bert_dir, indexes, root / "export")


@dataclass(frozen=True)
class Probe:
    family: str
    name: str
    # Prepares the probe's files under the work directory and returns the command line.
    prepare: Callable[[Path, Context], list[str]]
    expect_exit: int = 2
    # What the one error line must name (a file name), beside the cause.
    names: str | None = None
    check: Callable[[Path, str], None] | None = None  # more checks on a success

    @property
    def id(self) -> str:
        return f"{self.family}:{self.name}"


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def _copy_index(work: Path, context: Context, kind: str, manifest: bool = True) -> Path:
    target = shutil.copytree(context.indexes[kind], work / "index")
    if not manifest:
        (target / MANIFEST_FILE).unlink()
    return target


# ---- outputs never replace what is not theirs -------------------------------------------------------------
def _user_target(work: Path, context: Context, target: str) -> Path:
    if target == "users_file":
        (work / "user.txt").write_text("years of work")
        return work / "user.txt"
    if target == "users_dir":
        (work / "userdir" / "sub").mkdir(parents=True)
        (work / "userdir" / "NOTES.md").write_text("notes")
        (work / "userdir" / "sub" / "data.bin").write_bytes(bytes(range(256)))
        (work / "userdir" / "run.trec").write_text("my own run\n")
        (work / "userdir" / "metrics.json").write_text('{"mine": 1}')
        return work / "userdir"
    if target == "dataset_file":
        return shutil.copytree(context.beir, work / "data") / "queries.jsonl"
    if target == "under_a_file":
        (work / "user.txt").write_text("years of work")
        return work / "user.txt" / "out"
    # another kind of artefact: an evaluation directory where an index or export should go
    assert main(["eval", "--beir", str(context.beir), "--model", "bm25", "--out-dir", str(work / "ev")]) == 0
    return work / "ev"


def _output_argv(command: str, out: Path, context: Context) -> list[str]:
    quiet = ["--no-show-progress"]
    return {
        "index-bm25": ["index", "bm25", "--corpus", str(context.beir), "--out", str(out), *quiet],
        "index-dense": ["index", context.model, "--corpus", str(context.beir), "--out", str(out), *quiet],
        "export": [
            "export",
            context.model,
            "--out",
            str(out),
            "--eval-dir",
            str(out.parent / "none"),
            *quiet,
        ],
        "eval-out-dir": [
            "eval",
            "--beir",
            str(context.beir),
            "--model",
            "bm25",
            "--out-dir",
            str(out),
            *quiet,
        ],
        "eval-out": ["eval", "--beir", str(context.beir), "--model", "bm25", "--out", str(out), *quiet],
    }[command]


def _output_probe(command: str, target: str) -> Probe:
    def prepare(work: Path, context: Context) -> list[str]:
        return _output_argv(command, _user_target(work, context, target), context)

    return Probe("output", f"{command}->{target}", prepare)


OUTPUT_PROBES = [
    _output_probe(command, target)
    for command in ("index-bm25", "index-dense", "export", "eval-out-dir", "eval-out")
    for target in ("users_file", "users_dir", "dataset_file", "under_a_file", "other_artefact")
    if not (command.startswith("eval") and target == "other_artefact")
]


def _replace_own_probe(command: str) -> Probe:
    """Re-running over the command's own earlier artefact replaces it and keeps what the user added."""

    def prepare(work: Path, context: Context) -> list[str]:
        argv = _output_argv(command, work / "own", context)
        assert main(argv) == 0
        (work / "own" / "NOTES.md").write_text("mine")
        return argv

    def check(work: Path, _: str) -> None:
        assert (work / "own" / "NOTES.md").read_text() == "mine"

    return Probe("output", f"{command}->own_earlier_artefact", prepare, expect_exit=0, check=check)


OUTPUT_PROBES += [_replace_own_probe(c) for c in ("index-bm25", "index-dense", "export", "eval-out-dir")]


# ---- damaged artefacts ------------------------------------------------------------------------------------
INDEX_FILES = {
    "flat": ["faiss.index", "doc_ids.json", "titles.json", "index.json"],
    "hnsw": ["faiss.index", "doc_ids.json", "titles.json", "index.json"],
    "exact": ["embeddings.npy", "doc_ids.json", "titles.json", "index.json"],
    "bm25": [
        "doc_ids.json",
        "titles.json",
        "index.json",
        "bm25s/data.csc.index.npy",
        "bm25s/indices.csc.index.npy",
        "bm25s/indptr.csc.index.npy",
        "bm25s/params.index.json",
        "bm25s/vocab.index.json",
    ],
}
DAMAGES: dict[str, Callable[[Path], None]] = {
    "flip": lambda p: p.write_bytes(bytes([p.read_bytes()[0] ^ 0x01]) + p.read_bytes()[1:]),
    "flip-last": lambda p: p.write_bytes(p.read_bytes()[:-1] + bytes([p.read_bytes()[-1] ^ 0x80])),
    "truncate": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "empty": lambda p: p.write_bytes(b""),
    "garbage": lambda p: p.write_bytes(b"\x93NUMPY garbage {not json \xff\x00"),
    "delete": lambda p: p.unlink(),
}


def _damage_probe(kind: str, file: str, damage: str, manifest: bool) -> Probe:
    def prepare(work: Path, context: Context) -> list[str]:
        directory = _copy_index(work, context, kind, manifest)
        DAMAGES[damage](directory / file)
        return ["search", str(directory), "capital city", "--no-show-progress"]

    # Without a manifest only what the loaders can see is caught (not a flipped bit inside a number), so
    # those probes damage the structure; with one, the message is the checksum's.
    names = (
        f"{Path(file).name}: does not match its checksum"
        if manifest and damage != "delete"
        else Path(file).name
    )
    return Probe(f"damage{'' if manifest else '-legacy'}", f"{kind}/{file}/{damage}", prepare, names=names)


DAMAGE_PROBES = [
    _damage_probe(kind, file, damage, manifest=True)
    for kind, files in INDEX_FILES.items()
    for file in files
    for damage in DAMAGES
] + [
    _damage_probe(kind, file, damage, manifest=False)
    for kind, files in INDEX_FILES.items()
    for file in files
    for damage in ("truncate", "empty", "garbage", "delete")
    if not (file == "titles.json" and damage == "delete")  # an index without titles is a valid index
]


def _edit_json(path: Path, change: Callable[[object], object]) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _legacy_edit(kind: str, file: str, change: Callable[[object], object], name: str, names: str) -> Probe:
    def prepare(work: Path, context: Context) -> list[str]:
        directory = _copy_index(work, context, kind, manifest=False)
        _edit_json(directory / file, change)
        return ["search", str(directory), "capital", "--no-show-progress"]

    return Probe("damage-legacy", f"{kind}/{name}", prepare, names=names)


def _nan_vector(work: Path, context: Context) -> list[str]:
    import numpy as np

    directory = _copy_index(work, context, "exact", manifest=False)
    vectors = np.load(directory / "embeddings.npy")
    vectors[5] = np.nan
    np.save(directory / "embeddings.npy", vectors)
    return ["search", str(directory), "capital", "--no-show-progress"]


DAMAGE_PROBES += [
    _legacy_edit("flat", "doc_ids.json", lambda ids: [ids[1], *ids[1:]], "duplicate-id", "doc_ids.json"),
    _legacy_edit("bm25", "doc_ids.json", lambda ids: [ids[1], *ids[1:]], "duplicate-id", "doc_ids.json"),
    _legacy_edit("bm25", "titles.json", lambda titles: titles[:-3], "short-titles", "titles.json"),
    _legacy_edit("flat", "index.json", lambda info: {**info, "faiss": "hnsw"}, "hnsw-on-flat", "index.json"),
    _legacy_edit("hnsw", "index.json", lambda info: {**info, "faiss": "flat"}, "flat-on-hnsw", "index.json"),
    _legacy_edit(
        "flat", "index.json", lambda info: {**info, "dimension": "32"}, "dimension-string", "index.json"
    ),
    _legacy_edit("bm25", "index.json", lambda info: {**info, "k1": "1.5"}, "k1-string", "index.json"),
    _legacy_edit(
        "bm25", "bm25s/params.index.json", lambda p: {**p, "b": [0.75]}, "b-list", "params.index.json"
    ),
    _legacy_edit(
        "bm25", "bm25s/params.index.json", lambda p: {**p, "num_docs": 3}, "num-docs", "params.index.json"
    ),
    _legacy_edit("bm25", "index.json", lambda info: [info], "not-an-object", "index.json"),
    Probe("damage-legacy", "exact/nan-vector", _nan_vector, names="embeddings.npy"),
]


def _export_damage(damage: str, manifest: bool) -> Probe:
    def prepare(work: Path, context: Context) -> list[str]:
        export = shutil.copytree(context.export, work / "export")
        if not manifest:
            (export / MANIFEST_FILE).unlink()
        weights = export / "model.safetensors"
        data = bytearray(weights.read_bytes())
        if damage == "sign-bits":
            for position in range(len(data) - 64, len(data), 4):
                data[position + 3] ^= 0x80
        elif damage == "truncate":
            data = data[:4000]
        else:
            data = bytearray(b"garbage")
        weights.write_bytes(bytes(data))
        return [
            "index",
            str(export),
            "--corpus",
            str(context.beir),
            "--out",
            str(work / "i"),
            "--no-show-progress",
        ]

    return Probe(
        "damage-export", f"{damage}{'' if manifest else '-legacy'}", prepare, names="model.safetensors"
    )


DAMAGE_PROBES += [
    _export_damage("sign-bits", True),
    _export_damage("truncate", True),
    _export_damage("garbage", True),
]
DAMAGE_PROBES += [_export_damage("truncate", False), _export_damage("garbage", False)]


# ---- mismatched models and corpora ------------------------------------------------------------------------
def _eval_index(
    kind: str, beir: str = "beir", model: str | None = None
) -> Callable[[Path, Context], list[str]]:
    def prepare(work: Path, context: Context) -> list[str]:
        data = {"beir": context.beir, "other": context.other_beir}.get(beir) or make_tiny_beir(
            work / beir, documents=30 if beir == "smaller" else 50
        )
        argv = [
            "eval",
            "--beir",
            str(data),
            "--index",
            str(context.indexes[kind]),
            "--out-dir",
            str(work / "e"),
        ]
        given = {"bm25": "bm25", "tiny": context.model, "minilm": "all-minilm-l6-v2"}.get(model or "")
        return [*argv, "--no-show-progress"] + (["--model", given] if given else [])

    return prepare


def _changed_model(work: Path, context: Context) -> list[str]:
    model = shutil.copytree(context.model, work / "model")
    assert (
        main(
            [
                "index",
                str(model),
                "--corpus",
                str(context.beir),
                "--out",
                str(work / "idx"),
                "--no-show-progress",
            ]
        )
        == 0
    )
    _edit_json(model / "tokenizer_config.json", lambda c: {**c, "model_max_length": 64})
    return ["search", str(work / "idx"), "capital", "--no-show-progress"]


def _records_the_index_model(expected: str) -> Callable[[Path, str], None]:
    def check(work: Path, _: str) -> None:
        summary = json.loads((work / "e" / "metrics.json").read_text())
        assert summary["model"] == expected or Path(summary["model"]).name == Path(expected).name
        assert {line.split()[-1] for line in (work / "e" / "run.trec").read_text().splitlines()} == {
            Path(expected).name
        }

    return check


MISMATCH_PROBES = [
    Probe("mismatch", "bm25-model-on-dense-index", _eval_index("flat", model="bm25"), names="flat"),
    Probe("mismatch", "dense-model-on-bm25-index", _eval_index("bm25", model="tiny"), names="bm25"),
    Probe("mismatch", "other-dense-model-on-dense-index", _eval_index("hnsw", model="minilm"), names="hnsw"),
    Probe(
        "mismatch",
        "index-model-recorded",
        _eval_index("bm25"),
        expect_exit=0,
        check=_records_the_index_model("bm25"),
    ),
    Probe("mismatch", "changed-model-files", _changed_model, names="idx"),
] + [
    Probe("mismatch", f"{kind}-over-{beir}-corpus", _eval_index(kind, beir), names=kind)
    for kind in ("flat", "hnsw", "exact", "bm25")
    for beir in ("other", "smaller", "larger")
]


# ---- configs and messages ---------------------------------------------------------------------------------
def _config(
    command: str, values: dict, extra: Callable[[Context], list[str]]
) -> Callable[[Path, Context], list[str]]:
    def prepare(work: Path, context: Context) -> list[str]:
        (work / "config.json").write_text(json.dumps(values))
        return [command, *extra(context), "--config", str(work / "config.json")]

    return prepare


def _search(context: Context) -> list[str]:
    return [str(context.indexes["bm25"])]


def _eval(context: Context) -> list[str]:
    return ["--beir", str(context.beir), "--model", "bm25", "--out-dir", str(context.beir.parent / "never")]


WRONG_TYPES = [2.5, "3", True, [3], None, {"k": 3}]
CONFIG_PROBES = (
    [
        Probe(
            "config",
            f"search-{option}={json.dumps(value)}",
            _config("search", {"queries": ["capital"], option: value}, _search),
            names="config.json",
        )
        for option in ("k", "threads")
        for value in WRONG_TYPES
        if not (option == "threads" and value is None)  # threads may be null (torch's default)
    ]
    + [
        Probe(
            "config",
            f"eval-{option}={json.dumps(value)}",
            _config("eval", {option: value}, _eval),
            names="config.json",
        )
        for option, value in [
            ("batch_size", 2.5),
            ("split", 3),
            ("engine", "faiss"),
            ("show_progress", "no"),
            ("index", 1),
        ]
    ]
    + [
        Probe(
            "config",
            "search-json-yes",
            _config("search", {"queries": ["capital"], "json": "yes"}, _search),
            names="config.json",
        ),
        Probe(
            "config",
            "unknown-key",
            _config("search", {"queries": ["capital"], "top": 3}, _search),
            names="config.json",
        ),
        Probe("config", "not-an-object", _config("search", ["capital"], _search), names="config.json"),
        Probe(
            "config",
            "queries-as-one-string",
            _config("search", {"queries": "white matter", "json": True}, _search),
            expect_exit=0,
            check=lambda work, out: (
                [json.loads(line)["query"] for line in out.splitlines()] == ["white matter"]
                or pytest.fail(out)
            ),
        ),
    ]
)


def _argv(*words: str) -> Callable[[Path, Context], list[str]]:
    def prepare(work: Path, context: Context) -> list[str]:
        values = {"BEIR": str(context.beir), "BM25": str(context.indexes["bm25"]), "WORK": str(work)}
        return [values.get(w, w.replace("BEIR", str(context.beir)).replace("WORK", str(work))) for w in words]

    return prepare


def _utf16(work: Path, context: Context) -> list[str]:
    corpus = work / "corpus.jsonl"
    corpus.write_bytes((context.beir / "corpus.jsonl").read_text().encode("utf-16"))
    return ["index", "bm25", "--corpus", str(corpus), "--out", str(work / "i")]


MESSAGE_PROBES = [
    Probe("message", "unknown-flag", _argv("search", "BM25", "capital", "--jsn"), names="--jsn"),
    Probe(
        "message",
        "unknown-eval-flag",
        _argv("eval", "--beir", "BEIR", "--model", "bm25", "--bach-size", "3"),
        names="--bach-size",
    ),
    Probe(
        "message",
        "beir-is-a-file",
        _argv("eval", "--beir", "BEIR/corpus.jsonl", "--model", "bm25"),
        names="corpus.jsonl",
    ),
    Probe(
        "message", "beir-missing", _argv("eval", "--beir", "WORK/nowhere", "--model", "bm25"), names="nowhere"
    ),
    Probe(
        "message",
        "config-malformed",
        _argv("search", "BM25", "x", "--config", "BEIR/qrels/test.tsv"),
        names="test.tsv",
    ),
    Probe("message", "utf16-corpus", _utf16, names="UTF-16"),
    Probe("message", "empty-query", _argv("search", "BM25", "   "), names="query 1"),
    Probe(
        "message",
        "no-match",
        _argv("search", "BM25", "zzz qqq", "--json"),
        expect_exit=0,
        check=lambda work, out: json.loads(out)["hits"] == [] or pytest.fail(out),
    ),
    Probe("message", "search-not-an-index", _argv("search", "BEIR", "capital"), names="index.json"),
]

PROBES = OUTPUT_PROBES + DAMAGE_PROBES + MISMATCH_PROBES + CONFIG_PROBES + MESSAGE_PROBES


@pytest.mark.parametrize("probe", PROBES, ids=[p.id for p in PROBES])
def test_probe_ends_in_a_result_or_one_line_naming_the_file(
    probe: Probe, context: Context, tmp_path: Path, capsys
):
    work = tmp_path / "work"
    work.mkdir()
    argv = probe.prepare(work, context)
    capsys.readouterr()
    before, data_before = _snapshot(work), _snapshot(context.beir)
    code = main(argv)  # an exception escaping here is a traceback: the probe fails
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("dreamir ")]
    assert "Traceback" not in err
    assert code == probe.expect_exit, err
    if code == 2:
        assert len(errors) == 1, err
        if probe.names:
            assert probe.names in errors[0], errors[0]
        # Refused: nothing the user had is replaced or deleted, and nothing is written beside it.
        assert _snapshot(work) == before
    else:
        assert not errors, err
        # Every file the user had is still there, byte for byte (the command may add its own).
        after = _snapshot(work)
        assert {name: after.get(name) for name in before if "own/" not in name} == {
            name: content for name, content in before.items() if "own/" not in name
        }
    if probe.check:
        probe.check(work, out)
    assert _snapshot(context.beir) == data_before  # the dataset is never written


def test_the_probe_families_cover_the_issue():
    """At least the 223 probes of the issue, in every family it names."""
    families = {p.family for p in PROBES}
    assert {"output", "damage", "damage-legacy", "damage-export", "mismatch", "config", "message"} <= families
    assert len(PROBES) >= 223, len(PROBES)
