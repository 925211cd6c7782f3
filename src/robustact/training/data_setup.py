"""Turn a run config's `data` section into train / validation tensors (subset, class selection, split)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustact.data import class_subset, dataset_info, load_dataset, stratified_subset, train_val_split


@dataclass
class RunData:
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    num_classes: int


def select_classes(x: torch.Tensor, y: torch.Tensor, classes: list[int] | None):
    """Keep only `classes` (labels remapped to 0..len-1); None keeps all."""
    if not classes:
        return x, y
    idx, y_new = class_subset(y, classes)
    return x[idx], y_new


def num_classes_of(data_cfg: dict) -> int:
    """Classes the run trains on, known before any file is read."""
    classes = data_cfg.get("classes")
    return len(classes) if classes else dataset_info(data_cfg["dataset"]).num_classes


def prepare_training_data(data_cfg: dict, seed: int, root: str | None = None) -> RunData:
    name = data_cfg["dataset"]
    x, y = load_dataset(name, "train", root=root, download=bool(data_cfg.get("download")))
    classes = data_cfg.get("classes")
    x, y = select_classes(x, y, classes)
    if data_cfg.get("train_subset"):
        idx = stratified_subset(y, int(data_cfg["train_subset"]), seed=seed)
        x, y = x[idx], y[idx]
    val_size = data_cfg.get("val_size") or 0
    if val_size:
        tr, va = train_val_split(y, val_size, seed=seed + 1)
        train_x, train_y, val_x, val_y = x[tr], y[tr], x[va], y[va]
    else:
        train_x, train_y, val_x, val_y = x, y, x[:0], y[:0]
    return RunData(train_x, train_y, val_x, val_y, num_classes_of(data_cfg))


def prepare_test_data(data_cfg: dict, n: int | None, root: str | None = None):
    """The first n test images (the RobustBench convention), of the run's classes if it selected some."""
    x, y = load_dataset(data_cfg["dataset"], "test", root=root, download=bool(data_cfg.get("download")))
    x, y = select_classes(x, y, data_cfg.get("classes"))
    if n:
        x, y = x[:n], y[:n]
    return x, y
