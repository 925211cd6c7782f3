"""`build_model`: a network with its defense, the one way the rest of robustact makes a model.

It builds the plain network (`robustact.models.create_model`) and places the defense
(`robustact.defenses.placement.place_defense`), and records every argument in `model.build_kwargs` (JSON) so
that a checkpoint rebuilds its model with `build_model(model.arch, **model.build_kwargs)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from robustact.defenses.placement import place_defense
from robustact.models.activations import ActivationSpec
from robustact.models.registry import arch_options, create_model, json_kwargs


def is_no_defense(defense: Any) -> bool:
    return defense is None or (isinstance(defense, str) and defense.lower() == "none")


def build_model(arch: str, num_classes: int = 10, defense: str | None = None, activation: ActivationSpec = "relu",
                normalize: Any = "default", *, defense_kwargs: Mapping[str, Any] | None = None,
                **kwargs: Any) -> nn.Module:
    """`arch` for `num_classes` classes with `defense` (None/"none": plain): `forward(x in [0, 1]) -> logits`.

    `activation` is a name or `{name: ..., **options}`; `normalize` (a name, (mean, std), or None for none) puts
    input normalisation inside the model ("default": the architecture's own); `kwargs` are architecture options
    (e.g. `width`, `depth`) — with a defense, the ones the architecture does not take are defense options, as are
    `defense_kwargs`."""
    has_defense = not is_no_defense(defense)
    takes = arch_options(arch)
    arch_kwargs = {k: v for k, v in kwargs.items() if k in takes or not has_defense}
    loose = {k: v for k, v in kwargs.items() if k not in arch_kwargs}
    model = create_model(arch, num_classes, activation, normalize, **arch_kwargs)
    build_kwargs = dict(model.build_kwargs)
    build_kwargs["defense"] = defense if has_defense else None
    build_kwargs |= loose
    if defense_kwargs:
        build_kwargs["defense_kwargs"] = dict(defense_kwargs)
    build_kwargs = json_kwargs(build_kwargs)
    if has_defense:
        model = place_defense(model, arch, defense, {**loose, **(defense_kwargs or {})})
    model.build_kwargs = build_kwargs
    return model
