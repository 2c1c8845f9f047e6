"""Dependencies point one way: CLI -> workflow -> trainer -> objectives -> {retriever, frozen LLM}."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dreamir"

FORBIDDEN = {
    "retriever": [
        "dreamir.llm",
        "dreamir.objectives",
        "dreamir.trainer",
        "dreamir.workflow",
        "dreamir.evaluation",
    ],
    "llm": ["dreamir.retriever", "dreamir.objectives", "dreamir.trainer", "dreamir.workflow", "dreamir.cli"],
    "data": [
        "dreamir.llm",
        "dreamir.retriever",
        "dreamir.objectives",
        "dreamir.trainer",
        "torch",
    ],
    "candidates": ["dreamir.llm", "dreamir.retriever", "dreamir.objectives", "dreamir.trainer", "torch"],
    "evaluation": ["dreamir.llm", "dreamir.retriever", "dreamir.objectives", "dreamir.trainer", "torch"],
    "similarity": ["dreamir.llm", "dreamir.retriever", "dreamir.objectives", "dreamir.data", "torch"],
    # Head selection is a step of its own: objectives take the heads, never select them.
    "objectives": ["dreamir.trainer", "dreamir.workflow", "dreamir.cli", "dreamir.llm.heads"],
    "trainer": ["dreamir.workflow", "dreamir.cli", "dreamir.quickstart", "dreamir.llm"],
}


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
