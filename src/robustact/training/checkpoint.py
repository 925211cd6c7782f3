"""Checkpoints without pickles: model weights in safetensors, training state in safetensors + JSON.

A checkpoint `<dir>/<tag>` is three files written atomically, the JSON last (it names the others):
  <tag>.safetensors        model weights (metadata: arch, build kwargs)
  <tag>.state.safetensors  optimizer tensors and RNG states (resume only)
  <tag>.json               epoch, optimizer hyper-parameters and layout, model build kwargs, metrics
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from robustact.errors import CheckpointError
from robustact.utils import atomic_write_bytes, atomic_write_text


def model_metadata(model: nn.Module) -> dict[str, str]:
    return {
        "arch": str(getattr(model, "arch", type(model).__name__)),
        "build_kwargs": json.dumps(getattr(model, "build_kwargs", {})),
        "format": "robustact-1",
    }


def state_dict_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def save_weights(model: nn.Module, path: str | Path, extra_meta: dict[str, str] | None = None) -> None:
    meta = model_metadata(model) | (extra_meta or {})
    atomic_write_bytes(path, st_save(state_dict_for_saving(model), metadata=meta))


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Weights and metadata from a safetensors file, or a plain state_dict `.pt` read with weights_only."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            raw = path.read_bytes()
            tensors = st_load(raw)
            from safetensors import safe_open  # metadata lives in the header

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file ({str(exc).splitlines()[0]})") from None
        return tensors, meta
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 — any unpickling failure is the user's file
        raise CheckpointError(
            f"{path} could not be read as a plain state_dict with weights_only=True ({type(exc).__name__}); "
            "robustact never unpickles arbitrary objects — convert it to safetensors"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state_dict of tensors")
    obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj, {}


def load_weights_into(model: nn.Module, tensors: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strict load with one clear line when the checkpoint belongs to another architecture or defense."""
    target = getattr(model, "_orig_mod", model)
    own = target.state_dict()
    missing, shape = _misfits(own, tensors)
    unexpected = [k for k in tensors if k not in own]
    if missing or unexpected or shape:
        arch = getattr(target, "arch", type(target).__name__)
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shape:
            k = shape[0]
            parts.append(f"{len(shape)} of other shape (e.g. {k}: {tuple(tensors[k].shape)} vs {tuple(own[k].shape)})")
        raise CheckpointError(
            f"{source} does not fit a '{arch}' model with this defense/num_classes: {'; '.join(parts)} keys"
        )
    target.load_state_dict(tensors, strict=True)


def init_weights_from(model: nn.Module, source: str | Path, optional: Callable[[str], bool],
                      which: str = "best") -> tuple[int, int]:
    """Start `model` from another run's (or checkpoint's) weights — fine-tuning, or the official CIFS-AT,
    which started from a clean-trained network. Every key of `model` must be in the source with its shape,
    except the `optional` ones (a defense's or a learned activation's own modules), which are loaded when
    the source has them and keep their fresh initialisation otherwise; source keys `model` lacks are ignored.
    Returns (tensors loaded, optional tensors kept fresh)."""
    from robustact.runs import resolve_checkpoint

    weights, _ = resolve_checkpoint(source, which)
    tensors, _ = read_weights(weights)
    target = getattr(model, "_orig_mod", model)
    own = target.state_dict()
    missing, shape = _misfits(own, tensors)
    missing = [k for k in missing if not optional(k)]
    if missing or shape:
        bad = (missing or shape)[0]
        raise CheckpointError(f"init_from {weights} does not fit this model ({len(missing)} missing, {len(shape)} "
                              f"of other shape keys, e.g. {bad}); use a run of the same arch and num_classes")
    loaded = {k: v for k, v in tensors.items() if k in own}
    target.load_state_dict(loaded, strict=False)
    return len(loaded), len(own) - len(loaded)


def _misfits(own: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """(keys of `own` the source lacks, keys both have with different shapes)."""
    missing = [k for k in own if k not in tensors]
    shape = [k for k in own if k in tensors and tuple(own[k].shape) != tuple(tensors[k].shape)]
    return missing, shape


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
        cuda = [state[k] for k in sorted(state) if k.startswith("rng.cuda")]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
