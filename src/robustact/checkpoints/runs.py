"""Open what the user points at — a run directory or a checkpoint file — as a ready model plus its config."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustact.checkpoints.layouts import classes_in, infer_arch, split_normalization
from robustact.checkpoints.state import weights_path
from robustact.checkpoints.weights import load_weights_into, read_weights
from robustact.config import DEFAULTS, RunConfig, load_run_config
from robustact.defenses.build import build_model
from robustact.errors import CheckpointError
from robustact.models.normalization import Normalize, describe_normalize, parse_normalize, same_normalize


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
        return _run_label(p.parent.parent)
    if p.parent.parent.name == "checkpoints":  # RUN/checkpoints/TAG/model.safetensors
        return _run_label(p.parent.parent.parent)
    return _run_label(p) if p.suffix == "" else p.stem


def _run_label(run: Path) -> str:
    """A run's name; `robustact reproduce`'s ID/seedK runs are called ID-seedK (seedK alone says nothing)."""
    if re.fullmatch(r"seed\d+", run.name) and run.parent.name:
        return f"{run.parent.name}-{run.name}"
    return run.name


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
               normalize: Any = None, **build_overrides) -> tuple[nn.Module, RunConfig, Path]:
    """Model (eval mode, CPU) with its weights, the run config, and the weights file used.

    robustact checkpoints carry their architecture, build arguments and normalisation; a foreign state_dict (`.pt`
    loaded with weights_only=True, or safetensors without metadata) needs `arch` — a name, or "auto" to read it
    from the keys — and takes architecture options as `build_overrides` (`depth=34, widen_factor=20`).
    `normalize` (a name, "none" or (mean, std)) states the input normalisation the model was trained with: it
    must agree with what the checkpoint carries (metadata, or `mu`/`sigma`-style buffers), and is used when it
    carries none; left None, the checkpoint's own or the architecture's default applies.
    """
    weights, run = resolve_checkpoint(path, which)
    tensors, meta = read_weights(weights)
    config = run_config(run)
    if meta.get("format") == "robustact-1":
        kwargs = stored_build_kwargs(meta, weights)
        ckpt_arch = meta.get("arch")
        if build_overrides:
            raise CheckpointError(f"{weights} is a robustact checkpoint: it carries its architecture's options; drop "
                                  f"--arch-opt ({', '.join(build_overrides)})")
        if arch and arch not in (ckpt_arch, "auto"):
            raise CheckpointError(f"{weights} holds a '{ckpt_arch}' model, not '{arch}'; drop --arch or pick another")
        _agree(parse_normalize(kwargs.get("normalize")), normalize, f"{weights} was saved with")
        model = build_model(ckpt_arch, **kwargs)
    else:
        tensors, model = _foreign_model(tensors, str(weights), arch, num_classes, normalize, build_overrides)
    load_weights_into(model, tensors, str(weights))
    model.eval()
    return model, config, weights


def _agree(carried: Normalize, asked: Any, what: str) -> None:
    """A normalisation the user states must be the one the weights came with: a silent mismatch gives wrong
    numbers that look plausible."""
    if asked is None:
        return
    wanted = parse_normalize(asked)
    if not same_normalize(carried, wanted):
        raise CheckpointError(f"{what} input normalisation {describe_normalize(carried)}; --normalize "
                              f"{describe_normalize(wanted)} contradicts it (drop --normalize)")


def _foreign_model(tensors: dict[str, torch.Tensor], source: str, arch: str | None, num_classes: int | None,
                   normalize: Any, options: dict[str, Any]) -> tuple[dict[str, torch.Tensor], nn.Module]:
    """The network a state_dict without robustact metadata belongs to, built with the normalisation it carries
    (or the one stated), and its tensors without the normalisation buffers."""
    if not arch:
        raise CheckpointError(f"{source} carries no robustact metadata; say which network it is with --arch NAME "
                              "(or --arch auto)")
    tensors, carried, buffers = split_normalization(tensors, source)
    if arch == "auto":
        inferred = infer_arch(tensors, options, source)
        arch, options = inferred.arch, inferred.options | options
        num_classes = num_classes or inferred.num_classes
    if carried is not None:
        _agree(carried, normalize, f"{source} carries (in its {buffers} buffers) the")
        norm: Any = carried
    else:
        norm = "default" if normalize is None else normalize
    model = build_model(arch, num_classes=num_classes or classes_in(tensors) or 10, normalize=norm, **options)
    return tensors, model


def load_source_model(path: str | Path, which: str = "best") -> nn.Module:
    """A run's or checkpoint's model, built without consuming the caller's RNG stream (so a run that reads a
    source — init_from, activation_from, a transfer surrogate — starts as it would without it)."""
    with torch.random.fork_rng(devices=[]):
        return load_model(path, which=which)[0]
