"""The "linear mask" mechanism shared by CAS and EWAS: an auxiliary linear classifier whose own weight row
(of the label, or of its prediction) multiplies the activation.

```
a = Linear(D -> K)(pool(z))            pool = GAP   (CAS:  D = C,      one scale per channel)
                                       pool = flatten (EWAS: D = C·H·W, one scale per element)
k = y (label-conditioned) | argmax(a)
m = a.weight[k]  (raw, signed; no bias, no normalisation), reshaped to (C, 1, 1) or (C, H, W)
z' = z * m
```

`mask_mode = "soft"` is the BPDA surrogate for attacks: the forward value is the hard mask of the predicted
class, the backward pass sees `softmax(a / T) @ W` (straight-through: `hard + (soft - soft.detach())`), so the
gradient also flows through the aux head's choice of mask. `temperature` (T) is a plain attribute an attack
may change between iterations (`SoftMaskPGD` anneals it).

Sites are placed by `robustact.defenses.placement`, sized from a dry run of the network: channel counts and
H, W come from the network itself, never from constants.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robustact.defenses.base import DefenseSite
from robustact.errors import ConfigError

POOLINGS = ("channel", "element")


class LinearMaskSite(DefenseSite):
    """One linear-mask site. `pooling="channel"` is CAS, `pooling="element"` is EWAS.

    Args:
        channels: C of the activation.
        num_classes: K (rows of the aux head = number of possible masks).
        pooling: "channel" (GAP -> Linear(C, K), mask (C, 1, 1)) or "element" (flatten -> Linear(C·H·W, K),
            mask (C, H, W)).
        spatial: (H, W) of the activation; required for "element".
    """

    def __init__(self, channels: int, num_classes: int, pooling: str = "channel",
                 spatial: Sequence[int] | None = None) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"linear-mask pooling must be one of {POOLINGS}, got {pooling!r}")
        if pooling == "element" and (spatial is None or len(spatial) != 2):
            raise ConfigError("an element-wise (EWAS) mask needs the activation's spatial size (H, W)")
        self.channels = int(channels)
        self.num_classes = int(num_classes)
        self.pooling = pooling
        self.spatial = tuple(int(s) for s in spatial) if spatial is not None else None
        in_features = self.channels if pooling == "channel" else self.channels * self.spatial[0] * self.spatial[1]
        self.head = nn.Linear(in_features, self.num_classes)
        self.temperature: float = 1.0  # soft mode only

    # -- the computation --------------------------------------------------------------------------
    def aux_input(self, z: torch.Tensor) -> torch.Tensor:
        if self.pooling == "channel":
            return z.mean(dim=(2, 3))
        if tuple(z.shape[2:]) != self.spatial:
            raise RuntimeError(
                f"this EWAS site was built for {self.spatial[0]}x{self.spatial[1]} activations "
                f"(input size at build time) but got {z.shape[2]}x{z.shape[3]}; rebuild with the right input_size"
            )
        return z.flatten(1)

    def mask_rows(self, a: torch.Tensor) -> torch.Tensor:
        """(N, D) mask rows for the current mode: hard rows, or the straight-through soft surrogate."""
        weight = self.head.weight
        if self.mask_mode == "soft":
            hard = weight[a.argmax(dim=1)]
            soft = F.softmax(a.float() / max(float(self.temperature), 1e-8), dim=1).to(weight.dtype) @ weight
            return hard + (soft - soft.detach())
        return weight[self.mask_class(a)]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        a = self.head(self.aux_input(z))
        self.last_aux = a
        m = self.mask_rows(a)
        shape = (z.shape[0], self.channels, 1, 1) if self.pooling == "channel" else (z.shape[0], self.channels,
                                                                                      *self.spatial)
        return z * m.view(shape).to(z.dtype)

    def extra_repr(self) -> str:
        size = "" if self.spatial is None else f", spatial={self.spatial}"
        return f"channels={self.channels}, num_classes={self.num_classes}, pooling={self.pooling}{size}"


def linear_mask_sites(pooling: str):
    """`make_sites` of a linear-mask defense: one `LinearMaskSite` per slot, sized by the dry run."""

    def make_sites(options, slots: list, num_classes: int) -> list[LinearMaskSite]:
        return [LinearMaskSite(s.shape[0], num_classes, pooling, spatial=s.shape[1:] if pooling == "element" else None)
                for s in slots]

    return make_sites
