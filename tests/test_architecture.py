"""Dependencies point one way: CLI -> {adapt, quickstart} -> workflow -> arguments -> trainer -> objectives ->
{retriever, frozen LLM} -> data, with small leaf modules (io, options, distributed, stages, ...) under all."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dreamir"

LOWER_THAN_DATA = [
    "dreamir.llm",
    "dreamir.retriever",
    "dreamir.objectives",
    "dreamir.trainer",
    "dreamir.workflow",
    "dreamir.arguments",
    "dreamir.heads",
    "dreamir.cli",
    "dreamir.adapt",
    "dreamir.quickstart",
]
# Leaf helpers: nothing of the package above them.
LEAVES = ["io", "options", "models", "checkpoints", "guards", "distributed", "stages"]

FORBIDDEN = {
    "retriever": [
        "dreamir.llm",
        "dreamir.heads",
        "dreamir.objectives",
        "dreamir.trainer",
        "dreamir.workflow",
    ],
    "llm": ["dreamir.retriever", "dreamir.objectives", "dreamir.trainer", "dreamir.workflow", "dreamir.cli"],
    "data": [
        "dreamir.llm",
        "dreamir.retriever",
        "dreamir.objectives",
        "dreamir.trainer",
        "dreamir.heads",
        "torch",
    ],
    "candidates": ["dreamir.llm", "dreamir.retriever", "dreamir.objectives", "dreamir.trainer", "torch"],
    "evaluation": ["dreamir.llm", "dreamir.retriever", "dreamir.objectives", "dreamir.trainer", "torch"],
    "objectives": [
        "dreamir.trainer",
        "dreamir.workflow",
        "dreamir.cli",
        "dreamir.heads",
        "dreamir.arguments",
    ],
    "trainer": ["dreamir.workflow", "dreamir.cli", "dreamir.quickstart", "dreamir.llm", "dreamir.arguments"],
    "arguments": [
        "dreamir.workflow",
        "dreamir.cli",
        "dreamir.adapt",
        "dreamir.quickstart",
        "dreamir.retriever",
    ],
    "workflow": ["dreamir.cli", "dreamir.adapt", "dreamir.quickstart"],
    "adapt": ["dreamir.cli", "dreamir.quickstart"],
    "quickstart": ["dreamir.cli"],
    "heads": [
        "dreamir.retriever",
        "dreamir.objectives",
        "dreamir.trainer",
        "dreamir.workflow",
        "dreamir.cli",
    ],
    "validate": [
        "dreamir.llm",
        "dreamir.retriever",
        "dreamir.objectives",
        "dreamir.trainer",
        "dreamir.workflow",
    ],
    "plots": [*LOWER_THAN_DATA, "dreamir.data"],
    **{leaf: [*LOWER_THAN_DATA, "dreamir.data"] for leaf in LEAVES},
}
# Top-level entry points may import anything below them.
ENTRY_POINTS = {"cli", "__init__"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("component", sorted(FORBIDDEN))
def test_component_does_not_import_upwards(component):
    files = (
        [PACKAGE / f"{component}.py"]
        if (PACKAGE / f"{component}.py").exists()
        else list((PACKAGE / component).glob("*.py"))
    )
    assert files
    for file in files:
        for name in _imports(file):
            for banned in FORBIDDEN[component]:
                assert not (name == banned or name.startswith(banned + ".")), f"{file.name} imports {name}"


def test_every_module_has_a_rule():
    modules = {p.stem for p in PACKAGE.glob("*.py")} | {
        p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()
    }
    assert sorted(modules - set(FORBIDDEN) - ENTRY_POINTS) == []
