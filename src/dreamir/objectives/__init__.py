"""Training objectives, one per file; each is a loss module over the retriever."""

from dreamir.objectives.base import Objective, ObjectiveOutput, TrainingInstance
from dreamir.objectives.dream import DreamLoss

__all__ = ["DreamLoss", "Objective", "ObjectiveOutput", "TrainingInstance"]
