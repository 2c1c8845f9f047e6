"""Training objectives, one per file; each is a loss module over the retriever.

The registry maps an ``--objective`` name to its class; a class declares the dataclass of its own options
(``options_class``) and builds itself from them (``from_options``). A new objective is a file with its class
and one entry below."""

from dreamir.objectives.autoregembed_cda import AutoRegEmbedCDALoss
from dreamir.objectives.autoregembed_ic import AutoRegEmbedICLoss, AutoRegEmbedOptions
from dreamir.objectives.base import Objective, ObjectiveOutput, TrainingInstance
from dreamir.objectives.dream import DreamLoss, DreamOptions
from dreamir.objectives.infonce import InfoNCELoss
from dreamir.objectives.replug import ReplugLoss, ReplugOptions

OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls for cls in (DreamLoss, InfoNCELoss, ReplugLoss, AutoRegEmbedICLoss, AutoRegEmbedCDALoss)
}


def objective_class(name: str) -> type[Objective]:
    if name not in OBJECTIVES:
        raise ValueError(f"--objective {name!r} is not one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def options_classes() -> list[type]:
    """Every registered objective's options dataclass, each once (the CLI offers all of them; objectives
    of one method may share theirs)."""
    return list(
        dict.fromkeys(cls.options_class for cls in OBJECTIVES.values() if cls.options_class is not None)
    )


__all__ = [
    "OBJECTIVES",
    "AutoRegEmbedCDALoss",
    "AutoRegEmbedICLoss",
    "AutoRegEmbedOptions",
    "DreamLoss",
    "DreamOptions",
    "InfoNCELoss",
    "Objective",
    "ObjectiveOutput",
    "ReplugLoss",
    "ReplugOptions",
    "TrainingInstance",
    "objective_class",
    "options_classes",
]
