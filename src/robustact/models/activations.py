"""Activations built from a name plus options, as timm's `create_act_layer`: every nonlinearity of every
architecture comes from `make_activation(spec, channels)`, so a new activation is one `register_activation`
call in its own module and reaches all architectures without editing them.

A spec is a name (`"silu"`) or a mapping (`{name: sparta, kernel_size: 5, beta0: 1, shared: true}`); the
options are the factory's keyword arguments, checked by name and type. A few short names are aliases of a
name plus options (`sparta_b1` = `{name: sparta, beta0: 1}`), kept because presets and stored runs use them.

Learnable activations (PSSiLU here, Sparta in `robustact.models.sparta`) subclass `LearnableActivation`, which
is how the optimiser groups and the frozen transfer find them.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from robustact.errors import ConfigError
from robustact.fields import parse_value
from robustact.registry import Registry

ActivationFactory = Callable[..., nn.Module]
ActivationSpec = str | Mapping[str, Any]

ACTIVATIONS: Registry[ActivationFactory] = Registry("activation", builtin={"sparta": "robustact.models.sparta"},
                                                   lower=True)
ALIASES: dict[str, dict[str, Any]] = {
    "sparta_shared": {"name": "sparta", "shared": True},
    "sparta_b1": {"name": "sparta", "beta0": 1.0},
    "swish": {"name": "silu"},  # DeepMind's / RobustBench's name for x·σ(x)
}


def register_activation(name: str) -> Callable[[ActivationFactory], ActivationFactory]:
    """Register `factory(channels, **options) -> nn.Module`; it must build a new module per call."""
    return ACTIVATIONS.register(name)


def list_activations() -> list[str]:
    """Registered activation names and aliases, sorted."""
    return sorted([*ACTIVATIONS.names(), *ALIASES])


def _options_of(factory: ActivationFactory) -> dict[str, Any]:
    """{option: annotated type} of a factory (every parameter but `channels`)."""
    hints = typing.get_type_hints(factory)
    return {p: hints.get(p, Any) for p in inspect.signature(factory).parameters if p != "channels"}


def activation_spec(spec: ActivationSpec) -> tuple[str, dict[str, Any]]:
    """(registered name, checked options) of a spec; aliases resolved. Bad input is one ConfigError line."""
    if isinstance(spec, str):
        name, options = spec.strip().lower(), {}
    elif isinstance(spec, Mapping):
        options = dict(spec)
        name = options.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f"an activation given as a mapping needs a name, e.g. {{name: sparta, beta0: 1}}; "
                              f"got {dict(spec)!r}")
        name = name.strip().lower()
    else:
        raise ConfigError(f"activation must be a name or a mapping with a name, got {spec!r}")
    if name in ALIASES:
        alias = dict(ALIASES[name])
        name = alias.pop("name")
        options = alias | options
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; known: {', '.join(list_activations())}")
    known = _options_of(ACTIVATIONS.get(name))
    unknown = sorted(set(options) - set(known))
    if unknown:
        takes = ", ".join(known) or "no options"
        raise ConfigError(f"activation {name!r} does not take {', '.join(unknown)}; it takes: {takes}")
    return name, {k: parse_value(v, known[k], f"activation {name}.{k}") for k, v in options.items()}


def canonical_activation(spec: ActivationSpec) -> str | dict[str, Any]:
    """The spec in its stored form: the plain name without options, else `{name: ..., **options}`."""
    name, options = activation_spec(spec)
    return {"name": name, **options} if options else name


def make_activation(spec: ActivationSpec, channels: int) -> nn.Module:
    """A fresh activation module for one site with `channels` channels (each site owns its parameters)."""
    name, options = activation_spec(spec)
    return ACTIVATIONS.get(name)(channels, **options)


class LearnableActivation(nn.Module):
    """Base of activations with parameters of their own (their optimiser group, frozen transfer)."""


def learnable_activations(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every learnable activation in `model`, in registration order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LearnableActivation)]


class PSSiLU(LearnableActivation):
    """Parametric shifted SiLU (Dai et al. 2021) `x·(σ(|α|x) − |β|)/(1 − |β|)`, learnable scalars α, β per site.

    The initial values (α = 1, β = 0.01: near SiLU, and β ≠ 0 so that |β| has a gradient) are our choice."""

    def __init__(self, alpha: float = 1.0, beta: float = 0.01, max_beta: float = 0.99) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.beta = nn.Parameter(torch.tensor(float(beta)))
        self.max_beta = float(max_beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = self.beta.abs().clamp(max=self.max_beta)
        return x * (torch.sigmoid(self.alpha.abs() * x) - beta) / (1 - beta)


# Built-ins. `inplace=False` everywhere: in-place activations break double backprop (CIFS) and hooks.
@register_activation("relu")
def _relu(channels: int) -> nn.Module:
    return nn.ReLU(inplace=False)


@register_activation("silu")
def _silu(channels: int) -> nn.Module:
    return nn.SiLU(inplace=False)


@register_activation("softplus")
def _softplus(channels: int) -> nn.Module:
    return nn.Softplus()


@register_activation("gelu")
def _gelu(channels: int) -> nn.Module:
    return nn.GELU()


@register_activation("elu")
def _elu(channels: int) -> nn.Module:
    return nn.ELU(inplace=False)


@register_activation("pssilu")
def _pssilu(channels: int, alpha: float = 1.0, beta: float = 0.01) -> nn.Module:
    return PSSiLU(alpha, beta)
