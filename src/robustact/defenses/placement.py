"""Where each defense goes in each architecture, and the one function that puts it there.

`PLACEMENTS[(defense, family)]` lists the slots (the `nn.Identity` modules the architectures leave for defense
sites, by dotted path) a defense occupies in a network of that family, as the papers' official code places it,
with any per-slot setting the code fixes (CIFS's probe kind and width). `place_defense` looks the slots up, sizes
every site from one dry run of the network (channels and H, W come from the network itself), builds the sites
with the defense's own `make_sites`, swaps them in, and attaches the defense's `DefenseSpec`.

A defense is registered as a `Defense` (name, options dataclass, `make_sites`, `make_spec`) in its own module
(`cas.py`, `ewas.py`, `cifs.py`); a new placement is a row of this table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robustact.defenses.base import DefenseSite
from robustact.defenses.spec import DefenseSpec
from robustact.errors import ConfigError
from robustact.fields import option, parse_options
from robustact.models.registry import arch_family, list_models
from robustact.registry import Registry


@dataclass(frozen=True)
class Slot:
    """One place a site goes: the slot's dotted path, the settings the placement fixes there, and (after the
    dry run) the (C, H, W) of the activation it receives."""

    path: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    shape: tuple[int, ...] | None = None


@dataclass
class SiteOptions:
    """What every defense takes: the image side of the build-time dry run that sizes its sites."""

    input_size: int = option(32, min=1)  # pixels


@dataclass(frozen=True)
class Defense:
    """How one defense enters a network: its options (a dataclass, `robustact.fields`), its sites for the slots
    the table gives (`make_sites(options, slots, num_classes)`), and its loss/attack handling (`make_spec`)."""

    name: str
    options: type
    make_sites: Callable[[Any, list[Slot], int], list[DefenseSite]]
    make_spec: Callable[[Any], DefenseSpec]


DEFENSES: Registry[Defense] = Registry("defense", builtin={name: f"robustact.defenses.{name}"
                                                           for name in ("cas", "cifs", "ewas")})


def _last_stage(model: nn.Module) -> list[str]:
    return [f"layer4.{i}.site" for i in range(len(model.layer4))]


def _wrn_group3_last_pre(model: nn.Module) -> str:
    return f"block3.layer.{len(model.block3.layer) - 1}.pre_site"


# (defense, architecture family) -> the slots, in forward order. Sources: METHODS.md §1-3 and the docs/*.md.
PLACEMENTS: dict[tuple[str, str], Callable[[nn.Module], list[Slot]]] = {
    # CAS (resnet_cas.py): the post-ReLU output of every block of the last stage (S = 2 on ResNet-18)
    ("cas", "resnet"): lambda m: [Slot(p) for p in _last_stage(m)],
    # CAS on WRN: the BN-ReLU input of group 3's last block (residual branch only) and the final BN-ReLU output
    ("cas", "wideresnet"): lambda m: [Slot(_wrn_group3_last_pre(m)), Slot("final_site")],
    # CAS on VGG-16: the three convs of the last stage
    ("cas", "vgg"): lambda m: [Slot(f"slots.{len(m.slots) - 1}.{i}") for i in range(len(m.slots[-1]))],
    # EWAS (models/resnet.py): one site between layer4[0] and layer4[1]
    ("ewas", "resnet"): lambda m: [Slot("layer4.0.site")],
    # EWAS on WRN (models/wrn.py): before the last three blocks of group 3 (after the 2nd of 5 on WRN-34-10)
    ("ewas", "wideresnet"): lambda m: [Slot(f"block3.layer.{max(len(m.block3.layer) - 4, 0)}.site")],
    # CIFS (resnet_CIFS.py): the last two blocks of layer4, nonlinear then linear probe, hidden 128 (ResNet-34:
    # its last two layer4 blocks [recon])
    ("cifs", "resnet"): lambda m: [Slot(p, {"probe": kind, "hidden": 128})
                                   for p, kind in zip(_last_stage(m)[-2:], ("nonlinear", "linear"))],
    # CIFS on WRN (first commit, WRN-28-10): CAS's two WRN slots, nonlinear (hidden 240) then linear probe
    ("cifs", "wideresnet"): lambda m: [Slot(_wrn_group3_last_pre(m), {"probe": "nonlinear", "hidden": 240}),
                                       Slot("final_site", {"probe": "linear", "hidden": 240})],
}


def list_defenses() -> list[str]:
    return DEFENSES.names()


def get_defense(name: str) -> Defense:
    key = name.lower() if isinstance(name, str) else name
    if key not in DEFENSES:
        raise ConfigError(f"unknown defense {name!r}; known: {', '.join(['none', *list_defenses()])}")
    return DEFENSES.get(key)


def supported_archs(defense: str) -> list[str]:
    return [a for a in list_models() if (defense, arch_family(a)) in PLACEMENTS]


def placement_slots(defense: str, arch: str, model: nn.Module) -> list[Slot]:
    rule = PLACEMENTS.get((defense, arch_family(arch)))
    if rule is None:
        raise ConfigError(f"defense {defense!r} has no placement for arch {arch!r}; it supports: "
                          f"{', '.join(supported_archs(defense))}")
    return rule(model)


def parse_defense_options(defense: str, options: Mapping[str, Any] | None, where: str = "defense_kwargs") -> Any:
    """The defense's options dataclass from a mapping; an option it does not have is one ConfigError line."""
    kind = get_defense(defense)
    known = [f.name for f in dataclasses.fields(kind.options)]
    unknown = sorted(set(options or {}) - set(known))
    if unknown:
        raise ConfigError(f"defense {kind.name!r} does not take {', '.join(unknown)}; it takes: {', '.join(known)}")
    return parse_options(kind.options, dict(options or {}), where)


def slot_input_shapes(model: nn.Module, paths: Sequence[str], input_size: int = 32,
                      in_channels: int = 3) -> dict[str, tuple[int, ...]]:
    """The (C, H, W) each slot receives, from one eval-mode, no-grad dry run of a single image of
    `input_size` (the model's mode and BN statistics are left as they were)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(path: str):
        def hook(module, inputs, output) -> None:
            shapes.setdefault(path, tuple(inputs[0].shape[1:]))
        return hook

    handles = [model.get_submodule(path).register_forward_hook(record(path)) for path in paths]
    was = [(m, m.training) for m in model.modules()]
    param = next(model.parameters(), None)
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_channels, input_size, input_size,
                              device=param.device if param is not None else "cpu"))
    finally:
        for h in handles:
            h.remove()
        for m, training in was:
            m.training = training
    missing = [p for p in paths if p not in shapes]
    if missing:
        raise ConfigError(f"slots {missing} are not reached by the model's forward; cannot place a defense there")
    return shapes


def _install(model: nn.Module, path: str, site: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    current = parent[int(name)] if name.isdigit() else getattr(parent, name)
    if not isinstance(current, nn.Identity):
        raise ConfigError(f"slot {path} already holds {type(current).__name__}; one defense per model")
    if name.isdigit():
        parent[int(name)] = site
    else:
        setattr(parent, name, site)


def place_defense(model: nn.Module, arch: str, defense: str, options: Mapping[str, Any] | None = None) -> nn.Module:
    """Put `defense`'s sites into `model` (in place) where the papers put them for `arch`; set its spec."""
    kind = get_defense(defense)
    opts = parse_defense_options(kind.name, options)
    slots = placement_slots(kind.name, arch, model)
    shapes = slot_input_shapes(model, [s.path for s in slots], opts.input_size)
    slots = [dataclasses.replace(s, shape=shapes[s.path]) for s in slots]
    param = next(model.parameters(), None)
    for slot, site in zip(slots, kind.make_sites(opts, slots, model.classifier_layer().out_features)):
        _install(model, slot.path, site.to(param.device) if param is not None else site)
    model.defense_spec = kind.make_spec(opts)
    return model
