"""BPDA (Athalye et al. 2018): attack through layers without useful gradients by replacing their backward pass.

`find_gradient_blockers(model, x)` finds the leaf modules whose input gradient is zero or non-finite on (almost)
every example while their output does change with their input — quantisation, rounding, thresholds, a
`.detach()`ed branch. `straight_through(model, names)` is a copy of the model in which each of them computes its
real output but passes the gradient straight through (`x + (f(x) - x).detach()`: BPDA with g(x) = x), and
`BPDA(attack, names)` runs an attack (PGD) on that copy; the engine judges the result on the real model.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from robustact.attacks.base import attack_mode, model_forward
from robustact.errors import RobustactError


@dataclass
class Blocker:
    """A leaf module that stops gradients: `zero_share` of the probed examples get an all-zero or non-finite
    input gradient through it, while its output changes under a small input change on `changed_share` of them.
    `straight_through` says whether its output has its input's shape and dtype (then BPDA can pass the gradient
    through it as the identity)."""

    name: str
    kind: str
    zero_share: float
    changed_share: float
    straight_through: bool

    def describe(self) -> str:
        return (f"layer {self.name} ({self.kind}: zero or NaN input gradient on {self.zero_share:.0%} of the "
                f"probed examples, though its output changes with its input on {self.changed_share:.0%})")


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if name and next(m.children(), None) is None]


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1) if t.dim() > 0 else t.reshape(1, 1)


def find_gradient_blockers(model: nn.Module, x: torch.Tensor, *, max_examples: int = 32, zero_share: float = 0.9,
                           changed_share: float = 0.5, seed: int = 0) -> list[Blocker]:
    """Leaf modules whose input gradient is zero (or NaN/inf) on at least `zero_share` of the first
    `max_examples` examples while their output changes (under a small random change of their input, 10% of its
    mean magnitude) on at least `changed_share` of them. Each leaf is probed on the input it got in one eval-mode
    forward pass of `x` (its first call), through a random projection of its output."""
    x = x[:max_examples].detach()
    if x.shape[0] == 0:
        return []
    seen: dict[str, tuple[nn.Module, tuple, dict]] = {}

    def record(name: str):
        def hook(module: nn.Module, inputs: tuple, kwargs: dict, output) -> None:
            if name not in seen and inputs and isinstance(inputs[0], torch.Tensor) \
                    and inputs[0].is_floating_point() and inputs[0].dim() > 0 and isinstance(output, torch.Tensor):
                seen[name] = (module, tuple(i.detach() if isinstance(i, torch.Tensor) else i for i in inputs),
                              dict(kwargs))
        return hook

    leaves = _leaves(model)
    handles = [m.register_forward_hook(record(name), with_kwargs=True) for name, m in leaves]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    found = []
    try:
        with attack_mode(model, "eval"):
            with torch.no_grad():
                model_forward(model, x)
            for h in handles:
                h.remove()
            handles = []
            for name, (module, inputs, kwargs) in seen.items():
                try:
                    blocker = _probe(name, module, inputs, kwargs, gen, zero_share, changed_share)
                except (RuntimeError, TypeError, ValueError):  # a layer that cannot be called on its own again
                    blocker = None
                if blocker is not None:
                    found.append(blocker)
    finally:
        for h in handles:
            h.remove()
    return found


def _probe(name: str, module: nn.Module, inputs: tuple, kwargs: dict, gen: torch.Generator, zero_share: float,
           changed_share: float) -> Blocker | None:
    a, rest = inputs[0], inputs[1:]
    with torch.enable_grad():
        a_in = a.clone().requires_grad_(True)
        out = module(a_in, *rest, **kwargs)
        if not isinstance(out, torch.Tensor):
            return None
        if out.requires_grad and out.is_floating_point():
            weights = torch.randn(out.shape, generator=gen).to(out.device, out.dtype)
            (grad,) = torch.autograd.grad((out * weights).sum(), a_in, allow_unused=True)
        else:
            grad = None
    n = a.shape[0]
    if grad is None:
        dead = torch.ones(n, dtype=torch.bool)
    else:
        g = _rows(grad.detach())
        dead = ((g == 0).all(1) | ~torch.isfinite(g).all(1)).cpu()
    with torch.no_grad():
        scale = a.abs().mean().clamp_min(1e-3)
        noise = torch.randn(a.shape, generator=gen).to(a.device, a.dtype)
        moved = module(a + 0.1 * scale * noise, *rest, **kwargs)
        base = out.detach()
        if not isinstance(moved, torch.Tensor) or moved.shape != base.shape:
            changed = torch.ones(n, dtype=torch.bool)
        else:
            diff = _rows((moved.double() - base.double()).abs())
            size = _rows(base.double().abs()).amax(1, keepdim=True) if base.dim() > 0 else base.double().abs()
            changed = (diff > 1e-6 * (1 + size)).any(1).cpu()
    if len(dead) != n or len(changed) != n:  # not a batch-first layer: judge it as a whole
        dead, changed = dead.all().reshape(1), changed.any().reshape(1)
    zero, moved_share = dead.float().mean().item(), changed.float().mean().item()
    if zero < zero_share or moved_share < changed_share:
        return None
    same = out.shape == a.shape and out.dtype == a.dtype
    return Blocker(name, type(module).__name__, zero, moved_share, same)


class StraightThrough(nn.Module):
    """A layer's output in the forward pass, the identity in the backward pass: `x + (f(x) - x).detach()`."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.layer(x, *args, **kwargs)
        return x + (out - x).detach()


def straight_through(model: nn.Module, names: list[str]) -> nn.Module:
    """A copy of `model` (eval mode) in which each named submodule passes its gradient straight through."""
    try:
        twin = copy.deepcopy(model)
    except Exception as exc:  # a module that cannot be copied (open handles, ...): one line
        raise RobustactError(f"cannot copy the model for BPDA ({type(exc).__name__}: {exc})") from None
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        try:
            parent = twin.get_submodule(parent_name) if parent_name else twin
            layer = getattr(parent, attr)
        except AttributeError:
            raise RobustactError(f"BPDA: the model has no submodule {name!r}") from None
        setattr(parent, attr, StraightThrough(layer))
    return twin.eval()


class BPDA:
    """Run `attack` on the model's straight-through copy (`straight_through(model, layers)`); the engine judges
    the adversarial inputs on the real model. The copy is made once per model."""

    def __init__(self, attack, layers: list[str]) -> None:
        if not layers:
            raise RobustactError("BPDA needs at least one layer to pass the gradient straight through")
        self.attack, self.layers = attack, list(layers)
        self._model: weakref.ref | None = None
        self._copy: nn.Module | None = None

    def surrogate(self, model: nn.Module) -> nn.Module:
        if self._model is None or self._model() is not model:
            self._copy = straight_through(model, self.layers)
            self._model = weakref.ref(model)
        return self._copy

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.attack(self.surrogate(model).to(x.device), x, y)

    def __repr__(self) -> str:
        return f"BPDA({self.attack!r}, straight-through backward: {', '.join(self.layers)})"
