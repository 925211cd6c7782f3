"""Writing files so that nothing is lost or half-written: atomic files, directories published by rename, and
one writer per run directory or report.

- `atomic_write_bytes/text`: a temp file in the same directory, written, fsynced, renamed over the target; a
  reader sees the old file or the new one, never a partial one. The file gets the mode the umask gives (not
  mkstemp's 0600).
- `publish_dir(parent, name, files)`: a set of files that belong together (a checkpoint) appears as one
  directory or not at all: written into `.NAME.tmp-PID`, then the previous `NAME` is renamed to `NAME.old`, the
  new one renamed into place, and the old one removed. `recover_dir` finishes or undoes an interrupted publish,
  so a reader always finds the newest complete directory.
- `WriterLock(path)`: an advisory lock (flock) held while a run trains or a report is written. A second writer
  is refused in one line naming the holder; the lock of a process that died is released by the system and taken
  over with a message.
- Any OSError (a full disk, a read-only directory, a file where a directory belongs) becomes one
  `RobustactError` line that names the path.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from robustact.errors import RobustactError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _file_mode() -> int:
    return 0o666 & ~_umask()


def write_error(path: str | os.PathLike, exc: OSError) -> RobustactError:
    """The one-line error for a failed write: what, where, and what to do."""
    why = exc.strerror or str(exc)
    room = ("free some space, then continue (`robustact train --resume RUN`, or the same eval command); nothing "
            "complete was lost")
    hint = {errno.ENOSPC: room, errno.EDQUOT: room,
            errno.EROFS: "choose a writable location", errno.EACCES: "choose a location you may write to",
            errno.ENOTDIR: "a file stands where a directory belongs; choose another path",
            errno.EEXIST: "a file stands where a directory belongs; choose another path"}.get(exc.errno, "")
    return RobustactError(f"cannot write {path}: {why}" + (f"; {hint}" if hint else ""))


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn an OSError raised while writing `path` into a one-line RobustactError."""
    try:
        yield
    except OSError as exc:
        raise write_error(path, exc) from None


def make_dirs(path: str | os.PathLike) -> Path:
    path = Path(path)
    with writing(path):
        path.mkdir(parents=True, exist_ok=True)
    return path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename: readers never see a partial file."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, _file_mode())
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line and sync it (a reader that meets a cut-off last line drops it)."""
    with writing(path), open(path, "a") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


def publish_dir(parent: str | os.PathLike, name: str, files: Mapping[str, bytes]) -> Path:
    """Write `files` into `parent/name` as one unit (see the module docstring); returns the directory."""
    parent = Path(parent)
    final, old, tmp = parent / name, parent / f"{name}.old", parent / f".{name}.tmp-{os.getpid()}"
    with writing(final):
        parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            os.chmod(tmp, 0o777 & ~_umask())
            for fname, data in files.items():
                _write_synced(tmp / fname, data)
            _fsync_dir(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # a failed write leaves nothing behind (a kill: `recover_dir`)
            raise
        if final.exists():
            if old.exists():
                shutil.rmtree(old)
            os.rename(final, old)
        os.rename(tmp, final)
        _fsync_dir(parent)
        if old.exists():
            shutil.rmtree(old)
    return final


def recover_dir(parent: str | os.PathLike, name: str) -> str | None:
    """After an interrupted `publish_dir`: remove leftover temp directories; if the publish stopped between its two
    renames, put the previous complete directory back. Returns a sentence saying what was done, or None."""
    parent = Path(parent)
    final, old = parent / name, parent / f"{name}.old"
    note = None
    with writing(parent):
        for tmp in parent.glob(f".{name}.tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
            note = f"removed the unfinished checkpoint {tmp.name}"
        if old.exists():
            if final.exists():
                shutil.rmtree(old)
            else:
                os.rename(old, final)
                note = (f"{name} was being replaced when the run stopped; the previous complete checkpoint is back "
                        "in its place")
    return note


class WriterLock:
    """One writer at a time for `path` (a run directory's `.lock`, a report's `.lock`): `with WriterLock(p, what):`.

    The lock file holds the holder's PID while it is held and is emptied (not removed) on release. flock is
    released by the system when its holder dies, so a lock file still naming a killed process is taken over
    (with a message on stderr)."""

    def __init__(self, path: str | os.PathLike, what: str) -> None:
        self.path, self.what, self._fd = Path(path), what, None

    def __enter__(self) -> WriterLock:
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            existed = self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, _file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RobustactError(f"{self.what} is being written by process {holder} (lock {self.path}); wait for "
                                 "it to finish, or choose another output") from None
        previous = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if existed and previous and previous != str(os.getpid()):
            print(f"robustact: taking over the lock of process {previous}, which is no longer running "
                  f"({self.path})", file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:  # the file stays (unlinking it would race with a waiting writer), emptied
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
