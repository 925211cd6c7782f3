"""Sparta — our RECONSTRUCTION (no official code or paper body exists; docs/sparta.md, METHODS.md §4) — and the
frozen transfer of learned activations that its paper is about, in one place.

    Sparta(x) = x ⊙ σ(A(x)),   A = depthwise k×k convolution (padding k//2) with per-channel bias

- with k = 1 and A(x) = βx it is Swish `x·σ(βx)` (SiLU at β = 1); as β → ∞ it tends to ReLU;
- the centre tap starts at β₀ (default 8) and the other taps at 0, so training starts near ReLU / Swish;
  the learned spatial taps make each position's gate depend on its neighbourhood ("spatial attention");
- `shared=True`: one k×k kernel for all channels plus a per-channel scale and bias (A_c = s_c·(w ⋆ x_c) + b_c),
  so the kernel does not depend on the width (transferable between networks of different widths).

As an activation spec: `sparta`, or `{name: sparta, kernel_size: 5, beta0: 1, shared: true}`; the aliases
`sparta_shared` and `sparta_b1` (centre tap 1: starts as SiLU) are what the presets use.

Frozen transfer (Guo et al., arXiv 2105.08269): a Sparta function trained adversarially on one CNN is frozen and
reused to train another (ResNet-18 → ResNet-34) or on another dataset (CIFAR-10 → SVHN).
`transfer_activations(src_model, dst_model)` copies the source's learnable activation modules (Sparta, PSSiLU)
into the target's, sets `requires_grad=False` on them, and leaves every other parameter trainable. Sites are
matched by qualified module names read as (stage, index in stage, position in block): the last integer
component is the block index (`layer3.4.act1` → ("layer3", 4, "act1"); `act` → ("act", None, "")).

- `mapping="stage"`: target block i of a stage takes source block i of the same stage and position; a target
  block past the source's last block of that stage reuses that last block's module (ResNet-18 → ResNet-34:
  layer2.2 and layer2.3 reuse layer2.1). Covers every target site or raises.
- `mapping="exact"`: identical qualified names (same architecture; the cross-dataset case).

Widths must match per site, except for the shared-kernel Sparta, whose k×k kernel is width-agnostic: with a
different width its kernel is copied and its per-channel scale and bias are set to the source's mean values.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from robustact.errors import ConfigError
from robustact.models.activations import LearnableActivation, PSSiLU, learnable_activations, register_activation

SPARTA_DEFAULT_K = 3
SPARTA_DEFAULT_BETA0 = 8.0
MAPPINGS = ("stage", "exact")
_INT = re.compile(r"^\d+$")


class Sparta(LearnableActivation):
    """`x · σ(A(x))`, A a depthwise k×k conv (per-channel kernels, or one shared kernel × per-channel scale).

    Parameters: `weight` (C, 1, k, k) — or (1, 1, k, k) plus `scale` (C,) when shared — and `bias` (C,).
    `gate(x)` returns σ(A(x)) (the analysis reads it).
    """

    def __init__(self, channels: int, kernel_size: int = SPARTA_DEFAULT_K, beta0: float = SPARTA_DEFAULT_BETA0,
                 shared: bool = False) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"Sparta kernel_size must be odd and >= 1 (same-size output), got {kernel_size}")
        if channels < 1:
            raise ConfigError(f"Sparta needs channels >= 1, got {channels}")
        self.channels = int(channels)
        self.kernel_size = int(kernel_size)
        self.beta0 = float(beta0)
        self.shared = bool(shared)
        k, c = self.kernel_size, self.channels
        weight = torch.zeros(1 if shared else c, 1, k, k)
        weight[:, :, k // 2, k // 2] = self.beta0  # centre tap β₀, the rest 0: Swish x·σ(β₀x) at the start
        self.weight = nn.Parameter(weight)
        self.scale = nn.Parameter(torch.ones(c)) if shared else None
        self.bias = nn.Parameter(torch.zeros(c))

    def kernel(self) -> torch.Tensor:
        """The effective depthwise kernel (C, 1, k, k)."""
        if self.shared:
            return self.scale.view(-1, 1, 1, 1) * self.weight.expand(self.channels, 1, -1, -1)
        return self.weight

    def gate_logits(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ConfigError(f"Sparta({self.channels}) got input of shape {tuple(x.shape)}; expected (N, "
                              f"{self.channels}, H, W)")
        return F.conv2d(x, self.kernel(), self.bias, padding=self.kernel_size // 2, groups=self.channels)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.gate_logits(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size={self.kernel_size}, beta0={self.beta0:g}, shared={self.shared}"


@register_activation("sparta")
def _sparta(channels: int, kernel_size: int = SPARTA_DEFAULT_K, beta0: float = SPARTA_DEFAULT_BETA0,
            shared: bool = False) -> nn.Module:
    return Sparta(channels, kernel_size=kernel_size, beta0=beta0, shared=shared)


# -- frozen transfer ---------------------------------------------------------------------------------------
def site_key(name: str) -> tuple[str, int | None, str]:
    """(stage, index in stage, position in block) of a qualified module name."""
    parts = name.split(".")
    idx = [i for i, p in enumerate(parts) if _INT.match(p)]
    if not idx:
        return name, None, ""
    i = idx[-1]
    return ".".join(parts[:i]), int(parts[i]), ".".join(parts[i + 1:])


def _activation_sites(model: nn.Module) -> dict[str, nn.Module]:
    return dict(learnable_activations(getattr(model, "_orig_mod", model)))


def _exact_pairs(src: set[str], dst_names: list[str]) -> dict[str, str]:
    for name in dst_names:
        if name not in src:
            raise ConfigError(f"exact activation mapping: the source has no site {name!r}; use mapping='stage'")
    return {name: name for name in dst_names}


def map_sites(src_names: list[str], dst_names: list[str], mapping: str = "stage") -> dict[str, str]:
    """{target site name: source site name} for every target site, or ConfigError naming an unmapped one."""
    if mapping not in MAPPINGS:
        raise ConfigError(f"activation mapping must be one of {', '.join(MAPPINGS)}, got {mapping!r}")
    if mapping == "exact":
        return _exact_pairs(set(src_names), dst_names)
    by_stage: dict[tuple[str, str], dict[int, str]] = {}
    singles: dict[str, str] = {}
    for name in src_names:
        stage, i, pos = site_key(name)
        if i is None:
            singles[stage] = name
        else:
            by_stage.setdefault((stage, pos), {})[i] = name
    out: dict[str, str] = {}
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
    elif not isinstance(src, PSSiLU):  # pragma: no cover - a new learnable activation needs its own rule
        raise ConfigError(f"do not know how to transfer {type(src).__name__}")
    dst.load_state_dict(src.state_dict())


def transfer_activations(src_model: nn.Module, dst_model: nn.Module, mapping: str = "stage",
                         freeze: bool = True) -> dict[str, str]:
    """Copy the learned activation modules of `src_model` into `dst_model`; returns {target site: source site}.

    With `freeze`, the copied parameters get `requires_grad=False`; every other parameter of `dst_model` is left
    as it was. (A run directory as the source: `robustact.checkpoints.load_model` it first.)"""
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
