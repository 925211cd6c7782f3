"""The training state of a checkpoint: optimizer tensors and RNG states beside the weights, for exact resume.

A checkpoint `<dir>/<tag>` is three files written atomically, the JSON last (it names the others):
  <tag>.safetensors        model weights (metadata: arch, build kwargs)
  <tag>.state.safetensors  optimizer tensors and RNG states (resume only)
  <tag>.json               epoch, optimizer hyper-parameters and layout, model build kwargs, metrics
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save
from torch import nn

from robustact.checkpoints.weights import read_weights, save_weights
from robustact.errors import CheckpointError
from robustact.utils import atomic_write_bytes, atomic_write_text


def save_checkpoint(directory: Path, tag: str, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    info: dict[str, Any], rng: dict[str, torch.Tensor] | None = None) -> None:
    """Weights, then tensor state, then JSON (which makes the checkpoint visible)."""
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(model, directory / f"{tag}.safetensors", {"epoch": str(info.get("epoch", ""))})
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
    for name, value in (rng or {}).items():
        state[f"rng.{name}"] = value.contiguous().cpu()
    atomic_write_bytes(directory / f"{tag}.state.safetensors", st_save(state))
    atomic_write_text(directory / f"{tag}.json", json.dumps(info | {"optimizer": layout}, indent=1))


def load_checkpoint_state(directory: Path, tag: str) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(info JSON, model tensors, training-state tensors) of a checkpoint written by `save_checkpoint`."""
    info_path = directory / f"{tag}.json"
    if not info_path.is_file():
        raise CheckpointError(f"no checkpoint '{tag}' in {directory} (expected {info_path.name})")
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError:
        raise CheckpointError(f"{info_path} is not valid JSON; the checkpoint is corrupt") from None
    tensors, meta = read_weights(directory / f"{tag}.safetensors")
    if meta.get("epoch") and str(info.get("epoch")) != meta["epoch"]:
        raise CheckpointError(
            f"{directory}/{tag}: weights are from epoch {meta['epoch']}, state from {info.get('epoch')}; corrupt"
        )
    state, _ = read_weights(directory / f"{tag}.state.safetensors")
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
    optimizer.load_state_dict({"state": per_param, "param_groups": layout["param_groups"]})


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
