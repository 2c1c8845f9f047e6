"""Dependencies point one way: CLI -> workflow -> trainer -> objectives -> {retriever, frozen LLM}."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dreamir"

# Everything that knows about models or runs them, and the orchestrators on top.
_MODEL_LAYERS = ["dreamir.llm", "dreamir.retriever", "dreamir.objectives", "dreamir.trainer"]
_ORCHESTRATION = ["dreamir.workflow", "dreamir.cli", "dreamir.quickstart", "dreamir.adapt"]
# Small helpers every layer may use; they use no layer.
_UTILITIES = ("io", "models", "guards", "options", "checkpoints", "plots")
# Entry points and pipelines: free to import every layer.
ORCHESTRATORS = {"__init__", "cli", "workflow", "quickstart", "adapt", "validate"}

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
        "dreamir.datasets",
        "torch",
    ],
    "candidates": ["dreamir.llm", "dreamir.retriever", "dreamir.objectives", "dreamir.trainer", "torch"],
    "evaluation": ["dreamir.llm", "dreamir.retriever", "dreamir.objectives", "dreamir.trainer", "torch"],
    "similarity": ["dreamir.llm", "dreamir.retriever", "dreamir.objectives", "dreamir.data", "torch"],
    # Example datasets build task files from core data; nothing below them knows they exist.
    "datasets": [*_MODEL_LAYERS, "dreamir.evaluation", "dreamir.candidates", "torch"],
    # Head selection is a step of its own: objectives take the heads, never select them.
    "objectives": ["dreamir.trainer", "dreamir.workflow", "dreamir.cli", "dreamir.llm.heads"],
    "trainer": ["dreamir.workflow", "dreamir.cli", "dreamir.quickstart", "dreamir.llm"],
    **{name: [*_MODEL_LAYERS, *_ORCHESTRATION, "dreamir.data", "dreamir.datasets"] for name in _UTILITIES},
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
        else list((PACKAGE / component).rglob("*.py"))
    )
    assert files
    for file in files:
        for name in _imports(file):
            for banned in FORBIDDEN[component]:
                assert not (name == banned or name.startswith(banned + ".")), f"{file.name} imports {name}"


def test_every_module_has_its_place():
    """A new module is either an orchestrator or part of a component whose imports are checked above."""
    placed = set(FORBIDDEN) | ORCHESTRATORS
    unplaced = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.relative_to(PACKAGE).parts[0].removesuffix(".py") not in placed
    )
    assert not unplaced, f"add these modules to FORBIDDEN or ORCHESTRATORS: {unplaced}"
