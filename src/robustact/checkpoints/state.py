"""Training checkpoints: the weights, the optimizer tensors and RNG states, and the JSON info — for exact resume —
published as one directory (`fileio.publish_dir`), so a checkpoint is complete or absent, never mixed:

    checkpoints/last/   model.safetensors   weights (metadata: arch, build kwargs, epoch)
                        state.safetensors   optimizer tensors and RNG states
                        info.json           epoch, best so far, optimizer hyper-parameters and layout
                        manifest.json       sha256 of each file (checked when read)
    checkpoints/best/   model.safetensors, info.json, manifest.json

The previous `last` stays until the new one is complete; `recover` puts it back after an interrupted write and
removes leftovers. Runs of 0.1.0 (`checkpoints/last.safetensors`, `last.state.safetensors`, `last.json`) are read
as they are.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save
from torch import nn

from robustact.checkpoints.weights import read_weights, weights_bytes
from robustact.errors import CheckpointError
from robustact.fileio import publish_dir, recover_dir

MODEL, STATE, INFO, MANIFEST = "model.safetensors", "state.safetensors", "info.json", "manifest.json"


def weights_path(directory: Path, tag: str) -> Path:
    """The weights file of checkpoint `tag` (the 0.1.0 layout's when that is what the run has)."""
    new, legacy = directory / tag / MODEL, directory / f"{tag}.safetensors"
    return legacy if not new.is_file() and legacy.is_file() else new


def has_checkpoint(directory: Path, tag: str) -> bool:
    return (directory / tag / INFO).is_file() or (directory / f"{tag}.json").is_file()


def _optimizer_tensors(optimizer: torch.optim.Optimizer | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state: dict[str, torch.Tensor] = {}
    layout: dict[str, Any] = {}
    if optimizer is not None:
        opt = optimizer.state_dict()
        for pid, pstate in opt["state"].items():
            for name, value in pstate.items():
                if isinstance(value, torch.Tensor):
                    state[f"optim.{pid}.{name}"] = value.detach().contiguous().cpu()
                else:
                    layout.setdefault("optim_scalars", {})[f"{pid}.{name}"] = value
        layout["param_groups"] = opt["param_groups"]
    return state, layout


def save_checkpoint(directory: Path, tag: str, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    info: dict[str, Any], rng: dict[str, torch.Tensor] | None = None) -> Path:
    """Publish checkpoint `tag` (weights; with an optimizer or RNG states, the training state too) as one unit."""
    files = {MODEL: weights_bytes(model, {"epoch": str(info.get("epoch", ""))})}
    state, layout = _optimizer_tensors(optimizer)
    state |= {f"rng.{name}": value.contiguous().cpu() for name, value in (rng or {}).items()}
    if optimizer is not None or rng:
        files[STATE] = st_save(state)
    files[INFO] = json.dumps(info | {"optimizer": layout}, indent=1).encode()
    files[MANIFEST] = json.dumps({name: hashlib.sha256(data).hexdigest() for name, data in files.items()}).encode()
    return publish_dir(directory, tag, files)


def recover(directory: Path, tag: str) -> str | None:
    """Finish or undo an interrupted write of checkpoint `tag`; a sentence saying what was done, or None."""
    return recover_dir(directory, tag) if directory.is_dir() else None


def _checked(folder: Path) -> dict:
    """The manifest of a checkpoint directory, after checking every file it names against its hash."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        raise CheckpointError(f"{folder} has no readable {MANIFEST}; the checkpoint is damaged") from None
    for name, digest in manifest.items():
        try:
            ok = hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
        except OSError:
            ok = False
        if not ok:
            raise CheckpointError(f"{folder / name} is missing or does not match its manifest; the checkpoint is "
                                  "damaged")
    return manifest


def load_checkpoint_state(directory: Path, tag: str) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(info JSON, model tensors, training-state tensors) of a checkpoint written by `save_checkpoint`."""
    folder = directory / tag
    if (folder / INFO).is_file():
        manifest = _checked(folder)
        info_path, model_path, state_path = folder / INFO, folder / MODEL, folder / STATE
        if STATE not in manifest:
            raise CheckpointError(f"{folder} holds weights only (no training state to resume from)")
    else:  # the 0.1.0 layout
        info_path = directory / f"{tag}.json"
        model_path, state_path = directory / f"{tag}.safetensors", directory / f"{tag}.state.safetensors"
        if not info_path.is_file():
            raise CheckpointError(f"no checkpoint '{tag}' in {directory}")
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError):
        raise CheckpointError(f"{info_path} is not valid JSON; the checkpoint is damaged") from None
    tensors, meta = read_weights(model_path)
    if meta.get("epoch") and str(info.get("epoch")) != meta["epoch"]:
        raise CheckpointError(f"{model_path}: weights are from epoch {meta['epoch']}, state from {info.get('epoch')}; "
                              "the checkpoint is damaged")
    state, _ = read_weights(state_path)
    return info, tensors, state


def restore_optimizer(optimizer: torch.optim.Optimizer, info: dict, state: dict[str, torch.Tensor]) -> None:
    layout = info.get("optimizer", {})
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in state.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            per_param.setdefault(int(pid), {})[name] = value
    for key, value in layout.get("optim_scalars", {}).items():
        pid, name = key.split(".", 1)
        per_param.setdefault(int(pid), {})[name] = value
    try:
        optimizer.load_state_dict({"state": per_param, "param_groups": layout["param_groups"]})
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"the checkpoint's optimizer state does not fit this model ({exc})") from None


def rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda{i}"] = s
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    if "rng.torch" in state:
        torch.set_rng_state(state["rng.torch"])
    if torch.cuda.is_available():
        cuda = [state[k] for k in sorted((k for k in state if k.startswith("rng.cuda")),
                                         key=lambda k: int(k.removeprefix("rng.cuda")))]  # cuda10 after cuda9
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
