"""Frozen transfer of learned activation functions (Sparta, PSSiLU) from one network to another.

Sparta's claim (Guo et al., arXiv 2105.08269; our reconstruction, docs/sparta.md): a Sparta function trained
adversarially on one CNN can be frozen and reused to train another CNN (ResNet-18 → ResNet-34) or on another
dataset (CIFAR-10 → SVHN). `transfer_activations(src, dst)` copies the source's activation modules into the
target's, sets `requires_grad=False` on them, and leaves every other parameter trainable; training then
updates only the rest (a parameter without `requires_grad` never receives a gradient, so SGD — weight decay
included — skips it).

Sites are matched by their qualified module names, read as (stage, index in stage, position in block): the last
integer component is the block index, what precedes it the stage, what follows it the position
(`layer3.4.act1` → ("layer3", 4, "act1"); `act` → ("act", None, "")).

- `mapping="stage"`: target block i of a stage takes source block i of the same stage and position; a target
  block past the source's last block of that stage reuses that last block's module (ResNet-18 → ResNet-34:
  layer2.2 and layer2.3 reuse layer2.1). Covers every target site or raises.
- `mapping="exact"`: identical qualified names (same architecture; the cross-dataset case).

Widths must match per site, except for the shared-kernel Sparta, whose k×k kernel is width-agnostic: with a
different width its kernel is copied and its per-channel scale and bias are set to the source's mean values.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from robustact.errors import ConfigError

_INT = re.compile(r"^\d+$")
MAPPINGS = ("stage", "exact")


def site_key(name: str) -> tuple[str, int | None, str]:
    """(stage, index in stage, position in block) of a qualified module name."""
    parts = name.split(".")
    idx = [i for i, p in enumerate(parts) if _INT.match(p)]
    if not idx:
        return name, None, ""
    i = idx[-1]
    return ".".join(parts[:i]), int(parts[i]), ".".join(parts[i + 1:])


def _activation_sites(model: nn.Module) -> dict[str, nn.Module]:
    from robustact.models.activations import learnable_activations

    return dict(learnable_activations(getattr(model, "_orig_mod", model)))


def map_sites(src_names: list[str], dst_names: list[str], mapping: str = "stage") -> dict[str, str]:
    """{target site name: source site name} for every target site, or ConfigError naming an unmapped one."""
    if mapping not in MAPPINGS:
        raise ConfigError(f"activation mapping must be one of {', '.join(MAPPINGS)}, got {mapping!r}")
    src = set(src_names)
    out: dict[str, str] = {}
    if mapping == "exact":
        for name in dst_names:
            if name not in src:
                raise ConfigError(f"exact activation mapping: the source has no site {name!r}; use mapping='stage'")
            out[name] = name
        return out
    by_stage: dict[tuple[str, str], dict[int, str]] = {}
    singles: dict[str, str] = {}
    for name in src_names:
        stage, i, pos = site_key(name)
        if i is None:
            singles[stage] = name
        else:
            by_stage.setdefault((stage, pos), {})[i] = name
    for name in dst_names:
        stage, i, pos = site_key(name)
        if i is None:
            if stage not in singles:
                raise ConfigError(f"stage activation mapping: the source has no site {name!r}")
            out[name] = singles[stage]
            continue
        blocks = by_stage.get((stage, pos))
        if not blocks:
            raise ConfigError(f"stage activation mapping: the source has no sites in stage {stage!r} at position "
                              f"{pos or '(none)'!r} for target site {name!r}")
        lower = [b for b in blocks if b <= i]  # block i itself, else the stage's last block before it
        out[name] = blocks[max(lower)] if lower else blocks[min(blocks)]
    return out


def _copy_module(src: nn.Module, dst: nn.Module, src_name: str, dst_name: str) -> None:
    from robustact.models.activations import PSSiLU, Sparta

    if type(src) is not type(dst):
        raise ConfigError(f"cannot transfer {src_name} ({type(src).__name__}) into {dst_name} "
                          f"({type(dst).__name__}); build the target with the source's activation")
    if isinstance(src, Sparta):
        if (src.kernel_size, src.shared) != (dst.kernel_size, dst.shared):
            raise ConfigError(f"cannot transfer {src_name} (k={src.kernel_size}, shared={src.shared}) into "
                              f"{dst_name} (k={dst.kernel_size}, shared={dst.shared}); use the same Sparta variant")
        if src.channels != dst.channels:
            if not src.shared:
                raise ConfigError(f"{src_name} has {src.channels} channels and {dst_name} {dst.channels}; per-channel "
                                  "Sparta kernels need equal widths (the shared-kernel variant, sparta_shared, "
                                  "transfers across widths)")
            with torch.no_grad():
                dst.weight.copy_(src.weight)
                dst.scale.fill_(src.scale.mean().item())
                dst.bias.fill_(src.bias.mean().item())
            return
    elif not isinstance(src, PSSiLU):  # pragma: no cover - learnable_activations returns only these
        raise ConfigError(f"do not know how to transfer {type(src).__name__}")
    dst.load_state_dict(src.state_dict())


def _load_source(src: str | Path | nn.Module, which: str) -> nn.Module:
    if isinstance(src, nn.Module):
        return src
    path = Path(src)
    if not path.exists():
        raise ConfigError(f"activation source {src} does not exist; pass a trained run with "
                          "--set model.activation_from=RUN (a run directory or checkpoint)")
    from robustact.runs import load_model

    with torch.random.fork_rng(devices=[]):  # building the source must not shift the target run's RNG stream
        model, _, _ = load_model(path, which=which)
    return model


def transfer_activations(src_run_or_model: str | Path | nn.Module, dst_model: nn.Module, mapping: str = "stage",
                         freeze: bool = True, which: str = "best") -> dict[str, str]:
    """Copy the learned activation modules of a source (run directory, checkpoint or model) into `dst_model`.

    Returns {target site: source site}. With `freeze`, the copied parameters get `requires_grad=False`;
    every other parameter of `dst_model` is left as it was. `which` picks a run's best or last checkpoint.
    """
    src_model = _load_source(src_run_or_model, which)
    src_sites = _activation_sites(src_model)
    dst_sites = _activation_sites(dst_model)
    if not src_sites:
        raise ConfigError("the activation source has no learnable activations (Sparta/PSSiLU) to transfer")
    if not dst_sites:
        raise ConfigError("the target model has no learnable activations to receive the transfer; build it with "
                          "the source's activation (e.g. model.activation=sparta)")
    pairs = map_sites(list(src_sites), list(dst_sites), mapping)
    for dst_name, src_name in pairs.items():
        dst = dst_sites[dst_name]
        _copy_module(src_sites[src_name], dst, src_name, dst_name)
        if freeze:
            for p in dst.parameters():
                p.requires_grad_(False)
    return pairs


def frozen_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters with `requires_grad=False` (what a frozen transfer fixed)."""
    return [n for n, p in model.named_parameters() if not p.requires_grad]


__all__ = ["frozen_parameter_names", "map_sites", "site_key", "transfer_activations"]
