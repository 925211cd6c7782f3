"""Defense registry: each defense module registers how to place its sites in each architecture.

`register_defense(name, place)` where `place(model, arch, **kwargs) -> model` replaces the architecture's
`nn.Identity` slots with the defense's site modules and sets `model.defense_spec` (a `DefenseSpec`).
`build_model(..., defense=name)` routes here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from robustact.errors import ConfigError

Placer = Callable[..., nn.Module]
_DEFENSES: dict[str, Placer] = {}


def register_defense(name: str) -> Callable[[Placer], Placer]:
    def decorator(place: Placer) -> Placer:
        if name in _DEFENSES:
            raise ValueError(f"defense {name!r} is already registered")
        _DEFENSES[name] = place
        return place

    return decorator


def _load_builtin() -> None:
    """Import the defense modules so they register themselves (kept lazy: no import cycle with models)."""
    import importlib

    for module in ("cas", "cifs", "ewas"):
        try:
            importlib.import_module(f"robustact.defenses.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"robustact.defenses.{module}":
                raise


def list_defenses() -> list[str]:
    _load_builtin()
    return sorted(_DEFENSES)


def place_defense(model: nn.Module, arch: str, defense: str, **kwargs: Any) -> nn.Module:
    _load_builtin()
    key = defense.lower()
    if key not in _DEFENSES:
        known = ", ".join(["none", *sorted(_DEFENSES)])
        raise ConfigError(f"unknown defense {defense!r}; known: {known}")
    return _DEFENSES[key](model, arch, **kwargs)


def no_placement(defense: str, arch: str, known: list[str]) -> ConfigError:
    """The error for an architecture the defense has no placement for."""
    return ConfigError(f"defense {defense!r} has no placement for arch {arch!r}; it supports: {', '.join(known)}")
