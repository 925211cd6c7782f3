"""The splits a run uses: the training split with its optional class selection, stratified subset and
validation hold-out, and the test images an evaluation attacks (the first n, RobustBench's convention)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from robustact.data.datasets import class_subset, dataset_info, load_dataset, stratified_subset, train_val_split


@dataclass
class RunData:
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    num_classes: int


def select_classes(x: torch.Tensor, y: torch.Tensor, classes: Sequence[int] | None):
    """Keep only `classes` (labels remapped to 0..len-1); None keeps all."""
    if not classes:
        return x, y
    idx, y_new = class_subset(y, classes)
    return x[idx], y_new


def num_classes_of(dataset: str, classes: Sequence[int] | None = None) -> int:
    """Classes a run trains on, known before any file is read."""
    return len(classes) if classes else dataset_info(dataset).num_classes


def training_split(dataset: str, seed: int, *, classes: Sequence[int] | None = None, train_subset: int | None = None,
                   val_size: int = 0, root: str | os.PathLike | None = None, download: bool = False) -> RunData:
    """Training and validation tensors (uint8 images): classes, then a stratified subset, then the hold-out."""
    x, y = load_dataset(dataset, "train", root=root, download=download)
    x, y = select_classes(x, y, classes)
    if train_subset:
        idx = stratified_subset(y, int(train_subset), seed=seed)
        x, y = x[idx], y[idx]
    if val_size:
        tr, va = train_val_split(y, val_size, seed=seed + 1)
        train_x, train_y, val_x, val_y = x[tr], y[tr], x[va], y[va]
    else:
        train_x, train_y, val_x, val_y = x, y, x[:0], y[:0]
    return RunData(train_x, train_y, val_x, val_y, num_classes_of(dataset, classes))


def test_split(dataset: str, n: int | None = None, *, classes: Sequence[int] | None = None,
               root: str | os.PathLike | None = None, download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n test images (all when n is None) and labels, of `classes` only if given."""
    x, y = load_dataset(dataset, "test", root=root, download=download)
    x, y = select_classes(x, y, classes)
    if n is not None:
        x, y = x[:n], y[:n]
    return x, y
