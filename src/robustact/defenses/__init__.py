"""Defenses: the sites that sit inside a network, where they go, and the context API over them.

A defense site is an `nn.Module` inside the model (a subclass of `DefenseSite`); `build_model(arch,
defense=...)` places a defense's sites (`placement.py`: one table per defense and architecture family).
Training objectives and attacks never reach into a particular defense; they use only:

- `sites(model)`: the site modules, in forward order;
- `conditioned(model, y)`: a context in which every site uses label-conditioned masks;
- `aux_logits(model)`: the auxiliary logits the sites produced in the last forward, in site order;
- `mask_mode(model, mode)`: a context that sets every site's `mask_mode` ("label" | "pred" | "soft");
- `defense_spec(model)`: how the defense enters the loss and the training attack.
"""

from robustact.defenses.base import DefenseSite, aux_logits, conditioned, mask_mode, sites
from robustact.defenses.build import build_model
from robustact.defenses.placement import list_defenses, parse_defense_options
from robustact.defenses.spec import NO_DEFENSE, DefenseSpec, defense_spec

__all__ = ["NO_DEFENSE", "DefenseSite", "DefenseSpec", "aux_logits", "build_model", "conditioned", "defense_spec",
           "list_defenses", "mask_mode", "parse_defense_options", "sites"]
