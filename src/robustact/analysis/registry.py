"""Analyses by kind. `fn(targets, options) -> list of written files`; each target is a run or checkpoint.

Also what the class-specific analyses share: which class a figure shows (`resolve_class`: the one asked for, the
mean over classes, or by default the class the compared models classify best, `choose_class`) and the one-line
warning when a model hardly classifies the class shown.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from robustact.attacks import predict
from robustact.data import dataset_info
from robustact.errors import RobustactError
from robustact.evaluation import OpenedRun
from robustact.registry import Registry

CLASS_MEAN = "mean"      # --class mean: every class's statistics, averaged over the classes
WARN_BELOW = 0.30        # clean accuracy on the class shown under which a model gets a one-line warning
MIN_CLASS_IMAGES = 10    # the default class is chosen among classes with this many images (when any has)


@dataclass
class AnalysisOptions:
    out: Path                             # folder for CSV + PNG
    class_idx: int | str | None = None    # a class index, "mean" (averaged over classes), or None: the analysis'
    #                                       default (channels, relevance: the best-classified class; gates: all)
    n: int = 1000                         # test images considered (the first n of the class's split)
    eps: float = 8 / 255
    which: str = "best"                   # run checkpoint
    data_root: str | None = None
    device: str | None = None
    seed: int = 0


def class_option(value: int | str | None) -> int | str | None:
    """`--class` as given: None, a class index (int or digits) or "mean"; anything else is a one-line error."""
    if value is None or isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text == CLASS_MEAN:
        return CLASS_MEAN
    if text.isdigit():
        return int(text)
    raise RobustactError(f"--class must be a class index (0, 1, ...) or '{CLASS_MEAN}', got {value!r}")


def class_images(run: OpenedRun, class_idx: int, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The opened run's test images of one class (the first `limit` of them), or a one-line error."""
    k = run.model.classifier_layer().out_features
    if not 0 <= class_idx < k:
        raise RobustactError(f"--class must be in 0..{k - 1}, got {class_idx}")
    keep = run.y == class_idx
    if not bool(keep.any()):
        raise RobustactError(f"no test image of class {class_idx} among the first {run.n}; raise --n")
    return run.x[keep][:limit], run.y[keep][:limit]


def class_name(run: OpenedRun, class_idx: int) -> str:
    """"3 (cat)": the label and, where the dataset names it, the class's name (a run on a class subset names the
    original class its label stands for)."""
    names = dataset_info(run.config.data.dataset).class_names
    subset = run.config.data.classes
    original = subset[class_idx] if subset and class_idx < len(subset) else class_idx
    return f"{class_idx} ({names[original]})" if original < len(names) and names[original] != str(class_idx) \
        else str(class_idx)


def accuracy_by_class(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean accuracy per class, NaN where the class has no image; images per class) over `x`."""
    correct = (predict(model, x, labels=y) == y).float().cpu()
    labels = y.cpu()
    counts = torch.bincount(labels, minlength=num_classes)[:num_classes].float()
    hits = torch.bincount(labels, weights=correct, minlength=num_classes)[:num_classes]
    acc = torch.where(counts > 0, hits / counts.clamp_min(1), torch.full_like(hits, math.nan))
    return acc, counts.long()


def choose_class(accuracy: torch.Tensor, counts: torch.Tensor, min_images: int = MIN_CLASS_IMAGES) -> int:
    """The default class: the highest *lowest* clean accuracy over the models compared (each row of `accuracy`,
    models × classes), so that no model's picture is of a class it cannot classify; ties go to the higher mean
    accuracy, then to the lower index. Candidates are the classes with at least `min_images` images (all classes
    with an image when none has that many)."""
    accuracy = torch.as_tensor(accuracy, dtype=torch.float64)
    accuracy = accuracy.reshape(-1, accuracy.shape[-1])
    counts = torch.as_tensor(counts)
    present = (counts > 0) & ~torch.isnan(accuracy).any(0)
    candidates = present & (counts >= min_images)
    if not bool(candidates.any()):
        candidates = present
    if not bool(candidates.any()):
        raise RobustactError("no class has an image among the test images considered; raise --n")
    lowest, mean = accuracy.min(0).values, accuracy.mean(0)
    best = max((int(c) for c in candidates.nonzero().flatten()),
               key=lambda c: (round(float(lowest[c]), 9), round(float(mean[c]), 9), -c))
    return best


@dataclass
class ClassChoice:
    """The class a figure shows and how it was picked, with each model's clean accuracy on its images."""

    index: int | None                     # None: the mean over classes
    name: str                             # "3 (cat)" or "mean over 10 classes"
    how: str                              # "given" | "chosen" | "mean"
    accuracy: dict[str, float] = field(default_factory=dict)   # model label -> clean accuracy (class-balanced
    #                                                            mean over the classes for "mean")
    n_images: int = 0                     # the class's images (all images considered for "mean")
    classes: list[int] = field(default_factory=list)            # the classes averaged ("mean")

    @property
    def stem(self) -> str:
        """The file-name part: class3 / classmean."""
        return f"class{CLASS_MEAN if self.index is None else self.index}"

    def describe(self) -> str:
        """Two lines for a figure's title: the class and why it is shown; each model's clean accuracy on it."""
        why = {"chosen": " (the default: the class with the highest lowest clean accuracy over the models)",
               "given": "", "mean": " (each class's statistics, averaged over the classes)"}[self.how]
        what = f"class {self.name}" if self.index is not None else self.name
        accs = ", ".join(f"{label} {acc:.0%}" for label, acc in self.accuracy.items())
        mean = " (class-balanced)" if self.index is None else ""
        return f"{what}, {self.n_images} test images{why}\nclean accuracy on them{mean}: {accs}"


def warn(message: str) -> None:
    """A one-line warning on stderr; the analysis goes on."""
    print(f"robustact: warning: {message}", file=sys.stderr)


def resolve_class(requested: int | str | None, runs: Sequence[tuple[str, OpenedRun]],
                  warn_below: float = WARN_BELOW) -> ClassChoice:
    """The class the figure shows for these (label, opened run) pairs: `requested` (an index or "mean"), or by
    default `choose_class` over the models' clean accuracies on the images considered. A model whose clean
    accuracy on the class shown is under `warn_below` gets a one-line warning on stderr."""
    requested = class_option(requested)
    k = min(run.model.classifier_layer().out_features for _, run in runs)
    table = [accuracy_by_class(run.model, run.x, run.y, k) for _, run in runs]
    accuracy = torch.stack([acc for acc, _ in table])
    counts = table[0][1]
    first = runs[0][1]
    if requested == CLASS_MEAN:
        classes = [c for c in range(k) if counts[c] > 0 and not torch.isnan(accuracy[:, c]).any()]
        if not classes:
            raise RobustactError("no class has an image among the test images considered; raise --n")
        accs = {label: float(accuracy[i, classes].mean()) for i, (label, _) in enumerate(runs)}
        return ClassChoice(None, f"mean over {len(classes)} classes", "mean", accs, int(counts[classes].sum()),
                           classes)
    if requested is None:
        index, how = choose_class(accuracy, counts), "chosen"
    else:
        index, how = int(requested), "given"
        for _, run in runs:  # the one-line error for a class out of range or without images
            class_images(run, index)
    accs = {label: float(accuracy[i, index]) for i, (label, _) in enumerate(runs)}
    choice = ClassChoice(index, class_name(first, index), how, accs, int(counts[index]))
    low = [f"{label} {acc:.0%}" for label, acc in accs.items() if acc < warn_below]
    if low:
        hint = "; omit --class to show the best-classified class" if how == "given" else \
            " even on the best-classified class"
        warn(f"class {choice.name}: clean accuracy under {warn_below:.0%} on its {choice.n_images} images for "
             f"{', '.join(low)}; the figure may mean little{hint}")
    return choice


Analysis = Callable[[list[Path], AnalysisOptions], list[Path]]
ANALYSES: Registry[Analysis] = Registry("analysis", builtin={
    kind: f"robustact.analysis.{kind}" for kind in ("channels", "relevance", "gates")})


def register_analysis(kind: str) -> Callable[[Analysis], Analysis]:
    return ANALYSES.register(kind)


def list_analyses() -> list[str]:
    return ANALYSES.names()


def run_analysis(kind: str, targets: list[Path], options: AnalysisOptions) -> list[Path]:
    analysis = ANALYSES.get(kind)
    options.class_idx = class_option(options.class_idx)
    options.out.mkdir(parents=True, exist_ok=True)
    return analysis(targets, options)
