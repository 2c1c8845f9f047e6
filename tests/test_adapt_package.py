"""`dreamir adapt` is a package of one module a stage: each stage module loads on its own (without the
package's __init__ and without the pipeline), and the package re-exports every name its callers import."""

from __future__ import annotations

import ast
import importlib
import sys
import types
from pathlib import Path

import dreamir.adapt

ROOT = Path(__file__).resolve().parents[1]
ADAPT = ROOT / "src" / "dreamir" / "adapt"
STAGES = [
    "arguments",
    "encoding",
    "examples",
    "heads",
    "validation",
    "candidates",
    "training",
    "averaging",
    "report",
]


class _NoPipeline:
    """A finder that refuses the pipeline."""

    def find_spec(self, name, path=None, target=None):
        if name == "dreamir.adapt.pipeline":
            raise ImportError("a stage module imported dreamir.adapt.pipeline")
        return None


def test_the_stages_are_the_package_s_modules():
    assert sorted([*STAGES, "__init__", "pipeline"]) == sorted(p.stem for p in ADAPT.glob("*.py"))


def test_each_stage_module_loads_without_the_package_and_the_pipeline(monkeypatch):
    # The loaded package and its modules are set aside (and put back after the test); in their place a bare
    # package (the real __init__ would load every module) and a finder that refuses the pipeline. The stages
    # then load in order, each with only the stages before it loaded.
    for name in [n for n in sys.modules if n == "dreamir.adapt" or n.startswith("dreamir.adapt.")]:
        monkeypatch.delitem(sys.modules, name)
    package = types.ModuleType("dreamir.adapt")
    package.__path__ = [str(ADAPT)]
    monkeypatch.setitem(sys.modules, "dreamir.adapt", package)
    monkeypatch.setattr(sys, "meta_path", [_NoPipeline(), *sys.meta_path])
    for stage in STAGES:
        module = importlib.import_module(f"dreamir.adapt.{stage}")
        assert Path(module.__file__) == ADAPT / f"{stage}.py"
    assert "dreamir.adapt.pipeline" not in sys.modules


# Where each public name lives.
PUBLIC = {
    "arguments": ["AdaptArguments"],
    "examples": ["build_examples", "source_passage", "split_by_source", "prepare_examples", "read_derived"],
    "heads": ["select_heads_label_free"],
    "validation": ["VALIDATION_METRIC", "TIE_BREAKER", "PseudoGoldValidator"],
    "candidates": ["DenseCandidateRefresher"],
    "training": ["build_trainer"],
    "averaging": ["average_with_base", "average_checkpoint"],
    "report": ["render_report"],
    "pipeline": ["adapt"],
}


def test_the_package_re_exports_its_public_api():
    assert sorted(dreamir.adapt.__all__) == sorted(n for names in PUBLIC.values() for n in names)
    for module, names in PUBLIC.items():
        home = importlib.import_module(f"dreamir.adapt.{module}")
        for name in names:
            assert getattr(dreamir.adapt, name) is getattr(home, name), f"{name} is not {module}.{name}"


def _imported_from_the_package(path: Path) -> set[str]:
    return {
        alias.name
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and node.module == "dreamir.adapt"
        for alias in node.names
    }


def test_every_name_imported_from_the_package_is_re_exported():
    """The callers (the CLI, the quickstart, the benchmarks, the tests) import from ``dreamir.adapt``."""
    files = [p for folder in ("src", "tests", "benchmarks") for p in (ROOT / folder).rglob("*.py")]
    imported = set().union(*(_imported_from_the_package(p) for p in files))
    assert {"AdaptArguments", "adapt", "prepare_examples", "read_derived", "TIE_BREAKER"} <= imported
    assert imported <= set(dreamir.adapt.__all__), imported - set(dreamir.adapt.__all__)
