"""CIFAR VGG-16 with batch norm: 13 conv-BN-act units in five stages, each stage ending in a 2x2 max-pool.

The conv stack is `layers`, laid out index for index like kuangliu/pytorch-cifar's `features`
(conv, bn, act, ..., pool), so such a checkpoint loads after renaming the key prefix `features.` ->
`layers.`. It cannot be called `features` here: that name is every model's penultimate-feature method.
The classifier is a single `Linear(512, K)`.

Slots: each unit's activation output passes through `slots[stage][i]` (an `nn.Identity`), outside
`layers` so the layer indices stay put. `slots[-1]` are the three convs of the last stage (CAS's VGG
placement).
"""

from __future__ import annotations

import torch
from torch import nn

from robustact.models.activations import make_activation
from robustact.models.layers import ImageClassifier, global_pool
from robustact.models.registry import register_model

VGG16_STAGES: tuple[tuple[int, ...], ...] = (
    (64, 64),
    (128, 128),
    (256, 256, 256),
    (512, 512, 512),
    (512, 512, 512),
)


class VGG(ImageClassifier):
    """Plain VGG: conv stages + global pooling + one Linear."""

    def __init__(
        self, stages: tuple[tuple[int, ...], ...], num_classes: int = 10, activation: str = "relu"
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        self._slot_at: dict[int, tuple[int, int]] = {}  # index in `layers` of an activation -> its slot
        in_ch = 3
        for s, widths in enumerate(stages):
            for i, out_ch in enumerate(widths):
                layers += [nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1), nn.BatchNorm2d(out_ch)]
                layers.append(make_activation(activation, out_ch))
                self._slot_at[len(layers) - 1] = (s, i)
                in_ch = out_ch
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.layers = nn.Sequential(*layers)
        self.slots = nn.ModuleList(nn.ModuleList(nn.Identity() for _ in widths) for widths in stages)
        self.classifier = nn.Linear(in_ch, num_classes)

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        for idx, layer in enumerate(self.layers):
            x = layer(x)
            slot = self._slot_at.get(idx)
            if slot is not None:
                x = self.slots[slot[0]][slot[1]](x)
        return global_pool(x)

    def classifier_layer(self) -> nn.Linear:
        return self.classifier


@register_model("vgg16", family="vgg")
def vgg16(num_classes: int = 10, activation: str = "relu") -> VGG:
    """VGG-16 with BN (CIFAR variant: 512-d penultimate, one Linear)."""
    return VGG(VGG16_STAGES, num_classes, activation)
