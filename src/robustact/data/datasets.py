"""Read CIFAR-10/100 (python batches) and SVHN (.mat) from their standard on-disk layouts.

Everything returns uint8 images (N, 3, H, W) and int64 labels; conversion to float happens on the
device (see loader.py). Any problem with the files becomes one `DataError` line that names the path,
the expected layout and the fix, never a traceback from inside pickle or scipy.
"""

from __future__ import annotations

import codecs
import functools
import importlib
import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robustact.data import download as _download
from robustact.errors import DataError

FIX = "set ROBUSTACT_DATA or --data-dir, or download it (--download, download=True)"
SPLITS = ("train", "test")
ENV_VAR = "ROBUSTACT_DATA"
DEFAULT_ROOT = "~/.cache/robustact"

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly "
    "camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup "
    "dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower "
    "leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid "
    "otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road "
    "rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower "
    "sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale "
    "willow_tree wolf woman worm"
).split()
SVHN_CLASSES = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset, available without its files (for `robustact info`, model building)."""

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    num_train: int
    num_test: int
    layout: str


_INFO: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        "cifar10", 10, (3, 32, 32), CIFAR10_CLASSES, 50000, 10000,
        "expected <root>/cifar-10-batches-py/data_batch_1..5 and test_batch (the CIFAR-10 python version)",
    ),
    "cifar100": DatasetInfo(
        "cifar100", 100, (3, 32, 32), tuple(CIFAR100_CLASSES), 50000, 10000,
        "expected <root>/cifar-100-python/train and test (the CIFAR-100 python version)",
    ),
    "svhn": DatasetInfo(
        "svhn", 10, (3, 32, 32), SVHN_CLASSES, 73257, 26032,
        "expected <root>/svhn/train_32x32.mat and test_32x32.mat (SVHN cropped digits, format 2)",
    ),
}
_ALIASES = {"cifar-10": "cifar10", "cifar_10": "cifar10", "cifar-100": "cifar100", "cifar_100": "cifar100"}


def known_datasets() -> tuple[str, ...]:
    return tuple(_INFO)


def _canonical(name: str) -> str:
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _INFO:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(_INFO)}")
    return key


def dataset_info(name: str) -> DatasetInfo:
    return _INFO[_canonical(name)]


def resolve_data_root(root: str | os.PathLike | None = None) -> Path:
    """Explicit `root` > $ROBUSTACT_DATA > ~/.cache/robustact (read at call time, so tests can set it)."""
    if root is None or str(root) == "":
        root = os.environ.get(ENV_VAR) or DEFAULT_ROOT
    return Path(root).expanduser()


# ---------------------------------------------------------------- restricted unpickling


def _first_attr(modules: tuple[str, ...], attr: str) -> object:
    for mod in modules:
        try:
            return getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {modules} has {attr}")  # pragma: no cover - numpy layout changed


def _allowed_globals() -> dict[tuple[str, str], object]:
    """Only what a numpy array in a dict needs: no callable here can run code or touch files."""
    multiarray = ("numpy._core.multiarray", "numpy.core.multiarray")
    numeric = ("numpy._core.numeric", "numpy.core.numeric")
    found = {
        "_reconstruct": _first_attr(multiarray, "_reconstruct"),
        "scalar": _first_attr(multiarray, "scalar"),
        "_frombuffer": _first_attr(numeric, "_frombuffer"),
    }
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how python 3 writes bytes in protocol-2 pickles
    }
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        allowed[(mod, "_reconstruct")] = found["_reconstruct"]
        allowed[(mod, "scalar")] = found["scalar"]
    for mod in ("numpy._core.numeric", "numpy.core.numeric"):
        allowed[(mod, "_frombuffer")] = found["_frombuffer"]
    return allowed


class _ForbiddenGlobal(pickle.UnpicklingError):
    pass


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for the official CIFAR batches: resolves only numpy array reconstruction globals.

    A pickle that names anything else (os.system, builtins.eval, ...) is refused before it can run.
    """

    _allowed: dict[tuple[str, str], object] | None = None

    def find_class(self, module: str, name: str) -> object:
        if RestrictedUnpickler._allowed is None:
            RestrictedUnpickler._allowed = _allowed_globals()
        try:
            return RestrictedUnpickler._allowed[(module, name)]
        except KeyError:
            raise _ForbiddenGlobal(f"{module}.{name}") from None


def restricted_load(data: bytes) -> object:
    """Unpickle with only numpy globals allowed; latin1 reads the (python-2) official pickles."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


# ---------------------------------------------------------------- file readers


def _fail(path: Path, problem: str, layout: str, fix: str = FIX) -> DataError:
    return DataError(f"{problem}: {path}; {layout}; fix: {fix}")


def _corrupt(path: Path, detail: str, layout: str) -> DataError:
    return _fail(
        path,
        f"unreadable dataset file ({detail})",
        layout,
        "delete it and pass download=True, or set ROBUSTACT_DATA or --data-dir to an intact copy",
    )


def _read_cifar_batch(
    path: Path, label_key: str, num_classes: int, layout: str
) -> tuple[np.ndarray, np.ndarray]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise _fail(path, f"cannot read file ({exc.strerror})", layout) from None
    try:
        obj = restricted_load(raw)
    except _ForbiddenGlobal as exc:
        raise _corrupt(path, f"refusing to unpickle: it references {exc}, which a dataset batch never does",
                       layout) from None
    except Exception as exc:  # pickle raises many types on truncated/corrupt input
        raise _corrupt(path, f"{type(exc).__name__}: {str(exc)[:80]}", layout) from None
    if not isinstance(obj, dict):
        raise _corrupt(path, f"expected a pickled dict, got {type(obj).__name__}", layout)
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    if "data" not in batch or label_key not in batch:
        keys = ", ".join(sorted(map(str, batch)))
        raise _corrupt(path, f"expected keys 'data' and '{label_key}', found {keys}", layout)
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise _corrupt(path, f"'data' must be a uint8 array of shape (N, 3072), got {shape}", layout)
    try:
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (TypeError, ValueError):
        raise _corrupt(path, f"'{label_key}' is not a list of integers", layout) from None
    if labels.shape != (data.shape[0],):
        raise _corrupt(path, f"{data.shape[0]} images but {labels.shape} labels", layout)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise _corrupt(path, f"labels outside 0..{num_classes - 1}", layout)
    return data.reshape(-1, 3, 32, 32), labels


def _read_svhn(path: Path, layout: str) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io  # deferred: scipy.io costs an import only SVHN users should pay

    try:
        mat = scipy.io.loadmat(path, variable_names=("X", "y"))
    except Exception as exc:  # scipy raises ValueError/TypeError/MatReadError on truncated files
        raise _corrupt(path, f"{type(exc).__name__}: {str(exc)[:80]}", layout) from None
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None:
        raise _corrupt(path, "expected variables 'X' and 'y'", layout)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[2] != 3:
        raise _corrupt(path, f"'X' must be uint8 of shape (H, W, 3, N), got {x.dtype} {x.shape}", layout)
    labels = np.asarray(y, dtype=np.int64).reshape(-1)
    if labels.shape[0] != x.shape[3]:
        raise _corrupt(path, f"{x.shape[3]} images but {labels.shape[0]} labels", layout)
    labels[labels == 10] = 0  # SVHN stores digit 0 as label 10
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise _corrupt(path, "labels outside 1..10", layout)
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), labels


# ---------------------------------------------------------------- locating files


def _split_files(name: str, split: str, root: Path) -> list[Path]:
    """Where the files of (name, split) should be; the first candidate location that exists wins."""
    if name in ("cifar10", "cifar100"):
        sub = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
        base = root if root.name == sub and not (root / sub).is_dir() else root / sub
        if name == "cifar10":
            names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        else:
            names = [split]
        return [base / n for n in names]
    fname = f"{split}_32x32.mat"
    preferred = root / "svhn" / fname
    if not preferred.is_file() and (root / fname).is_file():
        return [root / fname]
    return [preferred]


def _check_split(split: str) -> str:
    if split not in SPLITS:
        known = ", ".join(SPLITS)
        raise DataError(f"unknown split {split!r}; known: {known} (use train_val_split for a val set)")
    return split


def _missing(files: list[Path]) -> list[Path]:
    return [f for f in files if not f.is_file()]


@functools.lru_cache(maxsize=6)
def _load_arrays(name: str, split: str, root: str) -> tuple[np.ndarray, np.ndarray]:
    """Read once per process; arrays are made read-only so a cached copy cannot be corrupted."""
    info = _INFO[name]
    files = _split_files(name, split, Path(root))
    if name == "svhn":
        images, labels = _read_svhn(files[0], info.layout)
    else:
        label_key = "labels" if name == "cifar10" else "fine_labels"
        parts = [_read_cifar_batch(f, label_key, info.num_classes, info.layout) for f in files]
        images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    images, labels = np.ascontiguousarray(images), np.ascontiguousarray(labels)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def clear_cache() -> None:
    _load_arrays.cache_clear()


def load_dataset(
    name: str, split: str, root: str | os.PathLike | None = None, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 (N, 3, H, W) and labels int64 (N,) of one split; the tensors are the caller's own copy."""
    name, split = _canonical(name), _check_split(split)
    info = _INFO[name]
    base = resolve_data_root(root)
    missing = _missing(_split_files(name, split, base))
    if missing and download:
        _download.download_dataset(name, base, split=split)
        missing = _missing(_split_files(name, split, base))
    if missing:
        first = missing[0]
        what = "missing directory" if not first.parent.is_dir() else "missing file"
        path = first.parent if what == "missing directory" else first
        raise _fail(path, f"{name} {split} split not found ({what})", info.layout)
    images, labels = _load_arrays(name, split, str(base.absolute()))
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.copy())


def available_datasets(root: str | os.PathLike | None = None) -> list[str]:
    """Datasets whose train and test files are all present under the root (no file is read)."""
    base = resolve_data_root(root)
    return [n for n in _INFO if not any(_missing(_split_files(n, s, base)) for s in SPLITS)]


# ---------------------------------------------------------------- subsets


def _as_cpu_labels(labels: torch.Tensor | np.ndarray | list[int]) -> torch.Tensor:
    return torch.as_tensor(labels).detach().to("cpu", torch.int64).reshape(-1)


def first_n(images: torch.Tensor, labels: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n examples: RobustBench/AutoAttack evaluate on the first N test points, in file order."""
    total = len(labels)
    if not 0 < n <= total:
        raise DataError(f"asked for the first {n} examples but the split has {total}; use 1..{total}")
    return images[:n], labels[:n]


def _balanced_quota(counts: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """Split n over classes as evenly as their sizes allow; leftover units go to classes picked by `gen`."""
    quota = torch.zeros_like(counts)
    remaining = n
    while remaining > 0:
        open_ = (quota < counts).nonzero().flatten()
        share = remaining // len(open_)
        if share == 0:
            lucky = open_[torch.randperm(len(open_), generator=gen)[:remaining]]
            quota[lucky] += 1
            break
        add = torch.clamp(counts[open_] - quota[open_], max=share)
        quota[open_] += add
        remaining -= int(add.sum())
    return quota


def stratified_subset(labels: torch.Tensor | np.ndarray | list[int], n: int, seed: int = 0) -> torch.Tensor:
    """Sorted indices of n examples, as equal per class as class sizes allow; same seed, same set."""
    y = _as_cpu_labels(labels)
    if not 0 <= n <= len(y):
        raise DataError(f"cannot draw {n} examples from {len(y)}; use 0..{len(y)}")
    gen = torch.Generator().manual_seed(int(seed))
    classes, counts = torch.unique(y, return_counts=True)
    quota = _balanced_quota(counts, n, gen)
    picks = []
    for c, q in zip(classes.tolist(), quota.tolist()):
        members = (y == c).nonzero().flatten()
        picks.append(members[torch.randperm(len(members), generator=gen)[:q]])
    return torch.cat(picks).sort().values if picks else torch.zeros(0, dtype=torch.int64)


def train_val_split(
    labels_or_n: torch.Tensor | np.ndarray | list[int] | int, val_size: int | float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint sorted (train_idx, val_idx); stratified when labels are given, a plain shuffle for an int.

    `val_size` is a count, or a fraction when it is a float in (0, 1).
    """
    stratify = not isinstance(labels_or_n, int)
    total = len(_as_cpu_labels(labels_or_n)) if stratify else int(labels_or_n)
    k = round(val_size * total) if isinstance(val_size, float) and 0 < val_size < 1 else int(val_size)
    if not 0 < k < total:
        raise DataError(f"val_size={val_size} gives {k} of {total} examples; both parts must be non-empty")
    if stratify:
        val = stratified_subset(labels_or_n, k, seed)
    else:
        gen = torch.Generator().manual_seed(int(seed))
        val = torch.randperm(total, generator=gen)[:k].sort().values
    keep = torch.ones(total, dtype=torch.bool)
    keep[val] = False
    return keep.nonzero().flatten(), val


def remap_labels(labels: torch.Tensor, classes: list[int] | tuple[int, ...]) -> torch.Tensor:
    """Map classes[i] -> i (e.g. train on half the classes with a smaller head); other labels are an error."""
    classes = [int(c) for c in classes]
    if len(set(classes)) != len(classes) or not classes or min(classes) < 0:
        raise DataError(f"classes must be distinct non-negative ints, got {classes}")
    labels = torch.as_tensor(labels).long()
    if labels.numel() == 0:
        return labels.clone()
    if int(labels.min()) < 0:
        raise DataError("labels must be non-negative class indices")
    size = max(max(classes), int(labels.max())) + 1
    lookup = torch.full((size,), -1, dtype=torch.int64, device=labels.device)
    lookup[torch.tensor(classes, device=labels.device)] = torch.arange(len(classes), device=labels.device)
    out = lookup[labels]
    if bool((out < 0).any()):
        raise DataError(f"labels contain classes outside {classes}; select them first with class_subset")
    return out


def class_subset(
    labels: torch.Tensor | np.ndarray | list[int], classes: list[int] | tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices of examples whose label is in `classes`, their labels remapped to 0..len(classes)-1)."""
    y = _as_cpu_labels(labels)
    cls = torch.tensor([int(c) for c in classes], dtype=torch.int64)
    idx = torch.isin(y, cls).nonzero().flatten()
    return idx, remap_labels(y[idx], classes)
