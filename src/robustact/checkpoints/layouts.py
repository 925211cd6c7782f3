"""Other people's checkpoints: the state_dict inside whatever wraps it, the prefixes training code adds, the
normalisation some carry as buffers, and — for `--arch auto` — the architecture their keys spell.

Layouts read (RobustBench's CIFAR-10 zoo and the code it collects):
- a plain state_dict, or one under `state_dict`, `model_state_dict`, `model` or `net` (nested too);
- keys prefixed with `module.` (DataParallel), `model.` (wrapper modules) or `_orig_mod.` (torch.compile);
- input normalisation as `mu`/`sigma` buffers (RobustBench's wrappers), `mean`/`std`, or the `robustness`
  library's `normalizer.new_mean`/`normalizer.new_std`;
- the key names of kuangliu's ResNets (`linear`), PreAct ResNets (with or without the final `bn`), TRADES' and
  RobustBench's WideResNets (`block1.layer.0…`, `sub_block1`, `fc` with or without bias) and DeepMind's
  WideResNets (`init_conv`, `layer.0.block.0.batchnorm_0…`, `logits`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from robustact.errors import CheckpointError
from robustact.models.normalization import Normalize, parse_normalize

WRAPPERS = ("state_dict", "model_state_dict", "model", "net")
PREFIXES = ("module.", "model.", "_orig_mod.")
NORM_BUFFERS = (("mu", "sigma"), ("mean", "std"), ("normalizer.new_mean", "normalizer.new_std"))
CLASSIFIERS = ("linear.weight", "fc.weight", "logits.weight", "classifier.weight")


def state_dict_of(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint: the object itself when it is a state_dict, else the state_dict under
    one of the usual wrapper keys; anything else is one line naming what the file holds."""
    for _ in range(4):  # {"model": {"state_dict": ...}} exists
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}
        inner = next((obj[k] for k in WRAPPERS if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if isinstance(obj, Mapping):
        keys = ", ".join(repr(k) for k in list(obj)[:6]) or "none"
        raise CheckpointError(f"{source}: unknown checkpoint layout (top-level keys {keys}); robustact reads a "
                              f"state_dict of tensors, or one under {', '.join(map(repr, WRAPPERS))}")
    raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a state_dict of tensors")


def strip_prefixes(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop `module.` / `model.` / `_orig_mod.` where every network key carries it (normalisation buffers kept
    beside a wrapped network may not)."""
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            net = [k for k in tensors if not _is_norm_key(k)]
            if net and all(k.startswith(prefix) for k in net):
                tensors = {k.removeprefix(prefix): v for k, v in tensors.items()}
                changed = True
    return tensors


def _is_norm_key(key: str) -> bool:
    return any(key in pair for pair in NORM_BUFFERS) or key.startswith("normalizer.")


def split_normalization(tensors: dict[str, torch.Tensor], source: str) -> tuple[dict[str, torch.Tensor], Normalize,
                                                                                str | None]:
    """(the network's tensors, the normalisation the checkpoint carries or None, the buffer names it came from)."""
    for mean_key, std_key in NORM_BUFFERS:
        if mean_key in tensors and std_key in tensors:
            mean, std = tensors[mean_key], tensors[std_key]
            if mean.numel() not in (1, 3) or std.numel() not in (1, 3):
                continue  # a network's own tensor that happens to have the name
            norm = parse_normalize((mean.flatten().tolist(), std.flatten().tolist()), where=f"{source} {mean_key}")
            rest = {k: v for k, v in tensors.items() if k not in (mean_key, std_key)
                    and not (mean_key.startswith("normalizer.") and k.startswith("normalizer."))}
            return rest, norm, f"{mean_key}/{std_key}"
    return tensors, None, None


@dataclass
class Inferred:
    """What `--arch auto` read from the keys: the architecture, its options, the classes."""

    arch: str
    options: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None


def classes_in(tensors: dict[str, torch.Tensor]) -> int | None:
    """The number of classes, from the final Linear's rows (None when no known classifier key is there)."""
    for key in CLASSIFIERS:
        if key in tensors and tensors[key].dim() == 2:
            return int(tensors[key].shape[0])
    return None


def _count(tensors: dict, pattern: str) -> int:
    """How many distinct indices `{i}` the keys matching `pattern` (a regex with one group) have."""
    rx = re.compile(pattern)
    return len({m.group(1) for k in tensors if (m := rx.match(k))})


def infer_arch(tensors: dict[str, torch.Tensor], given: Mapping[str, Any], source: str) -> Inferred:
    """The architecture a foreign state_dict spells, with the options its keys and shapes fix. What the keys
    cannot tell (an activation, where a PreAct shortcut starts) must be in `given`, or it is one line saying so."""
    keys = set(tensors)
    if "init_conv.weight" in keys and "logits.weight" in keys:
        return _deepmind_wrn(tensors, given, source)
    if "block1.layer.0.conv1.weight" in keys:
        return _trades_wrn(tensors)
    if "conv1.weight" in keys and "layer1.0.conv1.weight" in keys and "linear.weight" in keys:
        if any(k.startswith("layer1.0.conv3") for k in keys):
            raise CheckpointError(f"{source}: bottleneck ResNet keys (layer1.0.conv3) — ResNet-50/101 are not "
                                  "among robustact's architectures (robustact list: robustact info)")
        blocks = tuple(_count(tensors, rf"layer{s}\.(\d+)\.") for s in range(1, 5))
        width = int(tensors["conv1.weight"].shape[0])
        if "bn1.weight" in keys:  # a post-activation ResNet has a stem BN; a PreAct one does not
            arch = {(2, 2, 2, 2): "resnet18", (3, 4, 6, 3): "resnet34"}.get(blocks)
            if arch is None:
                raise CheckpointError(f"{source}: a ResNet with {blocks} blocks per stage; robustact has ResNet-18 "
                                      "(2, 2, 2, 2) and ResNet-34 (3, 4, 6, 3)")
            return Inferred(arch, {"width": width} if width != 64 else {}, classes_in(tensors))
        return _preact(tensors, blocks, width, given, source)
    if any(k.startswith("layers.") for k in keys) and "classifier.weight" in keys:
        return Inferred("vgg16", {}, classes_in(tensors))
    sample = ", ".join(sorted(keys)[:5])
    raise CheckpointError(f"{source}: --arch auto: the keys match none of the layouts robustact knows (kuangliu "
                          f"ResNet, PreAct ResNet, TRADES/RobustBench WRN, DeepMind WRN); first keys: {sample}; "
                          "name the architecture with --arch")


def _trades_wrn(tensors: dict[str, torch.Tensor]) -> Inferred:
    n = _count(tensors, r"block1\.layer\.(\d+)\.")
    options: dict[str, Any] = {"depth": 6 * n + 4,
                               "widen_factor": int(tensors["block1.layer.0.conv1.weight"].shape[0]) // 16}
    if any(k.startswith("sub_block1.") for k in tensors):
        options["sub_block1"] = True
    if "fc.bias" not in tensors:
        options["fc_bias"] = False
    return Inferred("wideresnet", options, classes_in(tensors))


def _preact(tensors: dict[str, torch.Tensor], blocks: tuple, width: int, given: Mapping[str, Any],
            source: str) -> Inferred:
    if blocks != (2, 2, 2, 2):
        raise CheckpointError(f"{source}: a PreAct ResNet with {blocks} blocks per stage; robustact has PreAct "
                              "ResNet-18 (2, 2, 2, 2)")
    if "shortcut" not in given:
        raise CheckpointError(
            f"{source}: PreAct ResNet-18 keys, but the state_dict cannot tell where its projection shortcuts start: "
            "from the raw block input (RobustBench PreActBlock, Wong et al. 2020 fast AT) or from the pre-activated "
            "one (kuangliu, RobustBench PreActBlockV2); add --arch-opt shortcut=input or shortcut=preact")
    options: dict[str, Any] = {"final_bn": "bn.weight" in tensors}
    if width != 64:
        options["width"] = width
    return Inferred("preact_resnet18", options, classes_in(tensors))


def _deepmind_wrn(tensors: dict[str, torch.Tensor], given: Mapping[str, Any], source: str) -> Inferred:
    n = _count(tensors, r"layer\.0\.block\.(\d+)\.")
    width = int(tensors["layer.0.block.0.conv_0.weight"].shape[0]) // 16
    depth = 6 * n + 4
    if "activation" not in given:
        raise CheckpointError(
            f"{source}: DeepMind WideResNet-{depth}-{width} keys, but the state_dict cannot tell its activation: add "
            "--arch-opt activation=swish (most RobustBench DeepMind entries) or activation=relu")
    return Inferred("dm_wideresnet", {"depth": depth, "width": width}, classes_in(tensors))
