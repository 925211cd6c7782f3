"""Model weights without pickles: safetensors with the build arguments in their metadata; foreign `.pt`
state_dicts read with `weights_only=True`; strict loads and `init_from` loads with one-line errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from robustact.checkpoints.layouts import state_dict_of, strip_prefixes
from robustact.errors import CheckpointError
from robustact.fileio import atomic_write_bytes
from robustact.models.normalization import describe_normalize, parse_normalize, same_normalize


def model_metadata(model: nn.Module) -> dict[str, str]:
    return {
        "arch": str(getattr(model, "arch", type(model).__name__)),
        "build_kwargs": json.dumps(getattr(model, "build_kwargs", {})),
        "format": "robustact-1",
    }


def state_dict_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def weights_bytes(model: nn.Module, extra_meta: dict[str, str] | None = None) -> bytes:
    """The model's weights as safetensors bytes, its build arguments in the metadata."""
    return st_save(state_dict_for_saving(model), metadata=model_metadata(model) | (extra_meta or {}))


def save_weights(model: nn.Module, path: str | Path, extra_meta: dict[str, str] | None = None) -> None:
    atomic_write_bytes(path, weights_bytes(model, extra_meta))


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Weights and metadata from a safetensors file, or a `.pt` read with weights_only: the state_dict inside the
    usual wrappers, without DataParallel/wrapper prefixes (`checkpoints.layouts`)."""
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
        return (tensors if meta.get("format") == "robustact-1" else strip_prefixes(tensors)), meta
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 — any unpickling failure is the user's file
        raise CheckpointError(
            f"{path} could not be read as a plain state_dict with weights_only=True ({type(exc).__name__}); "
            "robustact never unpickles arbitrary objects — convert it to safetensors"
        ) from None
    return strip_prefixes(state_dict_of(obj, str(path))), {}


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
            got, want = tensors[k], own[k]
            parts.append(f"{len(shape)} of other shape or dtype (e.g. {k}: {tuple(got.shape)} {got.dtype} vs "
                         f"{tuple(want.shape)} {want.dtype})")
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
    from robustact.checkpoints.runs import resolve_checkpoint, stored_build_kwargs

    weights, _ = resolve_checkpoint(source, which)
    tensors, meta = read_weights(weights)
    target = getattr(model, "_orig_mod", model)
    if meta.get("format") == "robustact-1":  # weights learned on normalised inputs need the same normalisation
        theirs = parse_normalize(stored_build_kwargs(meta, weights).get("normalize"))
        ours = parse_normalize(getattr(target, "build_kwargs", {}).get("normalize"))
        if not same_normalize(theirs, ours):
            raise CheckpointError(f"init_from {weights} was trained with input normalisation "
                                  f"{describe_normalize(theirs)}, this model has {describe_normalize(ours)}; set "
                                  "model.normalize to match")
    own = target.state_dict()
    missing, shape = _misfits(own, tensors)
    missing = [k for k in missing if not optional(k)]
    if missing or shape:
        bad = (missing or shape)[0]
        raise CheckpointError(f"init_from {weights} does not fit this model ({len(missing)} missing, {len(shape)} "
                              f"of other shape or dtype keys, e.g. {bad}); use a run of the same arch and num_classes")
    loaded = {k: v for k, v in tensors.items() if k in own}
    target.load_state_dict(loaded, strict=False)
    return len(loaded), len(own) - len(loaded)


def _same_kind(a: torch.dtype, b: torch.dtype) -> bool:
    """Floating weights may change precision on load; anything else must keep its exact dtype (a header that
    turns float32 into int32 would load 1e9-sized weights)."""
    return a == b or (a.is_floating_point and b.is_floating_point)


def _misfits(own: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """(keys of `own` the source lacks, keys both have with a different shape or kind of dtype)."""
    missing = [k for k in own if k not in tensors]
    shape = [k for k in own if k in tensors and (tuple(own[k].shape) != tuple(tensors[k].shape)
                                                 or not _same_kind(own[k].dtype, tensors[k].dtype))]
    return missing, shape
