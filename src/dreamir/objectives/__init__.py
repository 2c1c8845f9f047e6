"""Training objectives, one per file; each is a loss module over the retriever."""

from dreamir.objectives.base import Objective, ObjectiveOutput, TrainingInstance
from dreamir.objectives.dream import DreamLoss
from dreamir.objectives.infonce import InfoNCELoss
from dreamir.objectives.replug import ReplugLoss

__all__ = ["DreamLoss", "InfoNCELoss", "Objective", "ObjectiveOutput", "ReplugLoss", "TrainingInstance"]
