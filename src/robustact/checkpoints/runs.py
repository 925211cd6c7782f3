"""Open what the user points at — a run directory or a checkpoint file — as a ready model plus its config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustact.checkpoints.state import weights_path
from robustact.checkpoints.weights import load_weights_into, read_weights
from robustact.config import DEFAULTS, RunConfig, load_run_config
from robustact.defenses.build import build_model
from robustact.errors import CheckpointError


def run_of(weights: Path) -> Path | None:
    """The run directory a weights file belongs to (`RUN/checkpoints/TAG/model.safetensors`, or 0.1.0's
    `RUN/checkpoints/TAG.safetensors`), or None for a file outside a run."""
    for up in (weights.parent, weights.parent.parent):
        if up.name == "checkpoints" and (up.parent / "config.yaml").is_file():
            return up.parent
    return None


def checkpoint_label(path: str | Path) -> str:
    """A short name for tables and figures: the run's name for a run or a checkpoint inside one, else the file's
    stem. Reads no file (a report may name a checkpoint that has moved)."""
    p = Path(path)
    if p.parent.name == "checkpoints":  # 0.1.0: RUN/checkpoints/TAG.safetensors
        return p.parent.parent.name
    if p.parent.parent.name == "checkpoints":  # RUN/checkpoints/TAG/model.safetensors
        return p.parent.parent.parent.name
    return p.name if p.suffix == "" else p.stem


def resolve_checkpoint(path: str | Path, which: str = "best") -> tuple[Path, Path | None]:
    """(weights file, run directory or None). For a run, `which` is best (validation-selected) or last;
    best falls back to last when the run kept no validation split."""
    path = Path(path)
    if path.is_dir():
        ckpts = path / "checkpoints"
        for tag in [which, "last"] if which == "best" else [which]:
            f = weights_path(ckpts, tag)
            if f.is_file():
                return f, path
        raise CheckpointError(f"{path} holds no checkpoint ({ckpts}/{which}/); is it a run directory?")
    if path.is_file():
        return path, run_of(path)
    raise CheckpointError(f"{path} is neither a run directory nor a checkpoint file")


def run_config(run: Path | None) -> RunConfig:
    """The run's stored config, typed; the defaults for a checkpoint outside a run."""
    return RunConfig.from_mapping(DEFAULTS) if run is None else load_run_config(run / "config.yaml")


def stored_build_kwargs(meta: dict[str, str], source: Path) -> dict[str, Any]:
    """The build arguments a robustact checkpoint carries. An earlier release kept CIFS's `init_from` among the
    defense options; it only mattered when the run started, so it is dropped here."""
    try:
        kwargs = json.loads(meta.get("build_kwargs", "{}"))
    except json.JSONDecodeError:
        raise CheckpointError(f"{source}: its metadata 'build_kwargs' is not valid JSON; the file is damaged") from None
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{source}: its metadata 'build_kwargs' is not a mapping; the file is damaged")
    kwargs.pop("init_from", None)
    if isinstance(kwargs.get("defense_kwargs"), dict):
        kwargs["defense_kwargs"] = {k: v for k, v in kwargs["defense_kwargs"].items() if k != "init_from"}
    return kwargs


def load_model(path: str | Path, which: str = "best", arch: str | None = None, num_classes: int | None = None,
               **build_overrides) -> tuple[nn.Module, RunConfig, Path]:
    """Model (eval mode, CPU) with its weights, the run config, and the weights file used.

    robustact checkpoints carry their architecture and build arguments; a foreign state_dict (`.pt` loaded
    with weights_only=True, or safetensors without metadata) needs `arch` (and `num_classes` if not 10).
    """
    weights, run = resolve_checkpoint(path, which)
    tensors, meta = read_weights(weights)
    config = run_config(run)
    if meta.get("format") == "robustact-1":
        kwargs = stored_build_kwargs(meta, weights)
        ckpt_arch = meta.get("arch")
        if arch and arch != ckpt_arch:
            raise CheckpointError(f"{weights} holds a '{ckpt_arch}' model, not '{arch}'; drop --arch or pick another")
        model = build_model(ckpt_arch, **(kwargs | build_overrides))
    else:
        if not arch:
            raise CheckpointError(f"{weights} carries no robustact metadata; say which network it is with --arch")
        model = build_model(arch, num_classes=num_classes or 10, **build_overrides)
    load_weights_into(model, tensors, str(weights))
    model.eval()
    return model, config, weights


def load_source_model(path: str | Path, which: str = "best") -> nn.Module:
    """A run's or checkpoint's model, built without consuming the caller's RNG stream (so a run that reads a
    source — init_from, activation_from, a transfer surrogate — starts as it would without it)."""
    with torch.random.fork_rng(devices=[]):
        return load_model(path, which=which)[0]
