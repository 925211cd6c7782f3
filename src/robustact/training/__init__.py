"""Training: objectives (standard, PGD-AT, TRADES, MART, FGSM-RS), schedules and the trainer."""

from robustact.training.objectives import OBJECTIVES, ObjectiveContext, get_objective, mart_loss
from robustact.training.trainer import Trainer

__all__ = ["OBJECTIVES", "ObjectiveContext", "Trainer", "get_objective", "mart_loss"]
