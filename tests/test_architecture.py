"""Dependencies point one way: CLI -> workflow -> trainer -> objectives -> {retriever, frozen LLM}; search
knows no model, and the commands around it (indexing, export, mteb bridge) know no training."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dreamir"

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
    "objectives": ["dreamir.trainer", "dreamir.workflow", "dreamir.cli", "dreamir.heads"],
    "trainer": ["dreamir.workflow", "dreamir.cli", "dreamir.quickstart", "dreamir.llm"],
    "search": [
        "dreamir.llm",
        "dreamir.retriever",
        "dreamir.objectives",
        "dreamir.trainer",
        "dreamir.workflow",
        "dreamir.evaluation",
        "dreamir.cli",
        "torch",
    ],
    "progress": ["dreamir"],
    "indexing": ["dreamir.llm", "dreamir.objectives", "dreamir.trainer", "dreamir.workflow", "dreamir.cli"],
    "mteb_bridge": [
        "dreamir.llm",
        "dreamir.retriever",
        "dreamir.objectives",
        "dreamir.trainer",
        "dreamir.cli",
    ],
    "export": ["dreamir.llm", "dreamir.objectives", "dreamir.workflow", "dreamir.cli"],
    "head_attention": ["dreamir.objectives", "dreamir.trainer", "dreamir.workflow", "dreamir.cli"],
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
