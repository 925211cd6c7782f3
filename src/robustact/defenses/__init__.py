"""The defense context API: how training objectives and attacks talk to defense sites.

A defense site is an `nn.Module` inside the model (a subclass of `DefenseSite`). Callers never reach into a
particular defense; they use only:

- `sites(model)`: the site modules, in forward order;
- `conditioned(model, y)`: a context in which every site uses label-conditioned masks;
- `aux_logits(model)`: the auxiliary logits the sites produced in the last forward, in site order;
- `mask_mode(model, mode)`: a context that sets every site's `mask_mode` ("label" | "pred" | "soft").
"""

from robustact.defenses.base import DefenseSite, aux_logits, conditioned, mask_mode, sites
from robustact.defenses.transfer import transfer_activations

__all__ = ["DefenseSite", "aux_logits", "conditioned", "mask_mode", "sites", "transfer_activations"]
