"""Shared fixtures: seeded torch, the real CIFAR-10 from $ROBUSTACT_DATA, small trained networks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared CPU: one thread each is faster than two fighting for the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def data_root() -> Path | None:
    root = os.environ.get("ROBUSTACT_DATA")
    if root and (Path(root) / "cifar-10-batches-py" / "test_batch").is_file():
        return Path(root)
    return None


requires_cifar = pytest.mark.skipif(data_root() is None,
                                    reason="set ROBUSTACT_DATA to a folder with cifar-10-batches-py")


@pytest.fixture(scope="session")
def cifar_test():
    """CIFAR-10 test split as float images in [0, 1] and labels (skips without the data)."""
    if data_root() is None:
        pytest.skip("set ROBUSTACT_DATA to a folder with cifar-10-batches-py")
    from robustact.data import load_dataset

    x, y = load_dataset("cifar10", "test")
    return x.float() / 255, y


def autoattack_checkpoint() -> Path | None:
    try:
        import pyautoattack
    except ImportError:
        return None
    path = Path(pyautoattack.__file__).parent / "examples" / "model_test.pt"
    return path if path.is_file() else None


@pytest.fixture(scope="session")
def autoattack_resnet18():
    """The ResNet-18 of the official AutoAttack repository (examples/model_test.pt), in eval mode."""
    path = autoattack_checkpoint()
    if path is None:
        pytest.skip("pip install --no-deps pyautoattack for the AutoAttack example checkpoint")
    from robustact import build_model

    model = build_model("resnet18")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def write_tiny_cifar(root: Path, n_train: int = 20, n_test: int = 40, seed: int = 0) -> Path:
    """A CIFAR-10 folder in the official python-batches layout with `n_train` images per training batch:
    runs that train in a second, for tests that train many times (resume, fault injection)."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in [*((f"data_batch_{i}", n_train) for i in range(1, 6)), ("test_batch", n_test)]:
        labels = [int(v) for v in rng.integers(0, 10, n)]
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        (folder / name).write_bytes(pickle.dumps({"data": data, "labels": labels}, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}, protocol=2))
    return root


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory) -> Path:
    return write_tiny_cifar(tmp_path_factory.mktemp("tiny-cifar"))
