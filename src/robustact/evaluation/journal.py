"""A journal of an evaluation in progress, so an interrupted evaluation (a 40-minute AutoAttack on a CPU, a
long adaptive suite) resumes where it stopped instead of starting over.

The journal is a JSON file written atomically after attack batches (at most every `min_interval` seconds, at
each attack's end, and on the way out of an interrupted evaluation): for each attack, how many batches are done,
the per-example outcomes so far and the seconds spent. Seeded attacks (the default) draw from a fresh generator
on every call and the batches an attack sees depend only on the clean predictions and the attacks before it, so
a resumed evaluation gives the result an uninterrupted one would have given. A journal made with other settings
(checkpoint bytes, attacks, images, eps, batch size, ...) is refused rather than mixed in.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import torch

from robustact.errors import RobustactError
from robustact.fileio import atomic_write_text


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (the checkpoint a journal belongs to)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def journal_path(report_path: str | Path) -> Path:
    """Where the journal of the evaluation that writes `report_path` lives: beside it, `NAME.partial.json`."""
    p = Path(report_path)
    return p.with_name(p.stem + ".partial.json")


class EvalJournal:
    """Per-batch progress of one evaluation. `settings` is everything that decides the result; a saved journal
    with different settings raises (pass `restart=True` to discard it). `min_interval` (seconds) spaces out the
    writes on a fast device; `flush()` (called by the engine however it exits) writes whatever is pending."""

    def __init__(self, path: str | Path, settings: dict, *, restart: bool = False, min_interval: float = 2.0):
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings))  # as it will read back
        self.min_interval = min_interval
        self.state: dict = {"settings": self.settings, "clean": None, "attacks": {}}
        self._dirty = False
        self._last_write = -math.inf  # never written: the first record writes
        if self.path.exists() and not restart:
            self._load()

    def _load(self) -> None:
        try:
            saved = json.loads(self.path.read_text())
            saved_settings, attacks = saved["settings"], saved["attacks"]
        except (OSError, ValueError, KeyError, TypeError):
            raise RobustactError(f"{self.path} is not a readable evaluation journal; delete it or pass "
                                 "--restart") from None
        differ = sorted(k for k in self.settings.keys() | saved_settings.keys()
                        if self.settings.get(k) != saved_settings.get(k))
        if differ:
            raise RobustactError(f"{self.path} holds a partial evaluation with other settings ({', '.join(differ)}); "
                                 "pass --restart to discard it, or another --out")
        self.state = {"settings": self.settings, "clean": saved.get("clean"), "attacks": attacks}

    @property
    def resumed(self) -> bool:
        return bool(self.state["attacks"])

    def describe(self) -> str:
        """One line: what a resumed evaluation already has."""
        parts = [f"{name} {a['batches']}/{a['total']} batches" for name, a in self.state["attacks"].items()]
        return ", ".join(parts) or "nothing yet"

    def check_clean(self, clean: torch.Tensor) -> None:
        """The clean predictions must be those the journal was made with (same model, data and device numerics)."""
        now = clean.int().tolist()
        if self.state["clean"] is None:
            self.state["clean"] = now
        elif self.state["clean"] != now:
            raise RobustactError(f"{self.path}: the clean predictions differ from the partial evaluation's (other "
                                 "device or numerics?); pass --restart to discard it")

    def progress(self, name: str) -> tuple[int, torch.Tensor | None, float]:
        """(batches done, per-example outcomes so far or None, seconds spent) of attack `name`."""
        a = self.state["attacks"].get(name)
        if a is None:
            return 0, None, 0.0
        return int(a["batches"]), torch.tensor(_as_list(a["robust"]), dtype=torch.bool), float(a["seconds"])

    def record(self, name: str, batches: int, total: int, robust: torch.Tensor, seconds: float) -> None:
        """`robust` is kept by reference (the engine only writes rows of later batches into it) and read back
        when the journal is written — at most every `min_interval` seconds, so a fast device is not synced
        after every batch."""
        self.state["attacks"][name] = {"batches": batches, "total": total, "robust": robust, "seconds": seconds}
        self._dirty = True
        if time.monotonic() - self._last_write >= self.min_interval:
            self.flush()

    def flush(self) -> None:
        if self._dirty:
            state = self.state | {"attacks": {name: a | {"robust": _as_list(a["robust"])}
                                              for name, a in self.state["attacks"].items()}}
            atomic_write_text(self.path, json.dumps(state))
            self._dirty = False
            self._last_write = time.monotonic()

    def remove(self) -> None:
        """The evaluation finished and its report is written: the journal has done its job."""
        self.path.unlink(missing_ok=True)


def _as_list(robust: torch.Tensor | list) -> list[int]:
    return robust.int().tolist() if isinstance(robust, torch.Tensor) else robust
