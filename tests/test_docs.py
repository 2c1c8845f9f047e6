"""The documentation holds: every relative link in the README, docs/ and results/README.md reaches a file
(and a heading, when it names one), the README fits on a few screens, and every `dreamir ...` command shown
parses with the command's own parser (nothing runs)."""

from __future__ import annotations

import re
import shlex
from collections import Counter
from pathlib import Path

import pytest

from dreamir import cli

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "results" / "README.md"]
README_MAX_LINES = 250

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"(?<!`)`([^`]+)`(?!`)")
LINK = re.compile(r"\[[^\]]*\]\(([^()\s]+)\)")


def _without_code(text: str) -> str:
    return INLINE_CODE.sub("", FENCE.sub("", text))


def _slug(heading: str) -> str:
    """The anchor a code host (GitHub's rule) gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: Counter[str] = Counter()
    anchors = set()
    for line in FENCE.sub("", page.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = _slug(match.group(1))
            anchors.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
            seen[slug] += 1
    return anchors


def _links() -> list[tuple[Path, str]]:
    return [
        (page, target)
        for page in PAGES
        for target in LINK.findall(_without_code(page.read_text(encoding="utf-8")))
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto: are not checked here
    ]


def test_the_pages_exist():
    names = {p.name for p in PAGES}
    assert {"README.md", "method.md", "adapting.md", "training.md", "search-and-export.md"} <= names
    assert {"performance.md", "failures.md", "experiments.md"} <= names


@pytest.mark.parametrize("page, target", _links(), ids=lambda v: str(v).replace(str(ROOT) + "/", ""))
def test_every_relative_link_resolves(page: Path, target: str):
    path, _, anchor = target.partition("#")
    destination = (page.parent / path).resolve() if path else page
    assert destination.exists(), f"{page.relative_to(ROOT)}: link to {target}: no such file"
    if anchor:
        assert destination.suffix == ".md", (
            f"{page.relative_to(ROOT)}: anchor into a non-Markdown file {target}"
        )
        assert anchor in _anchors(destination), f"{page.relative_to(ROOT)}: {target}: no such heading"


def test_the_readme_fits_on_a_few_screens():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"


# ---- commands ------------------------------------------------------------------------------------------
def _commands() -> list[tuple[str, str, bool]]:
    """(page, command line, complete) for every `dreamir ...` shown: the lines of code blocks (continuations
    joined, comments dropped) are complete commands; inline code spans may show a few options only."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        name = str(page.relative_to(ROOT))
        for block in FENCE.finditer(text):
            joined = re.sub(r"\\\n", " ", block.group(0))
            for line in joined.splitlines()[1:-1]:
                if re.search(r"(^|\s)(dreamir|-m dreamir\.cli)\s", line):
                    found.append((name, line.strip(), True))
        for span in INLINE_CODE.findall(FENCE.sub("", text)):
            span = " ".join(span.split())
            if re.match(r"^dreamir\s", span):
                found.append((name, span, False))
    return found


def _argv(line: str) -> list[str]:
    words = shlex.split(line, comments=True)
    if "dreamir.cli" in words:  # accelerate launch ... -m dreamir.cli train ...
        return words[words.index("dreamir.cli") + 1 :]
    return words[words.index("dreamir") + 1 :]


COMMANDS = _commands()


def test_the_readme_shows_the_main_commands():
    shown = {_argv(line)[0] for page, line, _ in COMMANDS if page == "README.md" and _argv(line)}
    assert {"adapt", "train", "index", "search", "eval", "export"} <= shown


@pytest.mark.parametrize("page, line, complete", COMMANDS, ids=[f"{p}: {c[:60]}" for p, c, _ in COMMANDS])
def test_every_command_shown_parses(page: str, line: str, complete: bool, capsys):
    argv = _argv(line)
    if not argv or argv[0] in ("--help", "-h", "<command>", "COMMAND"):
        return  # the top-level help, and every command's help, are tested below
    by_name = {c.name: c for c in cli.COMMANDS}
    assert argv[0] in by_name, f"{page}: `{line}`: no command {argv[0]!r}"
    command = by_name[argv[0]]
    parser = cli.command_parser(command)
    rest = argv[1:]
    if "--help" in rest or "-h" in rest:
        assert parser.format_help()
        return
    whole = complete and "..." not in rest
    if not whole:  # an elided command: only the options shown must parse
        rest = [w for w in rest if w != "..."]
        for action in parser._actions:
            action.required = False
    argv = cli._with_positionals(command, rest)
    try:
        if whole:  # also the range checks the command's settings run when built
            parser.parse_args_into_dataclasses(argv, look_for_args_file=False)
        else:
            parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"{page}: `{line}` does not parse: {capsys.readouterr().err.strip()}")
    except ValueError as error:
        pytest.fail(f"{page}: `{line}` is refused: {error}")


@pytest.mark.parametrize("command", cli.COMMANDS, ids=lambda c: c.name)
def test_every_command_has_help_for_users(command):
    text = cli.command_parser(command).format_help()
    assert "writes" in command.help or "prints" in command.help, command.name
    assert command.help.splitlines()[0] in text


def test_the_top_level_help_says_what_dreamir_is_for(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "retriever" in text and "thin entry points" not in text
    for command in cli.COMMANDS:
        assert command.name in text


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_code_block_is_closed(page: Path):
    fences = [line for line in page.read_text(encoding="utf-8").splitlines() if line.startswith("```")]
    assert len(fences) % 2 == 0, f"{page.relative_to(ROOT)}: a code block is not closed"


def test_every_make_target_shown_exists():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, re.MULTILINE))
    shown = set()
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        code = [*(m.group(0) for m in FENCE.finditer(text)), *INLINE_CODE.findall(FENCE.sub("", text))]
        for snippet in code:
            for target in re.findall(r"(?:^|\s|&&\s)make ([a-z][\w-]*)", snippet, re.MULTILINE):
                shown.add((str(page.relative_to(ROOT)), target))
    assert shown
    missing = sorted(f"{page}: make {target}" for page, target in shown if target not in targets)
    assert not missing, missing


def test_the_results_index_lists_every_results_file():
    index = (ROOT / "results" / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `([^`]+)` \|", index, re.MULTILINE))
    present = {p.name for p in (ROOT / "results").iterdir() if p.name != "README.md"}
    assert present - listed == set(), (
        f"results files missing from results/README.md: {sorted(present - listed)}"
    )
    assert listed - present == set(), f"results/README.md lists absent files: {sorted(listed - present)}"
