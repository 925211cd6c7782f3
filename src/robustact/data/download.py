"""Fetch the official dataset files, verify their md5, and move them into place atomically.

Only files this module downloads are checksummed: copies already on disk may be re-encoded (see the
shared data README) and must not be refused. The fetch function is a parameter so tests can serve a
local archive without a network.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from robustact.errors import DataError

log = logging.getLogger(__name__)

Fetch = Callable[[str, Path], None]


@dataclass(frozen=True)
class Resource:
    """One downloadable file. `target` is relative to the data root: a directory the archive unpacks to
    (`archive=True`) or the file itself. `required` lists the files under `target` that must exist."""

    url: str
    md5: str
    target: str
    archive: bool = False
    required: tuple[str, ...] = ()
    splits: tuple[str, ...] = ("train", "test")

    def missing(self, root: Path) -> list[Path]:
        base = root / self.target
        paths = [base / name for name in self.required] if self.archive else [base]
        return [p for p in paths if not p.is_file()]


_CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")

RESOURCES: dict[str, tuple[Resource, ...]] = {
    "cifar10": (
        Resource(
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a",
            "cifar-10-batches-py",
            archive=True,
            required=_CIFAR10_FILES,
        ),
    ),
    "cifar100": (
        Resource(
            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
            "eb9058c3a382ffc7106e4002c42a8d85",
            "cifar-100-python",
            archive=True,
            required=("train", "test", "meta"),
        ),
    ),
    "svhn": (
        Resource(
            "http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
            "e26dedcc434d2e4c54c9b2d4a06d8373",
            "svhn/train_32x32.mat",
            splits=("train",),
        ),
        Resource(
            "http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
            "eb5a983be6a315427106f1b164d9cef3",
            "svhn/test_32x32.mat",
            splits=("test",),
        ),
    ),
}


def fetch_url(url: str, dest: Path, timeout: float = 60.0, chunk: int = 1 << 20) -> None:
    """Stream `url` (http(s) or file://) into `dest`."""
    log.info("downloading %s", url)
    with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as out:
        shutil.copyfileobj(resp, out, chunk)


def md5sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Reject members that could write outside the extraction directory, whatever tarfile's filter does."""
    name = PurePosixPath(member.name)
    bad = (
        name.is_absolute()
        or ".." in name.parts
        or member.name.startswith(("/", "\\"))
        or member.issym()
        or member.islnk()
        or member.isdev()
    )
    if bad:
        raise DataError(
            f"refusing to extract {archive}: unsafe archive member {member.name!r} "
            "(absolute path, '..', link or device); fix: delete the file and download it again"
        )


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar archive into `dest`, refusing absolute paths, `..`, links and devices."""
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for m in members:
                _check_member(m, archive)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - Python without PEP 706 backport
                tar.extractall(dest, members=members)
    except DataError:
        raise
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(
            f"cannot extract {archive}: {type(exc).__name__}: {exc}; fix: delete it and download it again"
        ) from None


def _fetch_verified(res: Resource, root: Path, fetch: Fetch) -> Path:
    """Download to a temp file inside `root` and check the md5; the temp file is removed on failure."""
    fd, tmp_name = tempfile.mkstemp(dir=root, prefix=".download-", suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            fetch(res.url, tmp)
        except OSError as exc:
            raise DataError(
                f"download of {res.url} failed: {exc}; fix: check the network, or fetch the file yourself "
                f"into {root / res.target} and set ROBUSTACT_DATA or --data-dir"
            ) from None
        got = md5sum(tmp)
        if got != res.md5:
            raise DataError(
                f"checksum mismatch for {res.url}: md5 {got}, expected {res.md5}; the download is corrupt "
                "or the server changed the file; fix: retry download=True, or place the official file "
                f"at {root / res.target} yourself"
            )
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _install_archive(res: Resource, tmp: Path, root: Path) -> None:
    """Extract into a temp directory in `root`, then move the target dir (or its missing files) into place."""
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".extract-"))
    try:
        safe_extract(tmp, staging)
        src = staging / res.target
        if not all((src / name).is_file() for name in res.required):
            raise DataError(
                f"archive from {res.url} does not contain {res.target}/{{{','.join(res.required)}}}; "
                "fix: delete it and download it again"
            )
        dest = root / res.target
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
        else:  # a partial copy: keep what is there, move in only what is missing
            for name in res.required:
                if not (dest / name).is_file():
                    os.replace(src / name, dest / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download_dataset(
    name: str, root: str | os.PathLike, split: str | None = None, fetch: Fetch | None = None
) -> list[Path]:
    """Fetch the missing files of dataset `name` (optionally only those for `split`) into `root`.

    Returns the targets that were installed; files already present are never re-fetched or checked.
    """
    if name not in RESOURCES:
        raise DataError(f"no download source for dataset {name!r}; known: {', '.join(sorted(RESOURCES))}")
    fetch = fetch or fetch_url
    root = Path(root).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create data directory {root}: {exc}; fix: set ROBUSTACT_DATA or --data-dir"
        ) from None
    installed = []
    for res in RESOURCES[name]:
        if (split is not None and split not in res.splits) or not res.missing(root):
            continue
        tmp = _fetch_verified(res, root, fetch)
        try:
            if res.archive:
                _install_archive(res, tmp, root)
            else:
                dest = root / res.target
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        installed.append(root / res.target)
    return installed
