"""Dependencies point one way: CLI -> {adapt, quickstart} -> workflow -> arguments -> trainer -> objectives ->
{retriever, frozen LLM} -> data, with small leaf modules (io, options, distributed, stages, ...) under all;
search knows no model, and the commands around it (indexing, export, mteb bridge) know no training and no LLM
(the CLI hands search the LLM reranker); inside the adapt package, the pipeline -> the stages -> their arguments."""

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dreamir"

# Everything that knows about models or runs them, and the orchestrators on top.
_MODEL_LAYERS = ["dreamir.llm", "dreamir.retriever", "dreamir.objectives", "dreamir.trainer"]
_ORCHESTRATION = [
    "dreamir.workflow",
    "dreamir.arguments",
    "dreamir.cli",
    "dreamir.quickstart",
    "dreamir.adapt",
]
# Small helpers every layer may use; they use no layer.
_UTILITIES = (
    "io",
    "models",
    "guards",
    "options",
    "checkpoints",
    "plots",
    "distributed",
    "stages",
    "attention",
    "precision",
)
# Entry points and pipelines: free to import every layer.
ORCHESTRATORS = {"__init__", "cli", "quickstart", "validate"}

FORBIDDEN = {
    "retriever": [
        *_ORCHESTRATION,
        "dreamir.llm",
        "dreamir.objectives",
        "dreamir.trainer",
        "dreamir.evaluation",
    ],
    "llm": ["dreamir.retriever", "dreamir.objectives", "dreamir.trainer", *_ORCHESTRATION],
    "data": [*_MODEL_LAYERS, *_ORCHESTRATION, "dreamir.datasets", "torch"],
    "candidates": [*_MODEL_LAYERS, "torch"],
    "evaluation": [*_MODEL_LAYERS, "torch"],
    "similarity": [*_MODEL_LAYERS, "dreamir.data", "torch"],
    # Example datasets build task files from core data; nothing below them knows they exist.
    "datasets": [*_MODEL_LAYERS, *_ORCHESTRATION, "dreamir.evaluation", "dreamir.candidates", "torch"],
    # Head selection is a step of its own: objectives take the heads, never select them.
    "objectives": ["dreamir.trainer", "dreamir.llm.heads", *_ORCHESTRATION],
    "trainer": ["dreamir.llm", *_ORCHESTRATION],
    "arguments": [
        "dreamir.workflow",
        "dreamir.cli",
        "dreamir.adapt",
        "dreamir.quickstart",
        "dreamir.retriever",
    ],
    "workflow": ["dreamir.cli", "dreamir.adapt", "dreamir.quickstart"],
    "adapt": ["dreamir.cli", "dreamir.quickstart"],
    **{name: [*_MODEL_LAYERS, *_ORCHESTRATION, "dreamir.data", "dreamir.datasets"] for name in _UTILITIES},
    "search": [*_MODEL_LAYERS, *_ORCHESTRATION, "dreamir.evaluation", "torch"],
    # Manifests, fingerprints and the output rule, under every command that writes an artefact.
    "artefacts": [
        *_MODEL_LAYERS,
        *_ORCHESTRATION,
        "dreamir.search",
        "dreamir.evaluation",
        "dreamir.datasets",
        "torch",
    ],
    "progress": ["dreamir"],
    "indexing": [
        "dreamir.llm",
        "dreamir.reranking",
        "dreamir.objectives",
        "dreamir.trainer",
        *_ORCHESTRATION,
    ],
    # The LLM second stage: a frozen LLM over hits, handed to search and eval by the CLI.
    "reranking": [
        "dreamir.retriever",
        "dreamir.objectives",
        "dreamir.trainer",
        "dreamir.indexing",
        "dreamir.evaluation",
        *_ORCHESTRATION,
    ],
    "mteb_bridge": [*_MODEL_LAYERS, *_ORCHESTRATION],
    # export reads the checkpoint layout the trainer writes, to describe a trained model.
    "export": ["dreamir.llm", "dreamir.objectives", *_ORCHESTRATION],
    "head_attention": ["dreamir.objectives", "dreamir.trainer", *_ORCHESTRATION],
}


def _imports(path: Path) -> set[str]:
    """The modules a file imports, by absolute name: relative imports resolved against the file's package,
    and ``from package import name`` counted as ``package.name`` too (the name may be a submodule)."""
    package = ["dreamir", *path.relative_to(PACKAGE).parent.parts]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
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
                assert not (name == banned or name.startswith(banned + ".")), (
                    f"{file.relative_to(PACKAGE)} imports {name}"
                )


# `dreamir adapt` is a package of one module a stage; only these two may import the pipeline (which runs
# the stages in order), and no stage imports the package itself (its __init__ imports the pipeline).
ADAPT_ENTRIES = {"__init__", "pipeline"}


def _adapt_modules() -> dict[str, Path]:
    return {path.stem: path for path in sorted((PACKAGE / "adapt").glob("*.py"))}


def test_adapt_stages_do_not_import_the_pipeline():
    stages = {name: path for name, path in _adapt_modules().items() if name not in ADAPT_ENTRIES}
    assert {"arguments", "examples", "heads", "training", "report"} <= set(stages)
    for name, path in stages.items():
        for imported in _imports(path):
            assert imported != "dreamir.adapt", f"adapt/{name}.py imports the package dreamir.adapt"
            assert not (
                imported == "dreamir.adapt.pipeline" or imported.startswith("dreamir.adapt.pipeline.")
            ), f"adapt/{name}.py imports dreamir.adapt.pipeline: only {sorted(ADAPT_ENTRIES)} may"


def test_adapt_modules_import_each_other_without_a_cycle():
    modules = _adapt_modules()
    imported = {name: _imports(path) for name, path in modules.items()}
    graph = {
        name: {
            other for other in modules if other != "__init__" and f"dreamir.adapt.{other}" in imported[name]
        }
        for name in modules
    }
    list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError naming the cycle
    assert not graph["arguments"], f"adapt/arguments.py, under every stage, imports {graph['arguments']}"


def test_every_module_has_its_place():
    """A new module is either an orchestrator or part of a component whose imports are checked above."""
    placed = set(FORBIDDEN) | ORCHESTRATORS
    unplaced = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.relative_to(PACKAGE).parts[0].removesuffix(".py") not in placed
    )
    assert not unplaced, f"add these modules to FORBIDDEN or ORCHESTRATORS: {unplaced}"


def test_the_pooling_module_saved_with_compress_models_needs_no_dreamir():
    """It is copied into every saved compress-pooling model for sentence-transformers to import alone."""
    names = _imports(PACKAGE / "retriever" / "compress_pooling.py")
    assert not any(name == "dreamir" or name.startswith("dreamir.") for name in names)
