"""Pre-activation ResNet-18 with the fast-AT (Wong et al. 2020) / kuangliu parameter names.

Blocks are `bn1, conv1, bn2, conv2, shortcut` (the projection shortcut is a bare 1x1 conv and sees the
pre-activated input); the network ends in `bn` + activation + `linear`, as in fast-AT's PreActResNet.
"""

from __future__ import annotations

import torch
from torch import nn

from robustact.models.activations import make_activation
from robustact.models.layers import global_pool
from robustact.models.registry import register_model
from robustact.models.resnet import ResNet


class PreActBlock(nn.Module):
    """bn-act-conv-bn-act-conv + shortcut; `site` sees the block output after the residual add."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, activation: str = "relu") -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.act1 = make_activation(activation, in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = make_activation(activation, planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        # Empty when the shortcut is the identity on the *raw* input (fast-AT omits the attribute then).
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False)
            )
        self.site = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(x))
        shortcut = self.shortcut(out) if len(self.shortcut) > 0 else x
        out = self.conv1(out)
        out = self.conv2(self.act2(self.bn2(out)))
        return self.site(out + shortcut)


class PreActResNet(ResNet):
    """Stem conv, four PreAct stages, final bn-act; `final_site` sees that before pooling."""

    block = PreActBlock
    stem_norm = False

    def add_head(self, channels: int, num_classes: int, activation: str) -> None:
        self.bn = nn.BatchNorm2d(channels)
        self.act = make_activation(activation, channels)
        self.final_site = nn.Identity()
        self.linear = nn.Linear(channels, num_classes)

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = self.final_site(self.act(self.bn(out)))
        return global_pool(out)



@register_model("preact_resnet18", family="preact_resnet")
def preact_resnet18(num_classes: int = 10, activation: str = "relu", width: int = 64) -> PreActResNet:
    """PreAct ResNet-18 (fast-AT naming)."""
    return PreActResNet((2, 2, 2, 2), num_classes, activation, width)
