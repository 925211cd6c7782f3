"""robustact.data: on-disk formats, errors, safe unpickling, download, subsets and the device loader."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torch.nn.functional as F

from robustact.data import (
    DeviceLoader,
    available_datasets,
    class_subset,
    dataset_info,
    first_n,
    load_dataset,
    remap_labels,
    resolve_data_root,
    stratified_subset,
    train_val_split,
)
from robustact.data import download as dl
from robustact.errors import DataError

CIFAR10_LAYOUT = "expected <root>/cifar-10-batches-py/data_batch_1..5 and test_batch"
CIFAR100_LAYOUT = "expected <root>/cifar-100-python/train and test"
SVHN_LAYOUT = "expected <root>/svhn/train_32x32.mat and test_32x32.mat"


# ---------------------------------------------------------------- helpers


def _batch_bytes(n: int, label_key: str = "labels", num_classes: int = 10, seed: int = 0,
                 bytes_keys: bool = True, protocol: int = 2) -> bytes:
    rng = np.random.default_rng(seed)
    batch = {
        "batch_label": "fake",
        label_key: [int(v) for v in rng.integers(0, num_classes, n)],
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
    }
    if bytes_keys:
        batch = {k.encode(): v for k, v in batch.items()}
    return pickle.dumps(batch, protocol=protocol)


def _fake_cifar10(root: Path, n: int = 8) -> Path:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch", "batches.meta"]):
        (base / name).write_bytes(_batch_bytes(n, seed=i))
    return base


def _single_line_data_error(excinfo: pytest.ExceptionInfo) -> str:
    exc = excinfo.value
    msg = str(exc)
    assert "\n" not in msg
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)
    return msg


@pytest.fixture(scope="module")
def real_root() -> Path:
    env = os.environ.get("ROBUSTACT_DATA")
    if not env:
        pytest.skip("ROBUSTACT_DATA is unset; real CIFAR-10 tests need it (ROBUSTACT_DATA=../shared/data)")
    root = Path(env)
    if not (root / "cifar-10-batches-py" / "test_batch").is_file():
        pytest.skip(f"no CIFAR-10 python batches under ROBUSTACT_DATA={env}")
    return root


# ---------------------------------------------------------------- real CIFAR-10


def test_real_cifar10_shapes_labels_balance(real_root: Path) -> None:
    x_tr, y_tr = load_dataset("cifar10", "train", root=real_root)
    x_te, y_te = load_dataset("cifar10", "test")  # via $ROBUSTACT_DATA
    assert x_tr.shape == (50000, 3, 32, 32) and x_te.shape == (10000, 3, 32, 32)
    assert x_tr.dtype == x_te.dtype == torch.uint8
    assert y_tr.dtype == y_te.dtype == torch.int64
    assert int(y_tr.min()) == 0 and int(y_tr.max()) == 9
    assert torch.bincount(y_te, minlength=10).tolist() == [1000] * 10
    assert "cifar10" in available_datasets(real_root)


def test_real_cifar10_matches_independent_read(real_root: Path) -> None:
    """Parse the pixel block straight out of the pickle bytes (BINSTRING opcode) — no pickle, no library."""
    raw = (real_root / "cifar-10-batches-py" / "test_batch").read_bytes()
    marker = b"T" + struct.pack("<i", 10000 * 3072)
    start = raw.find(marker) + len(marker)
    ref = np.frombuffer(raw, np.uint8, count=10 * 3072, offset=start).reshape(10, 3, 32, 32)
    x, y = load_dataset("cifar10", "test", root=real_root)
    assert int(ref.sum(dtype=np.int64)) == 3755088  # test images 0..9 are bit-exact original CIFAR-10
    assert torch.equal(x[:10], torch.from_numpy(ref.copy()))
    assert y[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]  # cat, ship, ship, airplane, frog, ...
    assert dataset_info("cifar10").class_names[int(y[0])] == "cat"


# ---------------------------------------------------------------- fake files in the official layouts


def test_loaded_tensors_are_private_copies(tmp_path: Path) -> None:
    _fake_cifar10(tmp_path)
    x, y = load_dataset("cifar10", "train", root=tmp_path)
    assert x.shape == (40, 3, 32, 32)
    x.zero_()
    y.fill_(-1)
    x2, y2 = load_dataset("cifar10", "train", root=tmp_path)
    assert x2.sum() > 0 and int(y2.min()) >= 0


@pytest.mark.parametrize("bytes_keys,protocol", [(True, 2), (False, 2), (False, 4), (False, 5)])
def test_cifar_pickle_variants(tmp_path: Path, bytes_keys: bool, protocol: int) -> None:
    base = _fake_cifar10(tmp_path)
    (base / "test_batch").write_bytes(_batch_bytes(5, seed=7, bytes_keys=bytes_keys, protocol=protocol))
    x, y = load_dataset("cifar10", "test", root=tmp_path)
    ref = np.random.default_rng(7)
    labels = ref.integers(0, 10, 5)
    assert y.tolist() == labels.tolist()
    assert torch.equal(x.reshape(5, -1), torch.from_numpy(ref.integers(0, 256, (5, 3072), dtype=np.uint8)))


def test_numpy1_global_names_accepted(tmp_path: Path) -> None:
    """The official files name numpy.core.multiarray._reconstruct (numpy 1.x); numpy 2 writes numpy._core."""
    base = _fake_cifar10(tmp_path)
    payload = _batch_bytes(4, seed=3).replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"cnumpy.core.multiarray\n_reconstruct" in payload
    (base / "test_batch").write_bytes(payload)
    x, _ = load_dataset("cifar10", "test", root=tmp_path)
    assert x.shape == (4, 3, 32, 32)


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    for split, n in (("train", 12), ("test", 6)):
        (base / split).write_bytes(_batch_bytes(n, label_key="fine_labels", num_classes=100, seed=n))
    x, y = load_dataset("cifar-100", "test", root=tmp_path)
    assert x.shape == (6, 3, 32, 32) and y.tolist() == np.random.default_rng(6).integers(0, 100, 6).tolist()
    assert available_datasets(tmp_path) == ["cifar100"]
    info = dataset_info("cifar100")
    assert info.num_classes == len(info.class_names) == 100


@pytest.mark.parametrize("in_subdir", [True, False])
def test_svhn_orientation_and_zero_label(tmp_path: Path, in_subdir: bool) -> None:
    rng = np.random.default_rng(0)
    n = 5
    x_mat = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y_mat = np.array([[10], [1], [9], [10], [5]], dtype=np.uint8)
    where = tmp_path / "svhn" if in_subdir else tmp_path
    where.mkdir(exist_ok=True)
    scipy.io.savemat(where / "test_32x32.mat", {"X": x_mat, "y": y_mat})
    x, y = load_dataset("svhn", "test", root=tmp_path)
    assert x.shape == (n, 3, 32, 32) and x.dtype == torch.uint8
    assert y.tolist() == [0, 1, 9, 0, 5]
    for idx in [(0, 0, 0, 0), (1, 2, 5, 30), (4, 1, 31, 3), (3, 0, 17, 9)]:
        b, c, h, w = idx
        assert int(x[b, c, h, w]) == int(x_mat[h, w, c, b])


# ---------------------------------------------------------------- errors


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


@pytest.mark.parametrize("case", ["missing_dir", "missing_file", "truncated", "wrong_keys", "wrong_shape"])
def test_cifar_errors_are_one_line_with_layout(tmp_path: Path, case: str) -> None:
    if case != "missing_dir":
        base = _fake_cifar10(tmp_path)
    target = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    if case == "missing_file":
        target.unlink()
    elif case == "truncated":
        _truncate(target)
    elif case == "wrong_keys":
        target.write_bytes(pickle.dumps({"images": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}))
    elif case == "wrong_shape":
        target.write_bytes(pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}))
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar10", "train", root=tmp_path)
    msg = _single_line_data_error(excinfo)
    assert CIFAR10_LAYOUT in msg
    expected_path = tmp_path / "cifar-10-batches-py" if case == "missing_dir" else target
    assert str(expected_path) in msg
    assert "ROBUSTACT_DATA" in msg and "download=True" in msg
    if case != "missing_dir":
        assert base.is_dir()


def test_svhn_truncated_mat(tmp_path: Path) -> None:
    (tmp_path / "svhn").mkdir()
    path = tmp_path / "svhn" / "train_32x32.mat"
    scipy.io.savemat(path, {"X": np.zeros((32, 32, 3, 4), np.uint8), "y": np.ones((4, 1), np.uint8)})
    _truncate(path)
    with pytest.raises(DataError) as excinfo:
        load_dataset("svhn", "train", root=tmp_path)
    msg = _single_line_data_error(excinfo)
    assert SVHN_LAYOUT in msg and str(path) in msg


def test_unknown_dataset_and_split() -> None:
    with pytest.raises(DataError) as excinfo:
        load_dataset("imagenet", "train")
    msg = _single_line_data_error(excinfo)
    assert all(n in msg for n in ("cifar10", "cifar100", "svhn"))
    with pytest.raises(DataError, match="known: train, test"):
        load_dataset("cifar10", "val")


class _Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


@pytest.mark.parametrize("func", [os.system, eval])
def test_malicious_pickle_rejected(tmp_path: Path, func) -> None:
    base = _fake_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    arg = f"touch {marker}" if func is os.system else f"open({str(marker)!r}, 'w')"
    (base / "test_batch").write_bytes(pickle.dumps({"data": _Evil(func, arg), "labels": [0]}, protocol=2))
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar10", "test", root=tmp_path)
    msg = _single_line_data_error(excinfo)
    assert "refusing to unpickle" in msg and CIFAR10_LAYOUT in msg
    assert not marker.exists()


# ---------------------------------------------------------------- roots and info


def test_resolve_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBUSTACT_DATA", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve_data_root() == tmp_path / "env"
    monkeypatch.delenv("ROBUSTACT_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_root() == tmp_path / "home" / ".cache" / "robustact"


def test_dataset_info_and_availability(tmp_path: Path) -> None:
    info = dataset_info("CIFAR10")
    assert info.num_classes == 10 and info.image_shape == (3, 32, 32)
    assert info.class_names == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                "ship", "truck")
    assert dataset_info("svhn").class_names[0] == "0"
    assert available_datasets(tmp_path) == []
    _fake_cifar10(tmp_path)
    assert available_datasets(tmp_path) == ["cifar10"]


# ---------------------------------------------------------------- download


def _make_tar(path: Path, members: dict[str, bytes]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.md5(path.read_bytes()).hexdigest()


def _cifar10_resource(tmp_path: Path, md5: str | None = None) -> tuple[dl.Resource, str]:
    members = {f"cifar-10-batches-py/{n}": _batch_bytes(4, seed=i) for i, n in enumerate(dl._CIFAR10_FILES)}
    archive = tmp_path / "src" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    real_md5 = _make_tar(archive, members)
    old = dl.RESOURCES["cifar10"][0]
    res = dl.Resource(archive.as_uri(), md5 or real_md5, old.target, archive=True, required=old.required)
    return res, real_md5


def _leftovers(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if p.name.startswith(".")]


def test_download_cifar10_from_file_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res, _ = _cifar10_resource(tmp_path)
    monkeypatch.setitem(dl.RESOURCES, "cifar10", (res,))
    root = tmp_path / "data"
    with pytest.raises(DataError):
        load_dataset("cifar10", "test", root=root)  # download is opt-in
    x, y = load_dataset("cifar10", "train", root=root, download=True)
    assert x.shape == (20, 3, 32, 32) and _leftovers(root) == []
    calls = []
    assert dl.download_dataset("cifar10", root, fetch=lambda url, dest: calls.append(url)) == []
    assert calls == []  # present files are never re-fetched


def test_download_fills_partial_copy_without_touching_existing(tmp_path: Path, monkeypatch) -> None:
    res, _ = _cifar10_resource(tmp_path)
    monkeypatch.setitem(dl.RESOURCES, "cifar10", (res,))
    root = tmp_path / "data"
    base = _fake_cifar10(root, n=3)
    (base / "test_batch").unlink()
    before = (base / "data_batch_1").read_bytes()
    x, _ = load_dataset("cifar10", "test", root=root, download=True)
    assert x.shape == (4, 3, 32, 32)
    assert (base / "data_batch_1").read_bytes() == before and _leftovers(root) == []


def test_download_checksum_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res, real_md5 = _cifar10_resource(tmp_path, md5="0" * 32)
    monkeypatch.setitem(dl.RESOURCES, "cifar10", (res,))
    root = tmp_path / "data"
    fetched = []

    def fetch(url: str, dest: Path) -> None:  # the injectable fetch: copy the local archive
        fetched.append(url)
        dest.write_bytes(Path(url.removeprefix("file://")).read_bytes())

    with pytest.raises(DataError) as excinfo:
        dl.download_dataset("cifar10", root, fetch=fetch)
    msg = _single_line_data_error(excinfo)
    assert "checksum mismatch" in msg and real_md5 in msg and "0" * 32 in msg
    assert fetched == [res.url] and list(root.iterdir()) == []


def test_download_rejects_unsafe_tar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "evil.tar.gz"
    md5 = _make_tar(archive, {"cifar-10-batches-py/data_batch_1": b"x", "../escaped": b"x"})
    old = dl.RESOURCES["cifar10"][0]
    res = dl.Resource(archive.as_uri(), md5, old.target, archive=True, required=old.required)
    monkeypatch.setitem(dl.RESOURCES, "cifar10", (res,))
    root = tmp_path / "data"
    with pytest.raises(DataError, match="unsafe archive member"):
        load_dataset("cifar10", "train", root=root, download=True)
    assert not (tmp_path / "escaped").exists() and list(root.iterdir()) == []


def test_download_svhn_single_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "test_32x32.mat"
    scipy.io.savemat(src, {"X": np.full((32, 32, 3, 2), 7, np.uint8), "y": np.array([[10], [3]], np.uint8)})
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    train_res, test_res = dl.RESOURCES["svhn"]
    fake_test = dl.Resource(src.as_uri(), md5, test_res.target, splits=("test",))
    fake_train = dl.Resource("file:///nonexistent/train.mat", "0" * 32, train_res.target, splits=("train",))
    monkeypatch.setitem(dl.RESOURCES, "svhn", (fake_train, fake_test))
    root = tmp_path / "data"
    x, y = load_dataset("svhn", "test", root=root, download=True)  # must not touch the train resource
    assert y.tolist() == [0, 3] and int(x.max()) == 7
    assert (root / "svhn" / "test_32x32.mat").is_file() and not (root / "svhn" / "train_32x32.mat").exists()


# ---------------------------------------------------------------- subsets


def test_first_n() -> None:
    x, y = torch.arange(10).reshape(10, 1), torch.arange(10)
    xs, ys = first_n(x, y, 3)
    assert ys.tolist() == [0, 1, 2] and xs.shape == (3, 1)
    with pytest.raises(DataError):
        first_n(x, y, 11)


def test_stratified_subset_balance_and_determinism() -> None:
    labels = torch.arange(10).repeat_interleave(50)
    idx = stratified_subset(labels, 100, seed=1)
    assert torch.bincount(labels[idx], minlength=10).tolist() == [10] * 10
    assert torch.equal(idx, stratified_subset(labels, 100, seed=1))
    assert not torch.equal(idx, stratified_subset(labels, 100, seed=2))
    assert torch.equal(idx, idx.unique())  # sorted, no duplicates
    counts = torch.bincount(labels[stratified_subset(labels, 103, seed=0)], minlength=10)
    assert counts.max() - counts.min() == 1 and counts.sum() == 103
    skewed = torch.tensor([0] * 3 + [1] * 40 + [2] * 40)  # class 0 too small: the rest is shared out
    assert torch.bincount(skewed[stratified_subset(skewed, 33, seed=0)]).tolist() == [3, 15, 15]


def test_train_val_split() -> None:
    labels = torch.arange(5).repeat(40)
    tr, va = train_val_split(labels, 50, seed=0)
    assert len(tr) + len(va) == 200 and not set(tr.tolist()) & set(va.tolist())
    assert torch.bincount(labels[va]).tolist() == [10] * 5
    tr2, va2 = train_val_split(labels, 50, seed=0)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    tr3, va3 = train_val_split(1000, 0.1, seed=3)
    assert len(va3) == 100 and torch.equal(torch.cat([tr3, va3]).sort().values, torch.arange(1000))
    with pytest.raises(DataError):
        train_val_split(labels, 200, seed=0)


def test_class_subset_and_remap() -> None:
    labels = torch.tensor([0, 5, 3, 5, 9, 3, 1])
    idx, y = class_subset(labels, [5, 3])
    assert idx.tolist() == [1, 2, 3, 5] and y.tolist() == [0, 1, 0, 1]
    assert remap_labels(torch.tensor([9, 1]), [1, 9]).tolist() == [1, 0]
    with pytest.raises(DataError):
        remap_labels(labels, [5, 3])


# ---------------------------------------------------------------- DeviceLoader


def _toy(n: int = 40, size: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(1, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8)  # no 0: pads show
    return images, torch.arange(n)  # label = index, so every batch says where its images came from


def _collect(loader: DeviceLoader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*list(loader))
    return torch.cat(xs), torch.cat(ys)


def test_loader_deterministic_per_seed_and_epoch() -> None:
    images, labels = _toy()
    a = DeviceLoader(images, labels, 16, "cpu", seed=3)
    b = DeviceLoader(images, labels, 16, "cpu", seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    xa, ya = _collect(a)
    xb, yb = _collect(b)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert a.epoch == 3  # a full pass advances the epoch
    xa2, ya2 = _collect(a)
    assert not torch.equal(ya, ya2) and not torch.equal(xa, xa2)
    c = DeviceLoader(images, labels, 16, "cpu", seed=4)
    c.set_epoch(2)
    assert not torch.equal(_collect(c)[1], ya)


def test_loader_crop_is_shift_of_zero_padded_image() -> None:
    images, labels = _toy(n=48)
    pad = 2
    loader = DeviceLoader(images, labels, 16, "cpu", pad=pad, seed=0)
    x, y = _collect(loader)
    assert x.dtype == torch.float32 and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.equal(x * 255, (x * 255).round())
    padded = F.pad(images, (pad, pad, pad, pad)).float() / 255
    h = w = images.shape[-1]
    shifted = flipped = 0
    for out, src in zip(x, y.tolist()):
        windows = []
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                win = padded[src, :, dy : dy + h, dx : dx + w]
                for fl, cand in ((False, win), (True, win.flip(-1))):
                    if torch.equal(out, cand):
                        windows.append((dy, dx, fl))
        assert windows, f"batch image from source {src} is no window of the padded image"
        shifted += (windows[0][0], windows[0][1]) != (pad, pad)
        flipped += windows[0][2]
    assert shifted > 10 and 5 < flipped < 43  # both augmentations really happen


def test_loader_eval_in_order_without_augmentation() -> None:
    images, labels = _toy(n=37)
    loader = DeviceLoader(images, labels, 10, "cpu", train=False, seed=5)
    assert len(loader) == 4 and not loader.drop_last and loader.num_examples == 37
    x, y = _collect(loader)
    assert torch.equal(y, labels) and torch.equal(x, images.float() / 255)


@pytest.mark.parametrize("drop_last", [False, True])
def test_loader_covers_each_example_once(drop_last: bool) -> None:
    images, labels = _toy(n=37)
    loader = DeviceLoader(images, labels, 8, "cpu", drop_last=drop_last)
    batches = list(loader)
    assert len(batches) == len(loader) == (4 if drop_last else 5)
    seen = torch.cat([b[1] for b in batches])
    assert len(seen) == len(seen.unique())
    if not drop_last:
        assert torch.equal(seen.sort().values, labels)
    assert all(len(b[1]) == 8 for b in batches[:-1])


def test_loader_dtype_channels_last_and_input_checks() -> None:
    images, labels = _toy(n=8)
    loader = DeviceLoader(images, labels, 4, "cpu", channels_last=True, dtype=torch.bfloat16)
    x, y = next(iter(loader))
    assert x.dtype == torch.bfloat16 and y.dtype == torch.int64
    assert x.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(DataError):
        DeviceLoader(images.float(), labels, 4, "cpu")
    with pytest.raises(DataError):
        DeviceLoader(images, labels[:-1], 4, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_loader_same_batches_on_cpu_and_cuda() -> None:
    images, labels = _toy()
    cpu = _collect(DeviceLoader(images, labels, 16, "cpu", seed=9))
    gpu = _collect(DeviceLoader(images, labels, 16, "cuda", seed=9))
    assert torch.equal(cpu[0], gpu[0].cpu()) and torch.equal(cpu[1], gpu[1].cpu())
