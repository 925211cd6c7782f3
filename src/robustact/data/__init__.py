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

__all__ = [
    "RESOURCES",
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
    "remap_labels",
    "resolve_data_root",
    "safe_extract",
    "shift_crop_flip",
    "stratified_subset",
    "train_val_split",
]
