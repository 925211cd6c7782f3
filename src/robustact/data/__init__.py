"""Datasets in their standard on-disk formats, checksummed download, and a device-resident loader."""

from robustact.data.datasets import (
    DatasetInfo,
    RestrictedUnpickler,
    available_datasets,
    class_subset,
    clear_cache,
    dataset_info,
    first_n,
    known_datasets,
    load_dataset,
    remap_labels,
    resolve_data_root,
    stratified_subset,
    train_val_split,
)
from robustact.data.download import RESOURCES, Resource, download_dataset, md5sum, safe_extract
from robustact.data.loader import DeviceLoader, epoch_generator, shift_crop_flip
from robustact.data.splits import RunData, num_classes_of, select_classes, test_split, training_split

__all__ = [
    "RESOURCES",
    "RunData",
    "DatasetInfo",
    "DeviceLoader",
    "Resource",
    "RestrictedUnpickler",
    "available_datasets",
    "class_subset",
    "clear_cache",
    "dataset_info",
    "download_dataset",
    "epoch_generator",
    "first_n",
    "known_datasets",
    "load_dataset",
    "md5sum",
    "num_classes_of",
    "remap_labels",
    "resolve_data_root",
    "safe_extract",
    "select_classes",
    "shift_crop_flip",
    "stratified_subset",
    "test_split",
    "train_val_split",
    "training_split",
]
