"""Analyses by kind. `fn(targets, options) -> list of written files`; each target is a run or checkpoint."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from robustact.errors import RobustactError


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


Analysis = Callable[[list[Path], AnalysisOptions], list[Path]]
_ANALYSES: dict[str, Analysis] = {}
_BUILTIN = {"channels": "robustact.analysis.channels", "relevance": "robustact.analysis.relevance",
            "gates": "robustact.analysis.gates"}


def register_analysis(kind: str) -> Callable[[Analysis], Analysis]:
    def decorator(fn: Analysis) -> Analysis:
        _ANALYSES[kind] = fn
        return fn

    return decorator


def _load(kind: str) -> None:
    module = _BUILTIN.get(kind)
    if module and kind not in _ANALYSES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def list_analyses() -> list[str]:
    for kind in _BUILTIN:
        _load(kind)
    return sorted(_ANALYSES)


def run_analysis(kind: str, targets: list[Path], options: AnalysisOptions) -> list[Path]:
    _load(kind)
    if kind not in _ANALYSES:
        raise RobustactError(f"unknown analysis {kind!r}; available: {', '.join(list_analyses()) or 'none yet'}")
    options.out.mkdir(parents=True, exist_ok=True)
    return _ANALYSES[kind](targets, options)
