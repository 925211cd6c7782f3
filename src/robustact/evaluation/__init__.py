"""Evaluation: attack suites over test sets, per-example results, worst case, reports."""

from robustact.evaluation.engine import EvalResult, accuracy_under, evaluate, predict

__all__ = ["EvalResult", "accuracy_under", "evaluate", "predict"]
