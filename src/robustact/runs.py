"""Open what the user points at — a run directory or a checkpoint file — as a ready model plus its config."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from torch import nn

from robustact.config import DEFAULTS, deep_merge
from robustact.errors import CheckpointError
from robustact.models import build_model
from robustact.training.checkpoint import load_weights_into, read_weights


def resolve_checkpoint(path: str | Path, which: str = "best") -> tuple[Path, Path | None]:
    """(weights file, run directory or None). For a run, `which` is best (validation-selected) or last;
    best falls back to last when the run kept no validation split."""
    path = Path(path)
    if path.is_dir():
        ckpts = path / "checkpoints"
        order = [which, "last"] if which == "best" else [which]
        for tag in order:
            f = ckpts / f"{tag}.safetensors"
            if f.is_file():
                return f, path
        raise CheckpointError(f"{path} holds no checkpoint ({ckpts}/{which}.safetensors); is it a run directory?")
    if path.is_file():
        run = path.parent.parent if path.parent.name == "checkpoints" else None
        return path, run if run is not None and (run / "config.yaml").is_file() else None
    raise CheckpointError(f"{path} is neither a run directory nor a checkpoint file")


def run_config(run: Path | None) -> dict:
    if run is None:
        return deep_merge(DEFAULTS, {})
    return deep_merge(DEFAULTS, yaml.safe_load((run / "config.yaml").read_text()) or {})


def load_model(path: str | Path, which: str = "best", arch: str | None = None, num_classes: int | None = None,
               **build_overrides) -> tuple[nn.Module, dict, Path]:
    """Model (eval mode, CPU) with its weights, the run config, and the weights file used.

    robustact checkpoints carry their architecture and build arguments; a foreign state_dict (`.pt` loaded
    with weights_only=True, or safetensors without metadata) needs `arch` (and `num_classes` if not 10).
    """
    weights, run = resolve_checkpoint(path, which)
    tensors, meta = read_weights(weights)
    config = run_config(run)
    if meta.get("format") == "robustact-1":
        kwargs = json.loads(meta.get("build_kwargs", "{}"))
        ckpt_arch = meta["arch"]
        if arch and arch != ckpt_arch:
            raise CheckpointError(f"{weights} holds a '{ckpt_arch}' model, not '{arch}'; drop --arch or pick another")
        kwargs |= build_overrides
        model = build_model(ckpt_arch, **kwargs)
    else:
        if not arch:
            raise CheckpointError(f"{weights} carries no robustact metadata; say which network it is with --arch")
        model = build_model(arch, num_classes=num_classes or 10, **build_overrides)
    load_weights_into(model, tensors, str(weights))
    model.eval()
    return model, config, weights
