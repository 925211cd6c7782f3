"""Evaluation: attack suites over test sets, per-example results, worst case, sanity checks, reports, and the
library calls behind `robustact eval` (`open_run`, `run_eval`) and `benchmark` (any nn.Module)."""

from robustact.attacks.result import EvalResult
from robustact.evaluation.engine import evaluate
from robustact.evaluation.runner import EvalOptions, OpenedRun, benchmark, open_run, run_eval

__all__ = ["EvalOptions", "EvalResult", "OpenedRun", "benchmark", "evaluate", "open_run", "run_eval"]
