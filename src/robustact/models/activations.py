"""Learnable activations: PSSiLU and Sparta (a RECONSTRUCTION — no official code or paper body exists).

Registered with `register_activation`, so `build_model(arch, activation=NAME)` puts one fresh module (with its
own parameters) at every activation site of every architecture.

Sparta (Guo et al., arXiv 2105.08269), our reconstruction (docs/sparta.md, METHODS.md §4)::

    Sparta(x) = x ⊙ σ(A(x)),   A = depthwise k×k convolution (padding k//2) with per-channel bias

- with k = 1 and A(x) = βx it is Swish `x·σ(βx)` (SiLU at β = 1); as β → ∞ it tends to ReLU;
- the centre tap starts at β₀ (default 8) and the other taps at 0, so training starts near ReLU / Swish;
  the learned spatial taps make each position's gate depend on its neighbourhood ("spatial attention");
- `shared=True`: one k×k kernel for all channels plus a per-channel scale and bias (A_c = s_c·(w ⋆ x_c) + b_c),
  so the kernel does not depend on the width (transferable between networks of different widths).

Activation names (the options reach configs as names, since `make_activation(name, channels)` takes no kwargs)::

    sparta[_shared][_k{1,3,5}][_b{1,2,4,8,16}]      defaults k = 3, β₀ = 8 are written without suffix

e.g. `sparta` (k 3, β₀ 8, per-channel kernels), `sparta_shared`, `sparta_k5`, `sparta_b1` (starts at SiLU),
`sparta_shared_k1_b4`. `sparta_name(k, beta0, shared)` builds the name; `Sparta(...)` is the module.

PSSiLU (Dai et al. 2021): `x·(σ(|α|x) − |β|)/(1 − |β|)` with learnable per-site scalars α, β (|β| clamped below
1); name `pssilu`. Its initial values (α = 1, β = 0.01: near SiLU, and β ≠ 0 so that |β| has a gradient) are
our choice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustact.errors import ConfigError
from robustact.models.layers import register_activation

SPARTA_KERNEL_SIZES = (1, 3, 5)
SPARTA_BETA0S = (1.0, 2.0, 4.0, 8.0, 16.0)
SPARTA_DEFAULT_K = 3
SPARTA_DEFAULT_BETA0 = 8.0


class Sparta(nn.Module):
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


class PSSiLU(nn.Module):
    """Parametric shifted SiLU `x·(σ(|α|x) − |β|)/(1 − |β|)`, learnable scalars α, β per site."""

    def __init__(self, alpha: float = 1.0, beta: float = 0.01, max_beta: float = 0.99) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.beta = nn.Parameter(torch.tensor(float(beta)))
        self.max_beta = float(max_beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = self.beta.abs().clamp(max=self.max_beta)
        return x * (torch.sigmoid(self.alpha.abs() * x) - beta) / (1 - beta)


def sparta_name(kernel_size: int = SPARTA_DEFAULT_K, beta0: float = SPARTA_DEFAULT_BETA0,
                shared: bool = False) -> str:
    """The registered activation name of a Sparta variant, e.g. `sparta_name(5, 4, True)` → `sparta_shared_k5_b4`."""
    if kernel_size not in SPARTA_KERNEL_SIZES or float(beta0) not in SPARTA_BETA0S:
        raise ConfigError(f"no registered Sparta variant with k={kernel_size}, beta0={beta0}; registered: "
                          f"k in {SPARTA_KERNEL_SIZES}, beta0 in {SPARTA_BETA0S} (or build Sparta(...) directly)")
    name = "sparta_shared" if shared else "sparta"
    if kernel_size != SPARTA_DEFAULT_K:
        name += f"_k{kernel_size}"
    if float(beta0) != SPARTA_DEFAULT_BETA0:
        name += f"_b{float(beta0):g}"
    return name


def _register_sparta(kernel_size: int, beta0: float, shared: bool) -> None:
    @register_activation(sparta_name(kernel_size, beta0, shared))
    def _factory(channels: int) -> nn.Module:
        return Sparta(channels, kernel_size=kernel_size, beta0=beta0, shared=shared)


for _shared in (False, True):
    for _k in SPARTA_KERNEL_SIZES:
        for _b in SPARTA_BETA0S:
            _register_sparta(_k, _b, _shared)


@register_activation("pssilu")
def _pssilu(channels: int) -> nn.Module:
    return PSSiLU()


def learnable_activations(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every Sparta / PSSiLU activation in `model`, in registration order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (Sparta, PSSiLU))]


__all__ = ["PSSiLU", "Sparta", "learnable_activations", "sparta_name"]
