"""Analyses by kind. `fn(targets, options) -> list of written files`; each target is a run or checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from robustact.errors import RobustactError
from robustact.evaluation import OpenedRun
from robustact.registry import Registry


@dataclass
class AnalysisOptions:
    out: Path                      # folder for CSV + PNG
    class_idx: int | None = None   # the class whose test images are analysed (None: the analysis' default)
    n: int = 1000                  # test images considered (the first n of the class's split)
    eps: float = 8 / 255
    which: str = "best"            # run checkpoint
    data_root: str | None = None
    device: str | None = None
    seed: int = 0


def class_images(run: OpenedRun, class_idx: int, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The opened run's test images of one class (the first `limit` of them), or a one-line error."""
    k = run.model.classifier_layer().out_features
    if not 0 <= class_idx < k:
        raise RobustactError(f"--class must be in 0..{k - 1}, got {class_idx}")
    keep = run.y == class_idx
    if not bool(keep.any()):
        raise RobustactError(f"no test image of class {class_idx} among the first {run.n}; raise --n")
    return run.x[keep][:limit], run.y[keep][:limit]


Analysis = Callable[[list[Path], AnalysisOptions], list[Path]]
ANALYSES: Registry[Analysis] = Registry("analysis", builtin={
    kind: f"robustact.analysis.{kind}" for kind in ("channels", "relevance", "gates")})


def register_analysis(kind: str) -> Callable[[Analysis], Analysis]:
    return ANALYSES.register(kind)


def list_analyses() -> list[str]:
    return ANALYSES.names()


def run_analysis(kind: str, targets: list[Path], options: AnalysisOptions) -> list[Path]:
    analysis = ANALYSES.get(kind)
    options.out.mkdir(parents=True, exist_ok=True)
    return analysis(targets, options)
